"""The stage workers behind the nodes: bounded queues, counted drops, arrival order, and an
answer for every question. No ROS: the nodes only feed these."""

from __future__ import annotations

import threading

import pytest
import torch

from streamvlm.config import PipelineConfig
from streamvlm.image import ImageError
from streamvlm.llm.stage import LanguageStage
from streamvlm.llm.worker import LanguageWorker
from streamvlm.vision.stage import VisionStage
from streamvlm.vision.worker import VisionWorker

S = 1_000_000_000
WAIT = 60  # seconds; generous for a loaded 2-core machine, never reached when things work


def _cfg(**language):
    return PipelineConfig().replace(model={"name": "tiny"}, vision={"fps": 0.0},
                                    language={"caption_interval_s": 0.0, "max_new_tokens": 3, **language})


class Gate:
    """Blocks a worker inside a call until the test opens it; says when the worker got there."""

    def __init__(self):
        self.entered = threading.Event()
        self.opened = threading.Event()

    def hold(self):
        self.entered.set()
        assert self.opened.wait(WAIT)


def _held_in_first_frame(stage, frames):
    """A running VisionWorker held inside its first frame ("first") until `gate.opened`;
    `done` is set once two frames were handed on, into `out`."""
    gate, out, done = Gate(), [], threading.Event()

    def decode(item):
        if item == "first":
            gate.hold()
        return frames[0]

    def on_batch(batch):
        out.append(batch)
        if len(out) == 2:
            done.set()

    worker = VisionWorker(stage, decode, on_batch)
    worker.start()
    worker.submit(1 * S, "first")
    assert gate.entered.wait(WAIT)  # the worker is busy with the first frame
    return worker, gate, out, done


def test_a_slow_encoder_drops_waiting_frames_instead_of_queueing(tiny_model, frames):
    worker, gate, out, done = _held_in_first_frame(VisionStage(_cfg(), tiny_model), frames)
    for i in range(2, 6):
        worker.submit(i * S, f"frame {i}")
    gate.opened.set()
    assert done.wait(WAIT)
    worker.stop()
    # Frames 2..4 each waited in the slot and were replaced: only the newest survived.
    assert worker.dropped_busy == 3
    assert [b.stamp_ns for b in out] == [1 * S, 5 * S]
    assert worker.processed == 2 and worker.received == 5


