"""The `streamvlm` command line: stream a bag or a video through the pipeline.

    streamvlm replay BAG [--topic [NAME=]T]... [--ask Q [--at S]]... [--model M] [--out OUT.mcap] [--realtime] [--json]
                         [--debug-video OUT.mp4]
    streamvlm video FILE [--ask Q [--at S]]... [--model M] [--out OUT.mcap] [--realtime] [--json]
    streamvlm play BAG [--topic T]... [--to TOPIC] [--rate R] [--loop] [--wait S]   (needs rclpy)
    streamvlm diagnostics [--duration S] [--json]                                (needs rclpy)
    streamvlm bench BENCH [options] [--json]                                     (see bench -h)
    streamvlm export onnx --model M [--out engines]                              ONNX graphs of the ViT
    streamvlm export trt --onnx DIR --precision fp16|int8 [--calib DIR]          TensorRT engine (CUDA)
    streamvlm calib make BAG [--out calibration] [--count N]                     INT8 calibration frames

A question given with --at S is asked once every frame up to S seconds of stream time
(since the first frame) has been taken in; one without --at is asked at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from streamvlm import config as config_mod
from streamvlm.backends.base import BackendSettings
from streamvlm.fields import choices

log = logging.getLogger("streamvlm")


@dataclass
class Question:
    text: str
    at_s: float  # stream time; inf = at the end
    expected: str = ""  # the right answer, where known (questions from `streamvlm synth`)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="streamvlm: %(message)s", stream=sys.stderr)
    from streamvlm.models import ModelUnavailable

    try:
        return args.run(args)
    except (FileNotFoundError, ValueError, ModelUnavailable) as err:
        print(f"streamvlm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamvlm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    replay = commands.add_parser("replay", help="stream a ROS 2 bag (.mcap, .db3 or its folder)")
    replay.add_argument("bag", type=Path)
    replay.add_argument("--topic", action="append", metavar="[NAME=]TOPIC",
                        help="image topic (needed when the bag has several); repeat it for several cameras, "
                             "each named NAME or after its topic (/front/image_raw: front)")
    video = commands.add_parser("video", help="stream a video file")
    video.add_argument("video", type=Path)
    for sub in (replay, video):
        _add_stream_options(sub)
    replay.set_defaults(run=_run_replay)
    video.set_defaults(run=_run_video)
    play = commands.add_parser("play", help="publish a bag's image topic onto a live ROS 2 topic")
    play.add_argument("bag", type=Path)
    play.add_argument("--topic", action="append", metavar="TOPIC",
                      help="image topic of the bag (needed when it has several); repeat it for several cameras")
    play.add_argument("--to", metavar="TOPIC", help="publish on this topic instead of the recorded one")
    play.add_argument("--rate", type=float, default=1.0, help="speed factor (2: twice as fast)")
    play.add_argument("--loop", action="store_true", help="start again at the end, until Ctrl-C")
    play.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                      help="wait up to SECONDS for a subscriber before playing")
    play.set_defaults(run=_run_play)
    diagnostics = commands.add_parser("diagnostics", help="print the nodes' /diagnostics reports")
    diagnostics.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                             help="stop after SECONDS (default: until Ctrl-C)")
    diagnostics.add_argument("--json", action="store_true", help="one JSON object per report")
    diagnostics.set_defaults(run=_run_diagnostics)
    settings = commands.add_parser("settings", help="list every setting: parameter name, value, range, help")
    settings.add_argument("--config", type=Path, help="ROS 2 parameter file whose values to show")
    settings.set_defaults(run=_run_settings)
    from streamvlm import bench
    from streamvlm.export import commands as export_commands
    from streamvlm.synth import commands as synth_commands
    from streamvlm.training import commands as train_commands

    bench.add_parser(commands)
    export_commands.add_parsers(commands)
    synth_commands.add_parsers(commands)
    train_commands.add_parsers(commands)
    return parser


def _add_stream_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--ask", action="append", default=[], metavar="QUESTION", help="a question (repeatable)")
    sub.add_argument("--at", action="append", default=[], type=float, metavar="SECONDS",
                     help="stream time of the preceding --ask (repeatable, in order)")
    sub.add_argument("--questions", type=Path, metavar="JSON",
                     help="ask the questions `streamvlm synth` wrote next to its bag, and show the right answers")
    sub.add_argument("--model", help="HF id, local directory, 'eval', or a random test model: 'tiny', 'tiny-smolvlm', "
                                     f"'tiny-qwen2vl', 'tiny-qwen25vl' (default {config_mod.DEFAULT_MODEL})")
    sub.add_argument("--config", type=Path, help="ROS 2 parameter file (e.g. config/live.yaml)")
    sub.add_argument("--fps", type=float, help="frames per second taken from the stream")
    sub.add_argument("--backend", choices=choices(BackendSettings, "name"),
                     help="what runs the ViT (onnxruntime, tensorrt: after `streamvlm export`)")
    sub.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="any setting by its parameter name, e.g. vision.delta.mode=off (repeatable; "
                          "`streamvlm settings` lists them)")
    sub.add_argument("--max-new-tokens", type=int, help="answer length limit")
    sub.add_argument("--alert", action="append", default=[], metavar="RULE",
                     help="an alert rule, e.g. 'a person is visible' (repeatable): printed when it starts to hold")
    sub.add_argument("--out", type=Path, help="write captions and answers into this MCAP bag")
    sub.add_argument("--realtime", action="store_true",
                     help="pace at the recorded rate; frames that arrive while busy are dropped, as from a camera")
    sub.add_argument("--json", action="store_true", help="one JSON object per caption or answer")
    sub.add_argument("--debug-video", type=Path, metavar="OUT.mp4",
                     help="write each processed frame with the patches the ViT recomputed (red) and the "
                          "tokens sent to the LLM (green) drawn on it")


def _run_replay(args) -> int:
    from streamvlm.bag import BagFrames

    return _stream(args, BagFrames(args.bag, args.topic))


def _run_video(args) -> int:
    from streamvlm.video import VideoFrames

    return _stream(args, VideoFrames(args.video))


def _run_play(args) -> int:
    try:
        from streamvlm.ros.player import play
    except ImportError as err:
        raise ValueError(f"play needs ROS 2 (rclpy): {err}") from None
    sent = play(args.bag, args.topic, args.to, args.rate, args.loop, args.wait,
                log=lambda text: print(f"streamvlm: {text}", file=sys.stderr))
    print(f"streamvlm: published {sent} messages", file=sys.stderr)
    return 0


def _run_diagnostics(args) -> int:
    try:
        from streamvlm.ros.monitor import watch
    except ImportError as err:
        raise ValueError(f"diagnostics needs ROS 2 (rclpy): {err}") from None
    watch(args.duration, args.json, out=lambda line: print(line, flush=True))
    return 0


def _config(args) -> config_mod.PipelineConfig:
    cfg = config_mod.load(args.config) if args.config else config_mod.PipelineConfig()
    overrides: dict[str, dict] = {}
    if args.model:
        overrides.setdefault("model", {})["name"] = args.model
    if args.fps is not None:
        overrides.setdefault("vision", {})["fps"] = args.fps
    if args.backend:
        overrides.setdefault("vision", {})["backend.name"] = args.backend
    if args.max_new_tokens is not None:
        overrides.setdefault("language", {})["max_new_tokens"] = args.max_new_tokens
    if args.alert:
        overrides.setdefault("language", {})["alerts.rules"] = list(args.alert)
    cfg = cfg.replace(**overrides)
    return config_mod.from_flat(dict(_setting(text) for text in args.set), cfg) if args.set else cfg


def _setting(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--set wants NAME=VALUE, got {text!r}")
    return name.strip(), yaml.safe_load(value)  # YAML's scalars, as in a parameter file


def _run_settings(args) -> int:
    """Every pipeline setting: name, value in effect, and what it does."""
    cfg = config_mod.load(args.config) if args.config else config_mod.PipelineConfig()
    for name, (value, meta) in config_mod.described(cfg).items():
        limits = f" [{meta['range'][0]}, {meta['range'][1]}]" if "range" in meta else ""
        limits += f" {{{', '.join(meta['choices'])}}}" if "choices" in meta else ""
        fixed = " (fixed while running)" if meta.get("read_only") else ""
        print(f"{name} = {value!r}{limits}{fixed}\n    {meta.get('help', '')}")
    return 0


def _questions(args) -> list[Question]:
    if len(args.at) > len(args.ask):
        raise ValueError("every --at needs a --ask before it")
    times = args.at + [float("inf")] * (len(args.ask) - len(args.at))
    asked = [Question(q, t) for q, t in zip(args.ask, times)]
    if args.questions:
        truth = json.loads(args.questions.read_text())
        # Asked once the question's frame is in: before the next frame arrives.
        asked += [Question(q["text"], (q["frame"] + 0.5) / truth["fps"], q["answer"]) for q in truth["questions"]]
    return sorted(asked, key=lambda q: q.at_s)


def _stream(args, frames) -> int:
    from streamvlm.pipeline import StreamingVLM

    questions = _questions(args)
    vlm = StreamingVLM.from_config(_config(args))
    report = _Reporter(args.json, args.out)
    vlm.on_alert = lambda alert: report.alert(alert, origin_ns)
    debug = None
    if args.debug_video:
        from streamvlm.debug_view import DebugVideos

        debug = DebugVideos(args.debug_video, vlm.cfg.vision.fps or 1.0)
    origin_ns = None
    late = 0
    wall_start = time.monotonic()
    try:
        for frame in _progress(frames):
            origin_ns = frame.stamp_ns if origin_ns is None else origin_ns
            stream_s = (frame.stamp_ns - origin_ns) / 1e9
            while questions and questions[0].at_s < stream_s:
                question = questions.pop(0)
                report.answer(vlm.ask(question.text), origin_ns, question.expected)
            if args.realtime and _behind(wall_start, stream_s):
                late += 1
                continue
            stage = vlm.vision_for(frame.camera)
            shown = stage.last_view
            caption = vlm.push(frame.rgb, frame.stamp_ns, frame.camera)
            if debug is not None and stage.last_view is not shown:  # this frame was processed
                debug.write(frame.rgb, stage.last_view, frame.camera)
            if caption is not None:
                report.caption(caption, origin_ns)
        for question in questions:
            report.answer(vlm.ask(question.text), origin_ns or 0, question.expected)
    finally:
        report.close()
        if debug is not None:
            debug.close()
            log.info("wrote %d frames to %s", debug.frames, ", ".join(v.path for v in debug.videos.values()))
    if frames.dropped or late or vlm.dropped_late:
        log.info("dropped frames: %d undecodable, %d behind real time, %d out of time order",
                 frames.dropped, late, vlm.dropped_late)
    return 0


def _behind(wall_start: float, stream_s: float) -> bool:
    """Pace to the recorded rate; True when this frame's time has already passed."""
    lag = time.monotonic() - wall_start - stream_s
    if lag < 0:
        time.sleep(-lag)
    return lag > 0.05


