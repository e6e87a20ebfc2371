"""Several cameras in one stream, without ROS: names, the shared KV budget with a window per
camera, markers naming the camera, answers' evidence naming cameras, bags of several topics."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from streamvlm.bag import BagFrames, BagWriter, camera_topics
from streamvlm.cameras import MAX_CAMERAS, camera_error, check_cameras
from streamvlm.config import PipelineConfig
from streamvlm.llm.kv_cache import FRAME, TEXT, CacheLayout, StreamingPolicy
from streamvlm.pipeline import StreamingVLM

S = 1_000_000_000


def test_camera_names_are_short_identifiers():
    assert camera_error("front") == camera_error("rear_left2") == camera_error("") == ""
    for bad in ("2front", "front camera", "a/b", "x" * 33, "ü"):
        assert "camera name" in camera_error(bad)
    assert check_cameras([]) == check_cameras([""]) == []
    assert check_cameras(["front", "left"]) == ["front", "left"]
    for bad, reason in ((["front", "front"], "repeat"), (["front", ""], "empty"),
                        ([f"c{i}" for i in range(MAX_CAMERAS + 1)], "at most")):
        with pytest.raises(ValueError, match=reason):
            check_cameras(bad)


def test_each_camera_keeps_its_own_vision_window_inside_one_budget():
    """Three frames a camera at most: a camera that sends more often does not push the
    other's frames out; the budget still bounds the sum."""
    policy = StreamingPolicy(CacheLayout(budget_tokens=200, sink_tokens=0, text_sink_tokens=4,
                                         text_window_tokens=8, vision_window_s=0.0, vision_window_frames=3))
    policy.evict_for(4, TEXT)
    policy.append(TEXT, 4)
    stamp = 0
    for step in range(12):
        for camera in (["front", "front", "left"] if step % 2 else ["front"]):
            stamp += S // 10
            policy.evict_for(10, FRAME, stamp, camera)
            policy.append(FRAME, 10, stamp, camera)
            policy.check()
    cameras = policy.frame_cameras
    assert cameras.count("front") == 3 and cameras.count("left") == 3
    # The budget, when the windows are not enough: the oldest frame leaves, whoever's it is.
    tight = StreamingPolicy(CacheLayout(budget_tokens=44, sink_tokens=0, text_sink_tokens=4,
                                        text_window_tokens=8, vision_window_s=0.0, vision_window_frames=3))
    for i, camera in enumerate(["front", "left", "front", "left", "front"]):
        tight.evict_for(10, FRAME, (i + 1) * S, camera)
        tight.append(FRAME, 10, (i + 1) * S, camera)
        assert tight.used <= 44
    assert tight.frame_stamps == [2 * S, 3 * S, 4 * S, 5 * S]


def _two_camera_pipeline(model, **language) -> StreamingVLM:
    cfg = PipelineConfig().replace(model={"name": "tiny"}, vision={"fps": 1.0},
                                   language={"caption_interval_s": 0.0, "max_new_tokens": 3, **language})
    return StreamingVLM(cfg, model)