def test_frames_the_rate_does_not_want_are_skipped_without_decoding(tiny_model, frames):
    decoded = []
    cfg = _cfg().replace(vision={"fps": 1.0})
    worker = VisionWorker(VisionStage(cfg, tiny_model), lambda item: decoded.append(item) or frames[0],
                          lambda batch: None)
    worker.start()
    taken = [worker.submit(i * S // 10, i) for i in range(10)]  # 1 s of a 10 fps camera
    worker.stop()
    assert taken == [True] + [False] * 9 and worker.skipped == 9


def test_undecodable_frames_are_counted_and_the_worker_goes_on(tiny_model, frames):
    done = threading.Event()
    out = []

    def decode(item):
        if item == "bad":
            raise ImageError("corrupt JPEG")
        return frames[0]

    def on_batch(batch):
        out.append(batch)
        done.set()

    worker = VisionWorker(VisionStage(_cfg(), tiny_model), decode, on_batch)
    worker.start()
    worker.submit(1 * S, "bad")
    while worker.dropped_invalid == 0 and worker._thread.is_alive():
        threading.Event().wait(0.01)
    worker.submit(2 * S, "good")
    assert done.wait(WAIT)
    worker.stop()
    assert worker.dropped_invalid == 1 and [b.stamp_ns for b in out] == [2 * S]


def _batches(tiny_model, frames, stamps):
    stage = VisionStage(_cfg(), tiny_model)
    return [stage.process(frames[i % len(frames)], t) for i, t in enumerate(stamps)]


def test_a_question_is_answered_after_the_frames_that_came_before_it(tiny_model, frames):
    answers = []
    worker = LanguageWorker(LanguageStage(_cfg(), tiny_model), on_answer=answers.append)
    worker.start()
    batches = _batches(tiny_model, frames, [1 * S, 2 * S, 3 * S])
    for batch in batches[:2]:
        worker.submit_batch(batch)
    first = worker.ask("What is there?")
    worker.submit_batch(batches[2])
    second = worker.ask("And now?")
    assert first.result(WAIT).evidence_ns == [1 * S, 2 * S]
    assert second.result(WAIT).evidence_ns == [1 * S, 2 * S, 3 * S]
    worker.stop()
    assert worker.answered == 2 and [a.question for a in answers] == ["What is there?", "And now?"]


def test_refusals_come_at_once_with_reasons(tiny_model, frames):
    answers = []
    worker = LanguageWorker(LanguageStage(_cfg(max_question_chars=20), tiny_model), on_answer=answers.append)
    assert "not active" in worker.ask("Anyone there?").result(0).error
    worker.start()
    assert "no camera frames" in worker.ask("Anyone there?").result(WAIT).error
    assert "empty" in worker.ask("").result(0).error
    assert "limit" in worker.ask("x" * 21).result(0).error
    assert "not valid UTF-8" in worker.ask("a\udcffb").result(0).error  # bytes decoded with surrogateescape
    assert "not valid UTF-8" in worker.ask("a\ufffdb").result(0).error  # how rclpy decodes invalid bytes
    assert "NUL" in worker.ask("a\x00b").result(0).error
    worker.stop()
    assert worker.rejected == 7 and len(answers) == 7 and not any(a.success for a in answers)
    assert answers[4].question == "a\\udcffb"  # spelled out, so the refusal can be published


def test_questions_beyond_the_queue_are_refused_as_busy_and_none_is_lost(tiny_model, frames):
    stage = LanguageStage(_cfg(), tiny_model)
    gate = Gate()
    ingest = stage.ingest

    def slow_ingest(batch):
        ingest(batch)
        if batch.stamp_ns == 2 * S:
            gate.hold()

    stage.ingest = slow_ingest
    worker = LanguageWorker(stage, max_pending_questions=3)
    worker.start()
    for batch in _batches(tiny_model, frames, [1 * S, 2 * S]):
        worker.submit_batch(batch)
    assert gate.entered.wait(WAIT)
    futures = [worker.ask(f"question {i}") for i in range(6)]
    gate.opened.set()
    answers = [f.result(WAIT) for f in futures]
    worker.stop()
    assert [a.success for a in answers] == [True] * 3 + [False] * 3
    assert all(a.error.startswith("busy") for a in answers[3:])


def test_late_invalid_and_overflowing_frames_are_counted_drops(tiny_model, frames):
    stage = LanguageStage(_cfg(), tiny_model)
    gate = Gate()
    ingest = stage.ingest

    def slow_ingest(batch):
        if batch.stamp_ns == 1 * S:
            gate.hold()
        ingest(batch)

    stage.ingest = slow_ingest
    worker = LanguageWorker(stage, max_pending_frames=2)
    worker.start()
    batches = _batches(tiny_model, frames, [t * S for t in range(1, 6)])
    worker.submit_batch(batches[0])
    assert gate.entered.wait(WAIT)
    for batch in batches[1:]:  # 2..5 arrive while 1 is being ingested; the queue holds 2
        worker.submit_batch(batch)
    assert not worker.submit_batch(batches[4])  # a repeat: not after the newest
    wrong = _batches(tiny_model, frames, [8 * S])[0]
    wrong.embeddings = torch.zeros(4, 3)
    assert not worker.submit_batch(wrong)
    nan = _batches(tiny_model, frames, [9 * S])[0]
    nan.embeddings = nan.embeddings.clone()
    nan.embeddings[0, 0] = float("nan")
    assert not worker.submit_batch(nan)
    gate.opened.set()
    answer = worker.ask("done?").result(WAIT)
    worker.stop()
    assert worker.dropped_overflow == 2 and worker.dropped_late == 1 and worker.dropped_invalid == 2
    assert answer.evidence_ns == [1 * S, 4 * S, 5 * S]


def test_stopping_answers_every_waiting_question(tiny_model, frames):
    stage = LanguageStage(_cfg(), tiny_model)
    gate = Gate()
    ingest = stage.ingest
    stage.ingest = lambda batch: (gate.hold(), ingest(batch))
    worker = LanguageWorker(stage)
    worker.start()
    worker.submit_batch(_batches(tiny_model, frames, [1 * S])[0])
    assert gate.entered.wait(WAIT)
    waiting = [worker.ask("still there?") for _ in range(3)]
    threading.Timer(0.2, gate.opened.set).start()
    worker.stop()
    assert all(f.result(WAIT).error == "the node is shutting down" for f in waiting)


@pytest.mark.parametrize("fps", [0.0, 2.0])
def test_run_time_settings_change_without_touching_the_model(tiny_model, fps):
    stage = VisionStage(_cfg(), tiny_model)
    stage.reconfigure(stage.cfg.replace(vision={"fps": fps}))
    assert stage.sampler.period_ns == (round(1e9 / fps) if fps else 0)
    with pytest.raises(ValueError, match="fixed while running"):
        stage.reconfigure(stage.cfg.replace(model={"dtype": "float16"}))


def test_a_settings_change_waits_for_the_frame_in_hand(tiny_model, frames):
    """The delta cache and pruner are swapped between frames, on the worker thread, never
    under a frame being encoded; a change the stage cannot take is refused at once."""
    stage = VisionStage(_cfg(), tiny_model)
    worker, gate, out, done = _held_in_first_frame(stage, frames)
    encoder, pruner = stage.encoder.settings, stage.pruner
    worker.reconfigure(stage.cfg.replace(vision={"delta.mode": "stc", "prune.mode": "stc", "prune.keep_tokens": 60,
                                                 "fps": 0.5}))
    assert stage.sampler.fps == 0.5  # the rate applies at once: `submit` reads it under the lock
    assert stage.encoder.settings is encoder and stage.pruner is pruner  # the rest waits for the frame
    with pytest.raises(ValueError, match="fixed while running"):
        worker.reconfigure(stage.cfg.replace(vision={"backend.torch_compile": True}))
    gate.opened.set()
    worker.submit(3 * S, "second")
    assert done.wait(WAIT)
    worker.stop()
    assert stage.encoder.settings.mode == "stc" and stage.pruner.settings.mode == "stc"
    status = worker.status()
    assert out[1].num_tokens == 60 and status["settings changes applied"] == 1 and status["frames failed"] == 0
    assert status["setting vision.delta.mode"] == "stc"


def test_a_language_settings_change_applies_between_questions(tiny_model, frames):
    stage = LanguageStage(_cfg(), tiny_model)
    gate = Gate()
    ask = stage.ask
    stage.ask = lambda *args, **kwargs: (gate.hold(), ask(*args, **kwargs))[1]
    worker = LanguageWorker(stage)
    worker.reconfigure(stage.cfg.replace(language={"cache.vision_window_frames": 5}))  # stopped: at once
    assert stage.cfg.language.cache.vision_window_frames == 5 and worker.status()["settings changes applied"] == 1
    worker.start()
    worker.submit_batch(_batches(tiny_model, frames, [1 * S])[0])
    first = worker.ask("what now?")
    assert gate.entered.wait(WAIT)  # answering
    worker.reconfigure(stage.cfg.replace(language={"memory.top_k": 0, "cache.vision_window_frames": 2}))
    assert stage.engine.cache.policy.layout.vision_window_frames == 5  # not under the answer in hand
    gate.opened.set()
    assert first.result(WAIT).success
    second = worker.ask("and now?")
    assert second.result(WAIT).success
    worker.stop()
    assert stage.engine.cache.policy.layout.vision_window_frames == 2 and stage.memory is None
    status = worker.status()
    assert status["settings changes applied"] == 2 and status["frames or questions failed"] == 0
    with pytest.raises(ValueError, match="budget_tokens"):
        worker.reconfigure(stage.cfg.replace(language={"cache.budget_tokens": 1024}))
