"""LLaVA-OneVision (SigLIP ViT + 2-layer MLP projector + 2x2 bilinear pooling + Qwen2).

Video frames follow transformers' `LlavaOnevisionModel.get_video_features`: the tower's
hidden state at `vision_feature_layer` (not post-layernormed), the projector, bilinear
pooling to half the patch grid (27x27 -> 14x14 = 196 tokens at 384 px), and one
`image_newline` embedding after the last frame of a video.
"""

from __future__ import annotations

import json
import math
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import LlavaOnevisionForConditionalGeneration

from streamvlm.models.base import VisionLanguageModel, VisionTower
from streamvlm.models.decoder import LlamaStyleDecoder
from streamvlm.models.prompt import PromptFormat
from streamvlm.models.siglip import SiglipLayer

_CHATML_STOP = ("<|im_end|>",)


class LlavaOnevisionAdapter(VisionLanguageModel):
    def __init__(self, model_dir: Path, name: str, dtype: torch.dtype, device: torch.device):
        self._load(model_dir, name, dtype, device, ("llava_onevision",), LlavaOnevisionForConditionalGeneration)
        _attach_chat_template(self.tokenizer, model_dir)
        config = self.hf_model.config
        video_token = self.tokenizer.convert_ids_to_tokens(config.video_token_index)
        stops = tuple(t for t in _CHATML_STOP if t in self.tokenizer.get_vocab())
        self.prompt = PromptFormat.from_chat_template(self.tokenizer, video_token, stops, _frame_marker(model_dir))
        self._pixels = PixelSpec.from_dir(model_dir)
        self.image_size = self.hf_model.config.vision_config.image_size
        self.tower = self._split_tower()

    def _split_tower(self) -> VisionTower:
        tower = self.hf_model.model.vision_tower
        vision = getattr(tower, "vision_model", tower)  # transformers 4 nests it, 5 does not
        layers = tuple(SiglipLayer(layer) for layer in vision.encoder.layers)
        config = self.hf_model.config
        if config.vision_feature_select_strategy != "full":
            raise NotImplementedError("only vision_feature_select_strategy='full' (SigLIP has no CLS token)")
        selected = config.vision_feature_layer
        selected = [selected] if isinstance(selected, int) else list(selected)
        # hidden_states has len(layers) + 1 entries: the embeddings, then each layer's output.
        feature_layers = tuple(i if i >= 0 else len(layers) + 1 + i for i in selected)
        side = config.vision_config.image_size // config.vision_config.patch_size
        return VisionTower(
            embed=vision.embeddings,
            layers=layers[: max(feature_layers)],
            feature_layers=feature_layers,
            patch_grid=(side, side),
            pixel_std=self._pixels.camera_std,
        )

    def preprocess(self, frame_rgb: np.ndarray) -> torch.Tensor:
        return self._pixels.apply(frame_rgb).to(self.device, self.dtype)

    def project(self, features: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        model = self.hf_model.model
        tokens = model.multi_modal_projector(features)  # [B, P, D]
        pooled = model.apply_pooling(tokens)  # [B, N, D]
        rows, cols = self.tower.patch_grid
        return pooled, (math.ceil(rows / 2), math.ceil(cols / 2))

    @property
    def frames_end_embeddings(self) -> torch.Tensor:
        return self.hf_model.model.image_newline[None]  # [1, D]

    @cached_property
    def language(self) -> LlamaStyleDecoder:
        return LlamaStyleDecoder(self.decoder)  # LLaVA-OneVision's decoder is Qwen2


def _frame_marker(model_dir: Path) -> str:
    # Models trained with a time marker before each frame (the evaluation model) say so in
    # streamvlm.json; transformers ignores the file.
    path = model_dir / "streamvlm.json"
    return json.loads(path.read_text()).get("frame_marker", "") if path.exists() else ""


def _attach_chat_template(tokenizer, model_dir: Path) -> None:
    # The LLaVA-OneVision checkpoints keep the chat template with the processor
    # (chat_template.json or .jinja), not always with the tokenizer.
    if tokenizer.chat_template:
        return
    jinja = model_dir / "chat_template.jinja"
    as_json = model_dir / "chat_template.json"
    if jinja.exists():
        tokenizer.chat_template = jinja.read_text()
    elif as_json.exists():
        tokenizer.chat_template = json.loads(as_json.read_text())["chat_template"]
    else:
        raise FileNotFoundError(f"no chat template in {model_dir}")


def _processor_config(model_dir: Path) -> dict:
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        path = model_dir / name
        if path.exists():
            return json.loads(path.read_text())
    raise FileNotFoundError(f"no preprocessor config in {model_dir}")


class PixelSpec:
    """Resize (bicubic, as the model's processors do) + rescale + normalize, from the saved config."""

    def __init__(self, height: int, width: int, mean, std, rescale: float):
        self.size = (width, height)
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)
        self.rescale = rescale

    @classmethod
    def from_dir(cls, model_dir: Path, side: int | None = None) -> "PixelSpec":
        """From the saved processor config; `side`: a square of this size instead of the
        config's (families whose processors resize by pixel count or longest edge)."""
        cfg = _processor_config(model_dir)
        size = cfg.get("size", {"height": 384, "width": 384})
        height = side or size.get("height", size.get("shortest_edge"))
        width = side or size.get("width", size.get("shortest_edge"))
        mean = cfg.get("image_mean", [0.5, 0.5, 0.5]) if cfg.get("do_normalize", True) else [0.0] * 3
        std = cfg.get("image_std", [0.5, 0.5, 0.5]) if cfg.get("do_normalize", True) else [1.0] * 3
        rescale = cfg.get("rescale_factor", 1 / 255) if cfg.get("do_rescale", True) else 1.0
        return cls(height, width, mean, std, rescale)

    @property
    def camera_std(self) -> tuple[float, float, float]:
        """Per channel, how much a change of 1 in the normalized input is on 0..1 camera pixels."""
        return tuple(float(s) / (self.rescale * 255) for s in self.std.flatten())

    def apply(self, frame_rgb: np.ndarray) -> torch.Tensor:
        return self.normalize(torch.from_numpy(self.resize(frame_rgb))[None])  # [1, 3, H, W]

    def resize(self, frame_rgb: np.ndarray) -> np.ndarray:
        """The resized frame, still uint8 [3, H, W] (a quarter of the float's memory)."""
        image = Image.fromarray(frame_rgb)
        if image.size != self.size:
            image = image.resize(self.size, Image.Resampling.BICUBIC)
        return np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))

    def normalize(self, chw: torch.Tensor) -> torch.Tensor:
        """uint8 [..., 3, H, W] from `resize` -> the model's float32 input."""
        mean, std = torch.from_numpy(self.mean), torch.from_numpy(self.std)
        return (chw.to(torch.float32) * self.rescale - mean) / std
