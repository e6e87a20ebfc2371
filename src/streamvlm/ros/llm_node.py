"""llm_node: `vision_tokens` in; `captions`, `answers`, `alerts` and the `ask` service out.

    ros2 run streamvlm llm_node
    ros2 service call /ask streamvlm_msgs/srv/Ask "{question: 'What is happening?'}"
    ros2 topic pub --once /question std_msgs/msg/String "{data: 'Is the door open?'}"
    ros2 service call /edit_alerts streamvlm_msgs/srv/EditAlerts "{add: ['a person is visible']}"
    ros2 topic echo /alerts

Ingestion and answering share one model context, so a LanguageWorker thread does both in
arrival order; callbacks only enqueue. The `ask` service waits for its answer in its own
reentrant callback group, on a MultiThreadedExecutor with a thread for every question that
may wait, so a waiting question never holds up the token subscription and the worker never
waits on a callback.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String
from rclpy.parameter import Parameter
from streamvlm_msgs.msg import Alert as AlertMsg
from streamvlm_msgs.msg import Answer as AnswerMsg
from streamvlm_msgs.msg import Caption as CaptionMsg
from streamvlm_msgs.msg import VisionTokens
from streamvlm_msgs.srv import Ask, EditAlerts

from streamvlm.llm.stage import LanguageStage
from streamvlm.llm.worker import LanguageWorker
from streamvlm.metrics import ThrottledLog
from streamvlm.models import load_shared
from streamvlm.ros import convert
from streamvlm.ros.diagnostics import OK, WARN, grew
from streamvlm.ros.settings import LlmSettings
from streamvlm.ros.stage_node import StageNode
from streamvlm.llm.alerts import check_rules
from streamvlm.types import Alert, Answer, Caption, TokenBatch

RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Requests beyond the question queue must reach the callback to be refused as busy; with
# the services default (depth 10) a burst of calls would overflow the middleware's queue
# and the callers would never hear back.
ASK_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE)


class LlmNode(StageNode):
    SECTIONS = ("model", "language", "stream")

    def __init__(self, node_name: str = "llm_node", subscribe_tokens: bool = True, **kwargs):
        """`subscribe_tokens=False` when an encoder in the same process hands tokens to
        `take_batch` directly (the `live` composition)."""
        super().__init__(node_name, LlmSettings(), **kwargs)
        self._subscribe_tokens = subscribe_tokens
        self.worker: LanguageWorker | None = None
        self._captions = self._answers = self._alerts = None
        self._subscriptions_made: list = []
        self._frame_id = self.settings.frame_id
        self._warn = ThrottledLog(self.get_logger().warning)
        self.dropped_inactive = 0  # tokens that arrived while no worker ran
        # The service exists in every state, so a question to an inactive node is answered
        # with the reason instead of leaving the caller waiting for the service.
        self._ask_group = ReentrantCallbackGroup()
        self.create_service(Ask, "ask", self._on_ask, qos_profile=ASK_QOS, callback_group=self._ask_group)
        self.create_service(EditAlerts, "edit_alerts", self._on_edit_alerts)

    @property
    def threads_wanted(self) -> int:
        # One per question that may wait in the service callback, plus the one being
        # answered, plus subscriptions, timer and lifecycle services.
        return self.settings.max_pending_questions + 4

    def configure_stage(self) -> None:
        stage = LanguageStage(self.cfg, load_shared(self.cfg.model))
        self.worker = LanguageWorker(
            stage, max_pending_frames=self.settings.max_pending_frames,
            max_pending_questions=self.settings.max_pending_questions,
            on_caption=self._publish_caption, on_answer=self._publish_answer, on_alert=self._publish_alert,
            warn=self.get_logger().warning)
        self._captions = self.create_lifecycle_publisher(CaptionMsg, "captions", RELIABLE)
        self._answers = self.create_lifecycle_publisher(AnswerMsg, "answers", RELIABLE)
        self._alerts = self.create_lifecycle_publisher(AlertMsg, "alerts", RELIABLE)
        self.get_logger().info(f"configured: model {stage.model.name}")

    def activate_stage(self) -> None:
        self.worker.start()
        ingest = MutuallyExclusiveCallbackGroup()
        if self._subscribe_tokens:
            self._subscriptions_made.append(self.create_subscription(
                VisionTokens, "vision_tokens", self._on_tokens, RELIABLE, callback_group=ingest))
        self._subscriptions_made.append(self.create_subscription(
            String, "question", self._on_question, RELIABLE, callback_group=ingest))

    def deactivate_stage(self) -> None:
        for subscription in self._subscriptions_made:
            self.destroy_subscription(subscription)
        self._subscriptions_made.clear()
        if self.worker is not None:
            self.worker.stop()

    def release_stage(self) -> None:
        for publisher in (self._captions, self._answers, self._alerts):
            if publisher is not None:
                self.destroy_lifecycle_publisher(publisher)
        self._captions = self._answers = self._alerts = None
        self.worker = None

    def reconfigure(self, cfg, settings) -> None:
        # Validated here (a ValueError refuses the change); applied on the worker's thread.
        if self.worker is not None:
            self.worker.reconfigure(cfg)

    def take_batch(self, batch: TokenBatch) -> None:
        """Tokens from the subscription or, in one process, straight from the encoder."""
        worker = self.worker
        if worker is None or self.state_label != "active":
            self.dropped_inactive += 1
            return
        self._frame_id = batch.frame_id or self._frame_id
        worker.submit_batch(batch)

    def _on_tokens(self, msg: VisionTokens) -> None:
        try:
            batch = convert.msg_to_batch(msg)
        except ValueError as err:
            if self.worker is not None:
                self.worker.drop_invalid(f"malformed vision_tokens message: {err}")
            else:
                self._warn("invalid", f"dropped a malformed vision_tokens message: {err}")
            return
        self.take_batch(batch)

    def _on_question(self, msg: String) -> None:
        worker = self.worker
        if worker is None:
            self._publish_answer(self._not_active(msg.data))
            return
        worker.ask(msg.data)  # its answer, or refusal, is published on `answers`

    def _on_ask(self, request: Ask.Request, response: Ask.Response) -> Ask.Response:
        worker = self.worker
        if worker is None or self.state_label != "active":
            return convert.fill_ask_response(response, self._not_active(request.question))
        future = worker.ask(request.question, int(request.max_new_tokens) or None)
        timeout = self.settings.ask_timeout_s
        try:
            answer = future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            answer = worker.give_up(request.question, future, f"no answer within ask_timeout_s = {timeout} s")
        return convert.fill_ask_response(response, answer)

    def _on_edit_alerts(self, request: EditAlerts.Request, response: EditAlerts.Response) -> EditAlerts.Response:
        # Through the parameter, so that `language.alerts.rules` stays the one place the rules
        # live (`ros2 param get` shows them) and its check refuses bad ones with the reason.
        rules = [r for r in self.cfg.language.alerts.rules if r not in set(request.remove)]
        rules += [r for r in dict.fromkeys(request.add) if r not in rules]
        try:
            check_rules(rules)
        except ValueError as err:
            response.success, response.error = False, str(err)
        else:
            rules_param = Parameter("language.alerts.rules", Parameter.Type.STRING_ARRAY, rules)
            result = self.set_parameters([rules_param])[0]
            response.success, response.error = result.successful, result.reason
        response.rules = list(self.cfg.language.alerts.rules)
        return response

    def _not_active(self, question: str) -> Answer:
        reason = f"the node is {self.state_label}" + (f" ({self.configure_error})" if self.configure_error else "")
        return Answer(question, "", 0, 0.0, success=False, error=reason)

    def _publish_caption(self, caption: Caption) -> None:
        if self._captions is not None:
            self._captions.publish(convert.caption_to_msg(caption, self._frame_id))

    def _publish_answer(self, answer: Answer) -> None:
        if self._answers is not None:
            self._answers.publish(convert.answer_to_msg(answer, self._frame_id))

    def _publish_alert(self, alert: Alert) -> None:
        if self._alerts is not None:
            self._alerts.publish(convert.alert_to_msg(alert, self._frame_id))

    def figures(self) -> dict[str, Any]:
        if self.worker is None:
            return {}
        return {**self.worker.status(), "frames dropped (inactive)": self.dropped_inactive}

    def health(self, now: dict[str, Any], before: dict[str, Any]) -> tuple[bytes, str]:
        if now.get("frames received", 0) == 0:
            return WARN, "no vision tokens received yet"
        busy, late = grew(now, before, "frames dropped (busy)"), grew(now, before, "frames dropped (late)")
        if busy:
            return WARN, f"slower than the encoder: {busy} frames dropped in the last period"
        if late:
            return WARN, f"{late} frames out of time order dropped in the last period"
        if grew(now, before, "questions rejected"):
            return WARN, "questions were refused in the last period"
        return OK, "ingesting and answering"


def main(args: list[str] | None = None) -> int:
    from streamvlm.ros.spin import run

    return run(lambda: [LlmNode()], args)


if __name__ == "__main__":
    import sys

    sys.exit(main())
