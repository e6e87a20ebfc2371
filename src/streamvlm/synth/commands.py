"""`streamvlm synth`: write a synthetic stream as a ROS 2 bag, with its questions and answers."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path


def add_parsers(commands) -> None:
    synth = commands.add_parser("synth", help="write a synthetic camera stream (with questions) as a ROS 2 bag",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    synth.add_argument("--out", type=Path, required=True, help="the bag to write (.mcap; must not exist)")
    synth.add_argument("--minutes", type=float, default=2.0, help="stream length")
    synth.add_argument("--seed", type=int, default=0, help="odd seeds pan the camera, even seeds keep it still")
    synth.add_argument("--fps", type=float, default=1.0, help="frames per second")
    synth.add_argument("--topic", default="/camera/image_raw/compressed")
    synth.add_argument("--raw", action="store_true", help="sensor_msgs/Image instead of JPEG CompressedImage")
    synth.set_defaults(run=run)


def run(args) -> int:
    from tqdm import tqdm

    from streamvlm.bag import BagWriter
    from streamvlm.synth.questions import stream_questions
    from streamvlm.synth.scene import evaluation_scene

    if args.out.exists():
        raise ValueError(f"{args.out} exists; choose a new path")
    frames = max(1, round(args.minutes * 60 * args.fps))
    scene = evaluation_scene(args.seed, frames, fps=args.fps)
    topic = args.topic.removesuffix("/compressed") if args.raw else args.topic
    with BagWriter(args.out) as bag:
        for frame in tqdm(scene, total=frames, desc="synth", unit="frame", leave=False):
            if args.raw:
                bag.write_image(topic, frame.stamp_ns, frame.rgb)
            else:
                bag.write_compressed(topic, frame.stamp_ns, frame.rgb)
    truth = {
        "seed": args.seed, "frames": frames, "fps": args.fps, "topic": topic,
        "objects": [asdict(o) for o in scene.objects],
        "questions": [asdict(q) for q in stream_questions(scene, args.seed)],
    }
    sidecar = args.out.with_name(args.out.name.removesuffix(".mcap") + ".questions.json")
    sidecar.write_text(json.dumps(truth, indent=1) + "\n")
    print(f"wrote {args.out} ({frames} frames, {len(scene.objects)} objects) and {sidecar}")
    return 0
