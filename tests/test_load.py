"""Questions in bursts and bad questions, through the real `ask` service and `question`
topic of the `live` composition while camera frames stream in. Every call gets a
response in time: an answer, or a refusal that says why (busy, empty, too long, not UTF-8)."""

from __future__ import annotations

import threading
import time

import pytest

from tally import TALLY

pytestmark = [pytest.mark.ros, pytest.mark.reliability]
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (make setup)")
pytest.importorskip("streamvlm_msgs.srv", reason="streamvlm_msgs is not built (make setup)")

from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from streamvlm_msgs.srv import Ask  # noqa: E402

from ros_probe import Probe, Running, publish_until, wait_for  # noqa: E402
from streamvlm.ros.live import compose  # noqa: E402

CALLS, CLIENTS, QUEUE = 200, 20, 16
ASK_TIMEOUT_S = 60.0
DEEP = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=CALLS, reliability=ReliabilityPolicy.RELIABLE)


class Camera:
    """Publishes raw frames at `hz` with ascending stamps, on its own thread, until stopped."""

    def __init__(self, publisher, frame, hz: float = 10.0):
        self.publisher, self.frame, self.period = publisher, frame, 1.0 / hz
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def image(self, index: int) -> Image:
        msg = Image(height=self.frame.shape[0], width=self.frame.shape[1], encoding="rgb8",
                    step=self.frame.shape[1] * 3, data=self.frame.tobytes())
        msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + index // 10, index % 10 * 100_000_000
        return msg

    def start(self) -> "Camera":
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.period):
            self.publisher.publish(self.image(self.sent))
            self.sent += 1

    def stop(self):
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def live(request, tiny_model, frames):
    running = Running(compose, {
        "model.name": "tiny", "vision.fps": 0.0, "language.caption_interval_s": 2.0,
        "language.caption_max_new_tokens": 3, "language.max_new_tokens": 4, "language.max_question_chars": 200,
        "max_pending_questions": QUEUE, "ask_timeout_s": ASK_TIMEOUT_S})
    request.addfinalizer(running.close)
    probe = Probe("asker")
    request.addfinalizer(probe.close)
    llm, encoder = running.nodes
    publisher = probe.publisher(Image, "image")
    wait_for(lambda: publisher.get_subscription_count() > 0, 30, "the encoder's subscription")
    camera = Camera(publisher, frames[0])
    publish_until(publisher, camera.image, lambda: llm.worker.ingested, 60, "a first frame at the language model")
    camera.sent = 100  # stamps after every retried first frame
    camera.start()
    request.addfinalizer(camera.stop)
    return llm, probe, camera


def test_200_concurrent_questions_are_answered_or_refused_as_busy_and_none_is_lost(live):
    llm, probe, camera = live
    clients = [probe.node.create_client(Ask, "ask", qos_profile=DEEP) for _ in range(CLIENTS)]
    for client in clients:
        assert client.wait_for_service(timeout_sec=30)
    ingested_before = llm.worker.ingested
    start = time.monotonic()
    futures = [clients[i % CLIENTS].call_async(Ask.Request(question=f"Question {i}: what is there?"))
               for i in range(CALLS)]
    deadline = start + ASK_TIMEOUT_S + 30  # every call's own timeout, and a margin for the transport
    while time.monotonic() < deadline and not all(f.done() for f in futures):
        time.sleep(0.05)
    responses = [f.result() for f in futures if f.done()]
    answered = sum(r.success for r in responses)
    busy = sum(not r.success and r.error.startswith("busy") for r in responses)
    lost = CALLS - len(responses)
    TALLY.add("ask: 200 concurrent calls while frames stream", "answered", answered)
    TALLY.add("ask: 200 concurrent calls while frames stream", "rejected (busy)", busy)
    TALLY.add("ask: 200 concurrent calls while frames stream", "rejected (other)", len(responses) - answered - busy)
    TALLY.add("ask: 200 concurrent calls while frames stream", "lost", lost)
    assert lost == 0, f"{lost} calls got no response within {ASK_TIMEOUT_S + 30} s"
    assert answered + busy == CALLS, [r.error for r in responses if not r.success and not r.error.startswith("busy")]
    assert answered >= QUEUE and busy > 0
    assert all(r.answer and r.evidence for r in responses if r.success)
    wait_for(lambda: llm.worker.ingested > ingested_before + 3, 60, "frames still ingested after the burst")
    assert llm.worker.answered >= answered and llm.worker.failed == 0


def test_empty_overlong_and_invalid_utf8_questions_are_refused_with_reasons(live):
    llm, probe, _ = live
    for question, reason in [("", "empty"), ("   ", "empty"), ("why? " * 100, "limit is 200"),
                             ("what is \ufffd there?", "not valid UTF-8")]:
        response = probe.ask(question)
        assert not response.success and reason in response.error, (question, response.error)
        TALLY.add("ask: bad questions", "rejected with a reason")
    # Invalid UTF-8 bytes cannot be sent from Python strings: publish a serialized `question`
    # message with its bytes patched, as a C++ node or a corrupt bag could send it.
    publisher = probe.publisher(String, "question")
    wait_for(lambda: publisher.get_subscription_count() > 0, 30, "the question subscription")
    raw = serialize_message(String(data="abcd")).replace(b"abcd", b"a\xff\xfed")
    answers_before = len(probe.answers)
    publisher.publish(raw)
    refusal = wait_for(lambda: probe.answers[answers_before:], 30, "the refusal on `answers`")[0]
    assert not refusal.success and "not valid UTF-8" in refusal.error
    TALLY.add("ask: bad questions", "rejected with a reason")
    assert probe.ask("What is there?").success  # and the node still answers
