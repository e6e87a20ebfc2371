"""Qwen2-VL and Qwen2.5-VL (ViT with 2-D RoPE + 2x2 patch merger + Qwen2 with M-RoPE).

Streaming sends each frame as one still image at a fixed square size (`FRAME_SIDE`, or
the model directory's streamvlm.json "image_size"), between <|vision_start|> and
<|vision_end|>, as transformers' Qwen2-VL processor lays out an image in a chat: the ViT
runs per frame (the delta cache and pruner work on its patch grid, `models/qwen_vision.py`),
the merger turns each 2x2 block into one LLM token, and the decoder places the frame's
tokens at M-RoPE positions (time, row, column) from where the frame starts, the text after
it max(rows, cols) later (`llm/kv_cache.frame_layout`), which is `get_rope_index`'s rule.

Video input proper (two frames per temporal patch, and Qwen2.5-VL's temporal positions in
seconds) is not what a live stream sends: a frame cannot wait for the next. The frame's
time can go in a text marker before it (streamvlm.json "frame_marker", as for the
evaluation model).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from streamvlm.models.base import VisionLanguageModel, VisionTower
from streamvlm.models.decoder import MRopeDecoder
from streamvlm.models.llava_onevision import PixelSpec
from streamvlm.models.prompt import PromptFormat
from streamvlm.models.qwen_vision import QwenVisionLayer, StillPatchEmbedding, grid_rotary, window_mask

FAMILIES = ("qwen2_vl", "qwen2_5_vl")

# 392 px = 28 x 28 patches -> 14 x 14 = 196 tokens a frame, LLaVA-OneVision's count.
FRAME_SIDE = 392
_STOP = ("<|im_end|>",)
_VISION_START, _VISION_END = "<|vision_start|>", "<|vision_end|>"


class Qwen2VLAdapter(VisionLanguageModel):
    def __init__(self, model_dir: Path, name: str, dtype: torch.dtype, device: torch.device):
        self._load(model_dir, name, dtype, device, FAMILIES)
        config = self.hf_model.config
        own = _streamvlm_json(model_dir)
        vision = config.vision_config
        self.patch_size, self.merge = vision.patch_size, vision.spatial_merge_size
        side = int(own.get("image_size", FRAME_SIDE))
        if side % (self.patch_size * self.merge):
            raise ValueError(f"{name}: image_size {side} is not a multiple of {self.patch_size * self.merge}")
        self.image_size = side
        video = _VISION_START + "<|video_pad|>" + _VISION_END  # how the chat template writes a video
        stops = tuple(t for t in _STOP if t in self.tokenizer.get_vocab())
        self.prompt = PromptFormat.from_chat_template(
            self.tokenizer, video, stops, own.get("frame_marker", "") + _VISION_START, _VISION_END)
        self._pixels = PixelSpec.from_dir(model_dir, side=side)
        self.tower = self._split_tower()

    def _split_tower(self) -> VisionTower:
        visual = self.hf_model.model.visual
        side = self.image_size // self.patch_size
        cos, sin = grid_rotary(visual.rotary_pos_emb.inv_freq, side, side)
        full = set(getattr(visual, "fullatt_block_indexes", None) or range(len(visual.blocks)))
        windowed = None
        if len(full) < len(visual.blocks):  # Qwen2.5-VL: windows of window_size px, in whole merged tokens
            patches = visual.window_size // self.merge // self.patch_size * self.merge
            windowed = window_mask(side, side, patches)
        layers = tuple(QwenVisionLayer(block, cos, sin, None if i in full else windowed)
                       for i, block in enumerate(visual.blocks))
        return VisionTower(embed=StillPatchEmbedding(visual.patch_embed.proj), layers=layers,
                           feature_layers=(len(layers),), patch_grid=(side, side),
                           pixel_std=self._pixels.camera_std)

    def preprocess(self, frame_rgb: np.ndarray) -> torch.Tensor:
        return self._pixels.apply(frame_rgb).to(self.device, self.dtype)

    def project(self, features: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The merger over each 2x2 block of the raster patch grid: [B, P, C] -> [B, P / 4, D]."""
        merger = self.hf_model.model.visual.merger
        rows, cols = self.tower.patch_grid
        m = self.merge
        x = merger.ln_q(features)
        batch, _, width = x.shape
        blocks = x.view(batch, rows // m, m, cols // m, m, width).permute(0, 1, 3, 2, 4, 5)
        tokens = merger.mlp(blocks.reshape(batch, (rows // m) * (cols // m), m * m * width))
        return tokens, (rows // m, cols // m)

    @property
    def frames_end_embeddings(self) -> None:
        return None  # the question follows the last <|vision_end|> directly

    @cached_property
    def language(self) -> MRopeDecoder:
        return MRopeDecoder(self.decoder)


def _streamvlm_json(model_dir: Path) -> dict:
    # Our own settings for a checkpoint (frame size, time marker); transformers ignores the file.
    path = model_dir / "streamvlm.json"
    return json.loads(path.read_text()) if path.exists() else {}
