"""A tiny random LLaVA-OneVision for tests and CI, written once to a directory.

It has the real architecture and the real input geometry (384 px frames, 14 px patches,
196 tokens per frame after pooling) at well under a million parameters, and it is saved
with `save_pretrained` so that it loads through exactly the code path of a real model.
The weights are random: its captions and answers are noise, its numerics are real.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

# Bumped when the tiny model changes, so stale copies in the cache are rebuilt.
TINY_VERSION = "2"
SEED = 0

_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

# ChatML, with the frames of a turn before its text, as LLaVA-OneVision lays out a chat.
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}"
    "{% if message['role'] == 'assistant' %}{{ '\\n' }}{% else %} {% endif %}"
    "{% for item in message['content'] if item['type'] == 'video' %}<video>{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}"
    "{% if message['role'] == 'user' %}{{ '\\n' }}{% endif %}{{ item['text'] }}"
    "{% endfor %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Enough text for byte-level BPE to learn common English pieces; content is irrelevant.
_CORPUS = [
    "a person walks across the street while a car waits at the crossing",
    "what is happening in the video right now? describe the scene in one short sentence",
    "people are walking in a hall, two of them stop and talk near the door",
    "the red box is on the table, a robot arm picks it up and moves it to the left",
    "where did you last see the blue cup? it was on the shelf near the window",
    "how many objects appeared since the start? three objects appeared and one left",
    "the camera pans slowly to the right, the background is a brick wall",
    "a green circle appears in the top left corner and moves down",
    "system user assistant: answer the question about the video",
]


def cache_root() -> Path:
    return Path(os.environ.get("STREAMVLM_HOME", Path.home() / ".cache" / "streamvlm"))


def ensure_tiny(root: Path | None = None) -> Path:
    """The tiny model's directory, built on first use."""
    return build_once((root or cache_root()) / "models" / f"tiny-v{TINY_VERSION}", write_tiny)


def build_once(target: Path, write) -> Path:
    """`target` (a model directory), made by `write(staging_dir)` on first use: written
    aside and renamed into place, so parallel runs are safe and a failed one leaves nothing."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(staging)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").exists():  # lost a race is fine; anything else is not
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write_tiny(out: Path) -> None:
    write_random_llava(out, vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                        num_attention_heads=2),
                       text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, tie_word_embeddings=False))


def write_random_llava(out: Path, vision: dict, text: dict, vocab_size: int | None = None,
                       dtype: torch.dtype | None = None) -> None:
    """A LLaVA-OneVision with random weights (seed SEED) at the given SigLIP and Qwen2 sizes, 384 px
    frames in 14 px patches, and the tiny tokenizer (`vocab_size`: a larger embedding table than it
    uses), saved with its tokenizer and image processor as a real checkpoint is."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tokenizer = build_tokenizer()
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**vision, image_size=384, patch_size=14),
        text_config=Qwen2Config(
            **text, vocab_size=vocab_size or len(tokenizer), max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1, vision_feature_select_strategy="full",
    )
    torch.manual_seed(SEED)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    LlavaOnevisionImageProcessorPil(
        size={"height": 384, "width": 384}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(out)


def build_tokenizer(special: list[str] = _SPECIAL_TOKENS, eos: str = "<|im_end|>", template: str = _CHAT_TEMPLATE):
    """A byte-level BPE tokenizer trained on the corpus above; `special[0]` is the padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=special, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos, pad_token=special[0])
    # Registered as special so that "<video>" is never split into pieces.
    tokenizer.add_special_tokens({"additional_special_tokens": special[1:]})
    tokenizer.chat_template = template
    return tokenizer
