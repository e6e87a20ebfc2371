"""Tiny random models of the other families (`tiny-smolvlm`, ...), like `tiny` for LLaVA-OneVision.

Each has its family's real architecture and input geometry at a few hundred thousand
parameters, saved with `save_pretrained` so that it loads through the adapter exactly as a
real checkpoint does. Random weights: real numerics, meaningless answers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from streamvlm.models.tiny import SEED, build_once, build_tokenizer, cache_root

# Bumped when a tiny family model changes, so stale copies in the cache are rebuilt.
FAMILIES_VERSION = "1"

_SMOLVLM_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>",
                    "<fake_token_around_image>", "<global-img>", "<image>", "<video>"]


def write_tiny_smolvlm(out: Path) -> None:
    """SmolVLM2 at SmolVLM2-256M's geometry (512 px frames, 16 px patches, pixel shuffle by 4:
    64 tokens per frame) with a 2-layer SigLIP and a 2-layer Llama."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    from streamvlm.models.smolvlm import chat_template

    tokenizer = build_tokenizer(_SMOLVLM_SPECIAL, eos="<end_of_utterance>", template=chat_template())
    config = SmolVLMConfig(
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=4, tie_word_embeddings=False,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=512, patch_size=16),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=8192,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id),
    )
    torch.manual_seed(SEED)
    SmolVLMForConditionalGeneration(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    SmolVLMImageProcessorPil(image_mean=[0.5] * 3, image_std=[0.5] * 3, do_image_splitting=False,
                             max_image_size={"longest_edge": 512}).save_pretrained(out)


_QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]

# Qwen2-VL's chat template in short: ChatML, a default system turn, and each image or
# video item as <|vision_start|><|image_pad|> (or <|video_pad|>)<|vision_end|>.
_QWEN_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _write_tiny_qwen(out: Path, version: str) -> None:
    """Qwen2-VL (version "2") or Qwen2.5-VL ("2.5"): a 2-layer (2.5: 4-layer, windowed) ViT
    with 14 px patches and the 2x2 merger, and a 2-layer Qwen2 with M-RoPE, streaming
    112 px frames (8x8 patches -> 4x4 = 16 tokens; 2.5: two 4x4-patch windows a side)."""
    import json

    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = build_tokenizer(_QWEN_SPECIAL, eos="<|im_end|>", template=_QWEN_TEMPLATE)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"))}
    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
                bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    common = dict(patch_size=14, temporal_patch_size=2, spatial_merge_size=2, in_channels=3, num_heads=2)
    if version == "2":
        vision = dict(depth=2, embed_dim=32, mlp_ratio=2, hidden_size=64, **common)
        cls, config = Qwen2VLForConditionalGeneration, Qwen2VLConfig(vision_config=vision, text_config=text, **ids)
    else:
        vision = dict(depth=4, hidden_size=32, intermediate_size=64, out_hidden_size=64, hidden_act="silu",
                      window_size=56, fullatt_block_indexes=[1, 3], tokens_per_second=2, **common)
        cls, config = Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig(vision_config=vision, text_config=text,
                                                                           **ids)
    config.tie_word_embeddings = False
    torch.manual_seed(SEED)
    cls(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    Qwen2VLImageProcessorPil().save_pretrained(out)  # CLIP's mean and std, as the checkpoints
    (out / "streamvlm.json").write_text(json.dumps({"image_size": 112}) + "\n")


def write_tiny_qwen2vl(out: Path) -> None:
    _write_tiny_qwen(out, "2")


def write_tiny_qwen25vl(out: Path) -> None:
    _write_tiny_qwen(out, "2.5")


WRITERS = {"tiny-smolvlm": write_tiny_smolvlm, "tiny-qwen2vl": write_tiny_qwen2vl,
           "tiny-qwen25vl": write_tiny_qwen25vl}


def ensure_tiny_family(name: str, root: Path | None = None) -> Path:
    """The directory of the tiny model `name` (a key of WRITERS), built on first use."""
    return build_once((root or cache_root()) / "models" / f"{name}-v{FAMILIES_VERSION}", WRITERS[name])
