"""Camera time that jumps: late frames, a looped bag, a reset clock, minutes without frames.
Each is handled by `stream.on_time_jump` (reset or continue) and counted."""

from __future__ import annotations

import pytest

from streamvlm.config import PipelineConfig, StreamConfig
from streamvlm.llm.stage import LanguageStage
from streamvlm.llm.worker import LanguageWorker
from streamvlm.pipeline import StreamingVLM
from streamvlm.timeline import JUMP, LATE, NEXT, RESET, Timeline
from streamvlm.vision.stage import VisionStage
from streamvlm.vision.worker import VisionWorker

S = 1_000_000_000
WAIT = 60


def _verdicts(timeline: Timeline, stamps_s: list[float]) -> list[tuple[str, float]]:
    return [(p.verdict, p.stamp_ns / S) for p in (timeline.place(round(t * S)) for t in stamps_s)]


def test_late_frames_are_told_from_a_clock_that_jumped_back():
    timeline = Timeline(StreamConfig(max_reorder_s=1.0))
    got = _verdicts(timeline, [10.0, 10.5, 10.2, 10.5, 9.4, 11.0])
    assert got == [(NEXT, 10.0), (NEXT, 10.5), (LATE, 10.2), (LATE, 10.5), (RESET, 9.4), (NEXT, 11.0)]
    assert (timeline.late, timeline.jumps_back, timeline.resets) == (2, 1, 1)


def test_continue_shifts_stamps_after_a_jump_back_by_one_camera_interval():
    timeline = Timeline(StreamConfig(on_time_jump="continue"))
    got = _verdicts(timeline, [100.0, 100.5, 101.0, 3.0, 3.5, 3.4])
    assert got == [(NEXT, 100.0), (NEXT, 100.5), (NEXT, 101.0), (JUMP, 101.5), (NEXT, 102.0), (LATE, 101.9)]
    assert (timeline.jumps_back, timeline.resets) == (1, 0)


@pytest.mark.parametrize("policy, verdict", [("reset", RESET), ("continue", JUMP)])
def test_a_gap_longer_than_max_gap_is_a_jump_and_keeps_its_stamps(policy, verdict):
    timeline = Timeline(StreamConfig(on_time_jump=policy, max_gap_s=60.0))
    assert _verdicts(timeline, [0.0, 30.0, 330.0]) == [(NEXT, 0.0), (NEXT, 30.0), (verdict, 330.0)]
    assert timeline.gaps == 1 and "gap over 60 s" in timeline.describe()
    never = Timeline(StreamConfig(max_gap_s=0.0))
    assert _verdicts(never, [0.0, 86400.0]) == [(NEXT, 0.0), (NEXT, 86400.0)]


def _pipeline(model, policy: str) -> StreamingVLM:
    cfg = PipelineConfig().replace(model={"name": "tiny"}, vision={"fps": 1.0},
                                   language={"caption_interval_s": 0.0, "max_new_tokens": 3, "cache.vision_window_s": 3.0},
                                   stream={"on_time_jump": policy})
    return StreamingVLM(cfg, model)


def test_a_looped_bag_starts_a_new_stream_under_reset(tiny_model, frames):
    vlm = _pipeline(tiny_model, "reset")
    for loop in range(2):
        for t in range(8):
            vlm.push(frames[t % len(frames)], (1000 + t) * S)
    assert vlm.language.frame_stamps[-1] == 1007 * S and vlm.timeline.resets == 1
    assert len(vlm.language.memory) == 8 - len(vlm.language.frame_stamps)  # only the second loop's evictions
    answer = vlm.ask("What is there?")
    assert answer.success and min(answer.evidence_ns) >= 1000 * S


def test_a_looped_bag_continues_with_shifted_stamps_under_continue(tiny_model, frames):
    vlm = _pipeline(tiny_model, "continue")
    for loop in range(2):
        for t in range(8):
            vlm.push(frames[t % len(frames)], (1000 + t) * S)
    assert vlm.language.frame_stamps[-1] == 1015 * S and vlm.timeline.jumps_back == 1
    assert len(vlm.language.memory) == 16 - len(vlm.language.frame_stamps)  # both loops remembered


def _batches(model, frames, stamps_s):
    stage = VisionStage(PipelineConfig().replace(model={"name": "tiny"}, vision={"fps": 0.0}), model)
    return [stage.process(frames[i % len(frames)], t * S) for i, t in enumerate(stamps_s)]


def test_the_language_worker_resets_in_turn_after_what_came_before_the_jump(tiny_model, frames):
    cfg = PipelineConfig().replace(model={"name": "tiny"}, language={"caption_interval_s": 0.0, "max_new_tokens": 2})
    worker = LanguageWorker(LanguageStage(cfg, tiny_model))
    worker.start()
    batches = _batches(tiny_model, frames, [50, 51, 52, 5, 6])
    for batch in batches[:3]:
        worker.submit_batch(batch)
    before = worker.ask("What was there?")
    for batch in batches[3:]:
        worker.submit_batch(batch)
    after = worker.ask("What is there now?")
    assert before.result(WAIT).evidence_ns == [50 * S, 51 * S, 52 * S]
    assert after.result(WAIT).evidence_ns == [5 * S, 6 * S]
    status = worker.status()
    worker.stop()
    assert status["stream resets"] == 1 and status["time jumps back"] == 1 and status["frames ingested"] == 5
    assert status["time jump policy"].startswith("reset on a jump back over 1 s")


def test_the_vision_worker_gives_the_first_frame_after_a_reset_a_full_pass(tiny_model, frames):
    cfg = PipelineConfig().replace(model={"name": "tiny"}, vision={"fps": 1.0}, stream={"max_gap_s": 60.0})
    out = []
    worker = VisionWorker(VisionStage(cfg, tiny_model), lambda frame: frame, out.append)
    worker.start()
    for i, t in enumerate((0, 1, 2, 500, 501)):  # minutes without frames between 2 s and 500 s
        worker.submit(t * S, frames[0])
        _wait(lambda: len(out) == i + 1)
    worker.stop()
    assert [b.stamp_ns for b in out] == [0, S, 2 * S, 500 * S, 501 * S]
    assert [b.reuse_ratio > 0 for b in out] == [False, True, True, False, True]  # the same frame, a new stream
    assert worker.status()["time gaps"] == 1 and worker.status()["stream resets"] == 1


def _wait(condition):
    import time

    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
