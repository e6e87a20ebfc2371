"""The ViT that `export onnx` and INT8 calibration run: a model's tower, or a random SigLIP one.

Apart from `commands.py` (argument parsing) so that the calibrator, which `export trt`
imports, can load the same tower without importing the command module.
"""

from __future__ import annotations


def load_tower(name: str):
    """(tower, image size, model id, preprocess) for a model name, or a random SigLIP-sized tower."""
    if name.startswith("siglip-"):
        from streamvlm.vision.towers import IMAGE_SIZE, random_siglip, siglip_pixels

        return random_siglip(name.removeprefix("siglip-")), IMAGE_SIZE, name, siglip_pixels
    from streamvlm.config import ModelConfig
    from streamvlm.models import load_model

    model = load_model(ModelConfig(name=name, fallback_to_tiny=False))
    return model.tower, model.image_size, model.name, model.preprocess