def test_two_cameras_stream_into_one_context_and_answers_name_both(tiny_model, frames):
    vlm = _two_camera_pipeline(tiny_model, cache={"budget_tokens": 2048, "vision_window_frames": 2},
                               memory={"top_k": 0})  # the window's frames alone
    for second in range(6):
        vlm.push(frames[second % 3], second * S + S // 10, "left")  # left's frame comes first ...
        vlm.push(frames[(second + 1) % 3], second * S, "front")  # ... front's, older, is not late
    assert vlm.dropped_late == 0
    assert set(vlm.cameras) == {"left", "front"} and vlm.cameras["left"] is vlm.vision
    assert vlm.cameras["front"].encoder.backend is vlm.vision.encoder.backend  # one ViT backend
    assert vlm.cameras["front"].encoder is not vlm.vision.encoder  # a delta cache each
    answer = vlm.ask("What do the cameras show?")
    assert answer.success
    pairs = list(zip(answer.evidence_cameras, answer.evidence_ns))
    # Each camera's last two frames, and the stream's first frame, which holds the attention sinks.
    assert sorted(pairs) == [("front", 4 * S), ("front", 5 * S), ("left", S // 10), ("left", 4 * S + S // 10),
                             ("left", 5 * S + S // 10)]
    assert vlm.language.context_tokens <= 2048
    # A camera's own frames must still come in order; a bad name is refused.
    vlm.push(frames[0], 5 * S - S // 2, "front")  # within the reorder window: late
    assert vlm.dropped_late == 1
    with pytest.raises(ValueError, match="camera name"):
        vlm.push(frames[0], 7 * S, "front camera")


def test_a_named_camera_writes_its_name_before_each_frame(tiny_model, frames):
    vlm = _two_camera_pipeline(tiny_model)
    prompt = tiny_model.prompt
    assert prompt.marker(75, "front") == (f" front{prompt.marker(75)}" if prompt.frame_marker else " front 75s")
    batch = vlm.vision_for("front").process(frames[0], 75 * S)
    batch.camera = "front"
    vlm.language._first_ns = 0
    _, header, _ = vlm.language._with_text(batch)
    assert header == tiny_model.tokenize(prompt.marker(75, "front")).shape[1] > 0
    batch.camera = ""  # the only camera: the model's own marker, if it has one
    plain = tiny_model.tokenize(prompt.marker(75)).shape[1] if prompt.frame_marker else 0
    assert vlm.language._with_text(batch)[1] == plain


def test_a_jump_back_on_one_camera_starts_the_stream_anew_for_all(tiny_model, frames):
    vlm = _two_camera_pipeline(tiny_model)
    for second in range(3):
        vlm.push(frames[0], (100 + second) * S, "front")
        vlm.push(frames[1], (100 + second) * S, "left")
    vlm.push(frames[0], 5 * S, "front")  # a looped bag
    vlm.push(frames[1], 5 * S, "left")  # the other camera follows, in the new stream
    assert vlm.language.frame_stamps == [5 * S, 5 * S]
    assert vlm.cameras["front"].timeline.resets == 1 and vlm.cameras["left"].timeline.resets == 0


def test_topics_name_their_cameras():
    assert camera_topics(["/cam/image"]) == {"/cam/image": ""}
    assert camera_topics(["/front/image_raw", "/cameras/left/image/compressed"]) == {
        "/front/image_raw": "front", "/cameras/left/image/compressed": "left"}
    assert camera_topics(["rear=/camera/image", "/front/image"]) == {"/camera/image": "rear", "/front/image": "front"}
    with pytest.raises(ValueError, match="no camera name .* name it as NAME=/camera/image"):
        camera_topics(["/a/camera/image", "/b/camera/image", "/camera/image"])  # the last has no name
    with pytest.raises(ValueError, match="same camera"):
        camera_topics(["/front/image", "/front/image_raw"])


@pytest.fixture
def two_camera_bag(tmp_path, frames):
    path = tmp_path / "two.mcap"
    with BagWriter(path, "mcap") as bag:
        for second in range(8):
            bag.write_compressed("/front/image/compressed", second * S, frames[second % 3])
            bag.write_image("/left/image_raw", second * S + S // 3, np.ascontiguousarray(frames[(second + 1) % 3]))
    return path


def test_a_bag_of_two_cameras_reads_as_one_stream_of_named_frames(two_camera_bag):
    with pytest.raises(ValueError, match="choose one with --topic"):
        BagFrames(two_camera_bag)
    both = BagFrames(two_camera_bag, ["/front/image/compressed", "/left/image_raw"])
    read = [(f.camera, f.stamp_ns) for f in both]
    assert len(both) == 16 and [s for _, s in read] == sorted(s for _, s in read)
    assert {c for c, _ in read} == {"front", "left"}


def test_replay_of_a_two_camera_bag_answers_with_evidence_from_both(tiny_model, two_camera_bag, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "streamvlm.cli", "replay", str(two_camera_bag), "--topic", "/front/image/compressed",
         "--topic", "side=/left/image_raw", "--model", "tiny", "--json", "--ask", "What changed?", "--at", "7",
         "--debug-video", str(tmp_path / "debug.mp4"), "--alert", "something moved",
         "--set", "language.alerts.threshold=0.0"],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    answer = next(json.loads(line) for line in out.stdout.splitlines() if '"answer"' in line)
    assert {e["camera"] for e in answer["evidence"]} == {"front", "side"}
    alerts = [json.loads(line) for line in out.stdout.splitlines() if '"alert"' in line]
    assert [a["rule"] for a in alerts] == ["something moved"]  # threshold 0: holds from the first check
    assert (tmp_path / "debug-front.mp4").stat().st_size > 0 and (tmp_path / "debug-side.mp4").stat().st_size > 0


def test_synth_writes_a_stream_of_several_cameras(tmp_path):
    out = subprocess.run([sys.executable, "-m", "streamvlm.cli", "synth", "--out", str(tmp_path / "s.mcap"),
                          "--minutes", "0.1", "--cameras", "front", "left"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    frames = BagFrames(tmp_path / "s.mcap", ["/front/image_raw/compressed", "/left/image_raw/compressed"])
    read = [(f.camera, f.stamp_ns) for f in frames]
    assert [c for c, _ in read] == ["front", "left"] * 6 and read[1][1] - read[0][1] == 10_000_000
    truth = json.loads((tmp_path / "s.questions.json").read_text())
    assert set(truth["cameras"]) == {"front", "left"} and truth["cameras"]["left"]["seed"] == 1