def _progress(frames):
    if not sys.stderr.isatty():
        return frames
    from tqdm import tqdm

    return tqdm(frames, total=len(frames), unit="frame", leave=False, file=sys.stderr)


class _Reporter:
    """Prints captions and answers (text or JSON lines) and optionally records them in a bag."""

    def __init__(self, as_json: bool, out: Path | None):
        self.as_json = as_json
        self.bag = None
        self.scored: list[bool] = []
        if out is not None:
            from streamvlm.bag import BagWriter

            self.bag = BagWriter(out, "mcap")

    def caption(self, caption, origin_ns: int) -> None:
        stamp = (caption.stamp_ns - origin_ns) / 1e9
        self._emit({"type": "caption", "stamp": round(stamp, 3), "text": caption.text,
                    "latency_ms": round(caption.latency_ms, 1)},
                   f"[{stamp:8.2f}s] caption: {caption.text}")
        if self.bag:
            self.bag.write_caption("/captions", caption)

    def answer(self, answer, origin_ns: int, expected: str = "") -> None:
        stamp = (answer.stamp_ns - origin_ns) / 1e9 if answer.stamp_ns else 0.0
        record = {"type": "answer", "stamp": round(stamp, 3), "question": answer.question,
                  "text": answer.text, "latency_ms": round(answer.latency_ms, 1)}
        if any(answer.evidence_cameras):  # several cameras: which ones the answer saw, and when
            record["evidence"] = [{"camera": c, "stamp": round((t - origin_ns) / 1e9, 3)}
                                  for t, c in zip(answer.evidence_ns, answer.evidence_cameras)]
        if not answer.success:
            record["error"] = answer.error
        line = f"[{stamp:8.2f}s] Q: {answer.question}\n{'':11}A: {answer.text or '(' + answer.error + ')'}"
        if expected:
            from streamvlm.synth.questions import Question as Asked, is_correct

            right = answer.success and is_correct(Asked("", answer.question, expected, 0), answer.text)
            self.scored.append(right)
            record["expected"], record["right"] = expected, right
            line += f"\n{'':11}   (right answer: {expected}; {'right' if right else 'wrong'})"
        self._emit(record, line)
        if self.bag:
            self.bag.write_answer("/answers", answer)

    def alert(self, alert, origin_ns: int) -> None:
        stamp = (alert.stamp_ns - origin_ns) / 1e9  # an alert follows a frame: the origin is set
        self._emit({"type": "alert", "stamp": round(stamp, 3), "rule": alert.rule, "camera": alert.camera,
                    "probability": round(alert.probability, 3)}, f"[{stamp:8.2f}s] alert: {alert.text}")
        if self.bag:
            self.bag.write_alert("/alerts", alert)

    def _emit(self, record: dict, line: str) -> None:
        print(json.dumps(record) if self.as_json else line, flush=True)

    def close(self) -> None:
        if self.scored:  # questions whose answers were known (`--questions`)
            self._emit({"type": "score", "right": sum(self.scored), "asked": len(self.scored)},
                       f"answers right: {sum(self.scored)} of {len(self.scored)}")
        if self.bag:
            self.bag.close()


def _quiet_libraries() -> None:
    # Weight-loading progress bars and hub warnings would bury the captions.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
