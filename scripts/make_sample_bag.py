#!/usr/bin/env python3
"""Build the committed sample bag tests/data/vtest_20s from OpenCV's sample video.

vtest.avi (people walking in a hall, 768x576, 10 fps) ships in Debian's `opencv-doc`
package. This script downloads that package with `apt-get download` (no root needed),
takes the first 20 s, downscales to 384x288 and writes CompressedImage JPEG frames on
/camera/image/compressed into an MCAP bag, stamped from a fixed start time so the bag is
the same on every run.

    python scripts/make_sample_bag.py [--video vtest.avi] [--out tests/data/vtest_20s]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2

from streamvlm.bag import BagWriter
from streamvlm.video import VideoFrames

START_NS = 1_700_000_000 * 10**9  # 2023-11-14 22:13:20 UTC, arbitrary but fixed
TOPIC = "/camera/image/compressed"
VTEST_IN_DEB = "usr/share/doc/opencv-doc/examples/data/vtest.avi"


def fetch_vtest(workdir: Path) -> Path:
    subprocess.run(["apt-get", "download", "opencv-doc"], cwd=workdir, check=True)
    deb = next(workdir.glob("opencv-doc_*.deb"))
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", f"./{VTEST_IN_DEB}"], stdin=tar.stdout, cwd=workdir, check=True)
    tar.wait()
    return workdir / VTEST_IN_DEB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, help="vtest.avi (downloaded from opencv-doc when omitted)")
    parser.add_argument("--out", type=Path, default=Path("tests/data/vtest_20s"))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--quality", type=int, default=80)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        video = args.video or fetch_vtest(Path(tmp))
        frames = VideoFrames(video, max_seconds=args.seconds)
        if args.out.exists():
            shutil.rmtree(args.out)  # the bag writer refuses an existing path
        with BagWriter(args.out, "mcap") as bag:
            for frame in frames:
                height = round(frame.rgb.shape[0] * args.width / frame.rgb.shape[1])
                small = cv2.resize(frame.rgb, (args.width, height), interpolation=cv2.INTER_AREA)
                bag.write_compressed(TOPIC, START_NS + frame.stamp_ns, small, "jpeg", args.quality)
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {len(frames)} frames to {args.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
