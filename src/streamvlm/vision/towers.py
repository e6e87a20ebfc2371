"""SigLIP-architecture towers with random weights, at the sizes of real ones.

No pretrained ViT is reachable offline; compute cost and the cache's mechanics depend on
the architecture and size alone, so benchmarks and tests measure these. `so400m` is
LLaVA-OneVision's tower: SigLIP so400m at 384 px with its last layer dropped (26 layers,
the features come from the last one that runs).
"""

from __future__ import annotations

import numpy as np
import torch

from streamvlm.models.base import VisionTower
from streamvlm.models.llava_onevision import PixelSpec
from streamvlm.models.siglip import SiglipLayer

# name -> (hidden, mlp, layers, heads)
SIZES = {
    "base": (768, 3072, 12, 12),
    "so400m": (1152, 4304, 26, 16),
}
IMAGE_SIZE = 384
PATCH = 14


def random_siglip(size: str, dtype: torch.dtype = torch.float32, seed: int = 0, device: str = "cpu") -> VisionTower:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}; got {size!r}")
    hidden, mlp, layers, heads = SIZES[size]
    torch.manual_seed(seed)
    config = SiglipVisionConfig(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                                num_attention_heads=heads, image_size=IMAGE_SIZE, patch_size=PATCH)
    model = SiglipVisionModel(config).to(device, dtype).eval()
    vision = getattr(model, "vision_model", model)  # transformers 4 nests it, 5 does not
    side = IMAGE_SIZE // PATCH
    return VisionTower(vision.embeddings, tuple(SiglipLayer(layer) for layer in vision.encoder.layers), (layers,),
                       (side, side))


def siglip_pixels(frame_rgb: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> [1, 3, 384, 384] normalized as SigLIP's processor does (mean 0.5, std 0.5)."""
    return _SIGLIP_PIXELS.apply(frame_rgb).to(dtype)


# The same resize and normalization the model adapters use, at SigLIP's settings.
_SIGLIP_PIXELS = PixelSpec(IMAGE_SIZE, IMAGE_SIZE, [0.5] * 3, [0.5] * 3, 1 / 255)
