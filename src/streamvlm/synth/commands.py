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
    synth.add_argument("--cameras", nargs="+", metavar="NAME",
                       help="several cameras, each its own scene (seed, seed+1, ...) on /NAME/image_raw/compressed, "
                            "frames 10 ms apart between cameras; the questions are about the first")
    synth.set_defaults(run=run)


def run(args) -> int:
    from tqdm import tqdm

    from streamvlm.bag import BagWriter
    from streamvlm.synth.questions import stream_questions
    from streamvlm.synth.scene import evaluation_scene

    if args.out.exists():
        raise ValueError(f"{args.out} exists; choose a new path")
    frames = max(1, round(args.minutes * 60 * args.fps))
    names = args.cameras or [""]
    topics = [f"/{name}/image_raw/compressed" if name else args.topic for name in names]
    topics = [t.removesuffix("/compressed") if args.raw else t for t in topics]
    scenes = [evaluation_scene(args.seed + k, frames, fps=args.fps) for k in range(len(names))]
    with BagWriter(args.out) as bag:
        for index in tqdm(range(frames), total=frames, desc="synth", unit="frame", leave=False):
            for k, (scene, topic) in enumerate(zip(scenes, topics)):
                stamp = scene.stamp_ns(index) + k * 10_000_000  # cameras are not in step
                if args.raw:
                    bag.write_image(topic, stamp, scene.frame(index))
                else:
                    bag.write_compressed(topic, stamp, scene.frame(index))
    scene, topic = scenes[0], topics[0]
    truth = {
        "seed": args.seed, "frames": frames, "fps": args.fps, "topic": topic,
        "objects": [asdict(o) for o in scene.objects],
        "questions": [asdict(q) for q in stream_questions(scene, args.seed)],
    }
    if args.cameras:
        truth["cameras"] = {name: {"topic": t, "seed": s.seed, "objects": [asdict(o) for o in s.objects]}
                            for name, t, s in zip(names, topics, scenes)}
    sidecar = args.out.with_name(args.out.name.removesuffix(".mcap") + ".questions.json")
    sidecar.write_text(json.dumps(truth, indent=1) + "\n")
    print(f"wrote {args.out} ({frames} frames, {len(scene.objects)} objects"
          + (f", cameras {', '.join(names)}" if args.cameras else "") + f") and {sidecar}")
    return 0
