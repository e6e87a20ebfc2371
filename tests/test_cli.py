"""The command line on the committed sample bag and on a video file, with the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
from rosbags.highlevel import AnyReader

from conftest import SAMPLE_BAG
from streamvlm.bag import typestore


def streamvlm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamvlm.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_replay_prints_json_captions_and_the_answer_at_its_time(tmp_path):
    out = tmp_path / "out.mcap"
    result = streamvlm("replay", str(SAMPLE_BAG), "--ask", "What is happening?", "--at", "10",
                       "--model", "tiny", "--json", "--max-new-tokens", "6", "--out", str(out))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    answers = [r for r in records if r["type"] == "answer"]
    captions = [r for r in records if r["type"] == "caption"]
    assert len(answers) == 1 and answers[0]["stamp"] == 10.0
    assert answers[0]["question"] == "What is happening?" and answers[0]["text"]
    assert [c["stamp"] for c in captions] == [5.0, 10.0, 15.0]  # every 5 s of a 20 s bag at 1 fps
    assert all(set(r) >= {"type", "stamp", "text", "latency_ms"} for r in records)

    with AnyReader([out], default_typestore=typestore()) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts == {"/captions": 3, "/answers": 1}


def test_video_command_and_question_at_the_end(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(15):  # 3 s at 5 fps
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    result = streamvlm("video", str(path), "--ask", "Anything?", "--model", "tiny", "--json",
                       "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    (answer,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert answer["type"] == "answer" and answer["stamp"] == 2.0  # last kept frame at 1 fps


def test_unavailable_model_falls_back_to_tiny_with_one_clear_line():
    result = streamvlm("replay", str(SAMPLE_BAG), "--model", "no-such-org/no-such-model", "--json",
                       "--fps", "0.2")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "unavailable" in line]
    assert len(warnings) == 1 and "tiny" in warnings[0]


def test_errors_are_reported_not_raised(tmp_path):
    result = streamvlm("replay", str(tmp_path / "missing"), "--model", "tiny")
    assert result.returncode == 2 and "error" in result.stderr


def test_synth_writes_a_bag_and_its_questions_and_replay_asks_them(tmp_path):
    from streamvlm.bag import BagFrames
    from streamvlm.synth import evaluation_scene

    bag = tmp_path / "scene.mcap"
    result = streamvlm("synth", "--out", str(bag), "--minutes", "0.25", "--seed", "1")
    assert result.returncode == 0, result.stderr
    truth = json.loads((tmp_path / "scene.questions.json").read_text())
    assert truth["frames"] == 15 and truth["questions"] and truth["objects"]
    frames = list(BagFrames(bag))
    scene = evaluation_scene(1, 15)
    assert [f.stamp_ns for f in frames] == [scene.stamp_ns(i) for i in range(15)]
    assert np.abs(frames[9].rgb.astype(int) - scene.frame(9)).mean() < 3  # JPEG, quality 90
    assert streamvlm("synth", "--out", str(bag)).returncode == 2  # never overwrites

    result = streamvlm("replay", str(bag), "--questions", str(tmp_path / "scene.questions.json"), "--model",
                       "tiny", "--json", "--max-new-tokens", "2")
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines() if '"answer"' in line]
    assert [a["expected"] for a in answers] == [q["answer"] for q in truth["questions"]]
    assert [a["stamp"] for a in answers] == [float(q["frame"]) for q in truth["questions"]]
    score = [json.loads(line) for line in result.stdout.splitlines() if '"score"' in line]
    assert score == [{"type": "score", "right": sum(a["right"] for a in answers), "asked": len(answers)}]
