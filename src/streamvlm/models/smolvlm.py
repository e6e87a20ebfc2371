"""SmolVLM / SmolVLM2 and Idefics3 (SigLIP ViT + pixel-shuffle connector + Llama decoder).

Streaming runs each frame whole at the tower's own square size, with image splitting off
(as SmolVLM2's video processor does for every video frame): frames are squashed to
`image_size` x `image_size`, the ViT's last layer is post-layernormed, the connector folds
each s x s block of patches into one token (pixel shuffle) and projects it, which gives
(S / p / s)^2 tokens per frame (64 for the 256M/500M checkpoints, 81 for 2.2B).

The stream's text follows SmolVLM2's video prompt (transformers' SmolVLMProcessor): each
frame is "\\nFrame from MM:SS:<fake_token_around_image><global-img>", its tokens, then
"<fake_token_around_image>"; the frames end with a blank line before the question. The
processor's opening sentence ("You are provided the following series of N frames from a
H:MM:SS video.") is left out: a live stream knows neither N nor its length up front.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streamvlm.models.base import VisionLanguageModel, VisionTower
from streamvlm.models.decoder import LlamaStyleDecoder
from streamvlm.models.llava_onevision import PixelSpec
from streamvlm.models.prompt import PromptFormat
from streamvlm.models.siglip import SiglipLayer

FAMILIES = ("smolvlm", "idefics3")

_STOP = ("<end_of_utterance>",)
_IMAGE_OPEN = "<fake_token_around_image><global-img>"
_IMAGE_CLOSE = "<fake_token_around_image>"
FRAME_MARKER = "\nFrame from {mm}:{ss}:" + _IMAGE_OPEN
FRAMES_END = "\n\n"


def chat_template() -> str:
    """transformers' own SmolVLM template with a video branch; the checkpoints' template has
    none (the processor swaps this one in when a video is given)."""
    from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

    return DEFAULT_CHAT_TEMPLATE


class FullFrameEmbeddings(nn.Module):
    """The SmolVLM/Idefics3 patch embeddings for a frame at exactly the tower's size.

    Their `forward` takes a patch mask and looks position ids up by bucketing fractional
    patch coordinates (NaViT-style, for frames of any size); for a whole square frame those
    ids are 0..P-1 in order, so the table is added as it is, which also exports to ONNX."""

    def __init__(self, embeddings: nn.Module):
        super().__init__()
        self.patch_embedding = embeddings.patch_embedding
        self.position_embedding = embeddings.position_embedding

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, P, C]."""
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        return patches + self.position_embedding.weight[None]


class SmolVLMAdapter(VisionLanguageModel):
    def __init__(self, model_dir: Path, name: str, dtype: torch.dtype, device: torch.device):
        self._load(model_dir, name, dtype, device, FAMILIES)
        config = self.hf_model.config
        self.prompt = PromptFormat.from_chat_template(
            self.tokenizer, "<video>", _STOP, FRAME_MARKER, _IMAGE_CLOSE, template=chat_template())
        vision = config.vision_config
        self.image_size, self.patch_size, self.scale = vision.image_size, vision.patch_size, config.scale_factor
        self._pixels = PixelSpec.from_dir(model_dir, side=self.image_size)
        self.tower = self._split_tower()

    def _split_tower(self) -> VisionTower:
        vision = self.hf_model.model.vision_model
        layers = tuple(SiglipLayer(layer) for layer in vision.encoder.layers)
        side = self.image_size // self.patch_size
        if side % self.scale:
            raise ValueError(f"{self.name}: a {side}x{side} patch grid cannot be pixel-shuffled by {self.scale}")
        # The connector reads the last layer's output (post-layernormed in `project`).
        return VisionTower(embed=FullFrameEmbeddings(vision.embeddings), layers=layers,
                           feature_layers=(len(layers),), patch_grid=(side, side),
                           pixel_std=self._pixels.camera_std)

    def preprocess(self, frame_rgb: np.ndarray) -> torch.Tensor:
        # SmolVLM's processors resize twice (longest edge, then the square); one bicubic resize
        # to the square differs from them only in resampling detail.
        return self._pixels.apply(frame_rgb).to(self.device, self.dtype)

    def project(self, features: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        model = self.hf_model.model
        tokens = model.connector(model.vision_model.post_layernorm(features))  # [B, P / s^2, D]
        side = self.tower.patch_grid[0] // self.scale
        return tokens, (side, side)

    @cached_property
    def frames_end_embeddings(self) -> torch.Tensor:
        with torch.inference_mode():
            return self.embed_tokens(self.tokenize(FRAMES_END))[0]  # [n, D]

    @property
    def decoder(self):
        return self.hf_model.model.text_model

    @cached_property
    def language(self) -> LlamaStyleDecoder:
        return LlamaStyleDecoder(self.decoder)  # SmolVLM's decoder is Llama (SmolLM2)

