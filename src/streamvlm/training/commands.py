"""`streamvlm train eval`: the command line of the evaluation model's training."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from streamvlm.models.eval_model import packaged_weights


def add_parsers(commands) -> None:
    from streamvlm.training.train_eval import TrainSettings

    train = commands.add_parser("train", help="train the evaluation model (deterministic, offline)")
    which = train.add_subparsers(dest="what", required=True)
    evaluation = which.add_parser("eval", help="ViT + projector from scratch, LoRA on SmolLM2-135M",
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    evaluation.add_argument("--out", type=Path, default=packaged_weights(), help="trained parts (.safetensors)")
    evaluation.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluation.add_argument("--checkpoint", type=Path, default=Path("build/train-eval-checkpoint"),
                            help="folder where the training state is saved as it goes ('' : none); stage 1's result "
                                 "is kept there too (vision.pt) and reused by a training with the same stage-1 "
                                 "settings and data (delete it after changing stage 1's code)")
    evaluation.add_argument("--resume", action="store_true", help="go on from the last checkpoint")
    evaluation.add_argument("--max-minutes", type=float, metavar="M",
                            help="stop at the first checkpoint after M minutes (then run again with --resume)")
    for f in dataclasses.fields(TrainSettings):
        evaluation.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    evaluation.set_defaults(run=run)


def run(args) -> int:
    from streamvlm.training.checkpoint import Checkpoints, Interrupted
    from streamvlm.training.train_eval import TrainSettings, train

    settings = TrainSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)})
    folder = args.checkpoint if str(args.checkpoint) not in ("", ".") else None
    limit = args.max_minutes * 60 if args.max_minutes is not None else None
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731 - stdout: the report
    try:
        report = train(settings, args.out, say, Checkpoints(folder, settings, limit), resume=args.resume)
    except Interrupted as stop:
        say(str(stop))
        return 3
    print(json.dumps(report) if args.json else f"wrote {args.out} ({report['bytes']} bytes, sha256 "
          f"{report['sha256']}) in {report['seconds']} s; held-out {report['language']['held_out']}")
    return 0
