"""`edge`: LLaVA-OneVision at the default model's sizes, with random weights.

The default model (llava-onevision-qwen2-0.5b-ov) is what a Jetson Orin runs; where its
weights cannot be reached, the end-to-end benchmark still needs its cost. This is the same
architecture at the same sizes (SigLIP so400m at 384 px, 26 layers; a Qwen2-0.5B-sized
decoder: 24 layers, 896 wide, 14 query and 2 KV heads, a 152k vocabulary), saved once in
the cache like a real checkpoint so it loads through the normal path. Only the tokenizer
is the tiny model's (a 512-piece BPE): token ids index the full-size embedding table, so
prefill, decode and the LM head cost what the real ones do. Its words are noise.
"""

from __future__ import annotations

from pathlib import Path

import torch

from streamvlm.models.tiny import build_once, cache_root, write_random_llava
from streamvlm.vision.towers import SIZES

EDGE = "edge"
EDGE_VERSION = "1"
# Qwen2-0.5B's published config (hidden, intermediate, layers, heads, KV heads, vocabulary).
QWEN2_05B = (896, 4864, 24, 14, 2, 151936)


def ensure_edge(root: Path | None = None) -> Path:
    """The edge model's directory, built on first use (about 1.7 GB in bfloat16)."""
    return build_once((root or cache_root()) / "models" / f"edge-v{EDGE_VERSION}", write_edge)


def write_edge(out: Path) -> None:
    hidden, mlp, layers, heads = SIZES["so400m"]
    width, inner, depth, q_heads, kv_heads, vocab = QWEN2_05B
    write_random_llava(
        out,
        vision=dict(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads),
        text=dict(hidden_size=width, intermediate_size=inner, num_hidden_layers=depth, num_attention_heads=q_heads,
                  num_key_value_heads=kv_heads, tie_word_embeddings=True),
        vocab_size=vocab, dtype=torch.bfloat16)
