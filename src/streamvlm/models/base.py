"""What the stages need from a vision-language model, independent of its family.

One adapter per family (LLaVA-OneVision now; Qwen2-VL and SmolVLM later) turns a
transformers model into these pieces, so the stages never touch family-specific code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from streamvlm.fields import check, setting
from streamvlm.models.decoder import LanguageDecoder
from streamvlm.models.prompt import PromptFormat
from streamvlm.models.siglip import SiglipLayer

DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"


@dataclass(frozen=True)
class ModelConfig:
    """`model.*`: which weights to load and how to run them. Fixed while running."""

    name: str = setting(DEFAULT_MODEL, "HF model id, local directory, 'eval', or a random test model ('tiny', "
                                       "'tiny-smolvlm', 'tiny-qwen2vl', 'tiny-qwen25vl')", read_only=True)
    dtype: str = setting("float32", "weights and activations", choices=("float32", "bfloat16", "float16"),
                         read_only=True)
    device: str = setting("cpu", "torch device: cpu, cuda, cuda:1...", read_only=True)
    fallback_to_tiny: bool = setting(True, "use the tiny random model when `name` cannot be loaded", read_only=True)

    def __post_init__(self):
        check(self)


@dataclass(frozen=True)
class VisionTower:
    """A ViT split so that later stages (delta cache, backends) can run parts of it.

    hidden_states[0] = embed(pixels); hidden_states[i] = layers[i-1](hidden_states[i-1]);
    the frame's features are `hidden_states[feature_layers]`, concatenated on channels.
    """

    embed: nn.Module  # pixels [B, 3, H, W] -> [B, P, C]
    layers: tuple[SiglipLayer, ...]  # each [B, P, C] -> [B, P, C]: the layer's pieces (models.siglip)
    feature_layers: tuple[int, ...]  # non-negative indices into hidden_states
    patch_grid: tuple[int, int]  # (rows, cols) of patches, P = rows * cols
    # Per channel, what a change of 1 in the tower's normalized input is on 0..1 camera
    # pixels (the normalization's std over the rescale: SigLIP's 0.5; CLIP's, Qwen2-VL's,
    # about 0.27): the delta cache's threshold is in camera pixels.
    pixel_std: tuple[float, float, float] = (0.5, 0.5, 0.5)


class VisionLanguageModel(ABC):
    """The pieces of one loaded model, in the order a frame and a question flow through them."""

    name: str
    dtype: torch.dtype
    device: torch.device
    tower: VisionTower
    image_size: int  # side of the square frame `preprocess` makes and the tower takes, pixels
    tokenizer: object  # a transformers tokenizer
    prompt: PromptFormat
    hf_model: nn.Module  # the whole transformers model, used as the reference in tests

    @abstractmethod
    def preprocess(self, frame_rgb: np.ndarray) -> torch.Tensor:
        """uint8 RGB [H, W, 3] -> normalized pixels [1, 3, S, S] on the model's device and dtype."""

    @abstractmethod
    def project(self, features: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """ViT features [B, P, C] -> LLM tokens [B, N, D] (projector + pooling) and their grid."""

    @property
    @abstractmethod
    def frames_end_embeddings(self) -> torch.Tensor | None:
        """Embeddings [n, D] that close a run of video frames before the question
        (LLaVA-OneVision's newline embedding, SmolVLM's "\n\n"), or None."""

    @property
    def decoder(self) -> nn.Module:
        """The LLM without its head: inputs_embeds [B, T, D] -> hidden states, with a KV cache
        (where transformers' vision-language models keep it, unless the family says otherwise)."""
        return self.hf_model.model.language_model

    @property
    def lm_head(self) -> nn.Module:
        """Hidden states [B, T, D] -> logits [B, T, V]."""
        return self.hf_model.lm_head

    @property
    @abstractmethod
    def language(self) -> LanguageDecoder:
        """The decoder's pieces as the streaming engine runs them (`models.decoder`), built by
        the family's adapter, which refuses a decoder it cannot run."""

    def _load(self, model_dir, name: str, dtype: torch.dtype, device: torch.device, families: tuple[str, ...],
              model_class=None) -> None:
        """Load the transformers model (`model_class`, default the auto class) and its tokenizer,
        refusing a checkpoint of another family."""
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        self.name, self.dtype, self.device = name, dtype, device
        loader = model_class or AutoModelForImageTextToText
        self.hf_model = loader.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").to(device).eval()
        kind = self.hf_model.config.model_type
        if kind not in families:
            raise ValueError(f"{name}: expected one of {families}, got {kind!r}")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] -> embeddings [B, T, D]."""
        return self.language.embed(token_ids.to(self.device))

    def tokenize(self, text: str) -> torch.Tensor:
        """Text -> token ids [1, T] (no special tokens added; the prompt format holds them)."""
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        return ids.to(self.device)

    @property
    def stop_token_ids(self) -> frozenset[int]:
        return self.prompt.stop_token_ids
