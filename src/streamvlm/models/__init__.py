"""Loading vision-language models by HF id, local directory, or `tiny`."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import weakref
from pathlib import Path
from urllib.parse import urlparse

import torch

from streamvlm.models.base import ModelConfig, VisionLanguageModel, VisionTower
from streamvlm.models.edge import EDGE, ensure_edge
from streamvlm.models.eval_model import EVAL, ensure_eval
from streamvlm.models.prompt import PromptFormat
from streamvlm.models.tiny import ensure_tiny
from streamvlm.models.tiny_families import WRITERS as TINY_FAMILIES
from streamvlm.models.tiny_families import ensure_tiny_family

__all__ = ["ModelUnavailable", "PromptFormat", "VisionLanguageModel", "VisionTower", "load_model", "load_shared",
           "resolve"]

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Files a vision-language checkpoint needs; skips other formats (e.g. .bin next to .safetensors).
_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "tokenizer*"]


class ModelUnavailable(RuntimeError):
    """The named model cannot be found locally nor downloaded."""


# Families transformers has that the streaming engine cannot run yet, and why.
_REFUSED = {
    "qwen3_vl": "Qwen3-VL adds the ViT's intermediate features to the first decoder layers' hidden states "
                "(DeepStack) and interleaves its M-RoPE axes; the streaming engine runs neither yet. Use Qwen2.5-VL",
    "qwen3_vl_moe": "Qwen3-VL-MoE: as Qwen3-VL (DeepStack, interleaved M-RoPE), and mixture-of-experts layers",
}


def _adapters():
    # Imported here so that loading one family never imports the others' code.
    from streamvlm.models.llava_onevision import LlavaOnevisionAdapter
    from streamvlm.models.qwen2_vl import FAMILIES as QWEN2_VL
    from streamvlm.models.qwen2_vl import Qwen2VLAdapter
    from streamvlm.models.smolvlm import FAMILIES as SMOLVLM
    from streamvlm.models.smolvlm import SmolVLMAdapter

    return {"llava_onevision": LlavaOnevisionAdapter, **{kind: SmolVLMAdapter for kind in SMOLVLM},
            **{kind: Qwen2VLAdapter for kind in QWEN2_VL}}


def resolve(name: str) -> Path:
    """A local directory holding the model `name`: 'tiny' (or a tiny family model such as
    'tiny-smolvlm'), 'edge', 'eval', a directory, or a HF id."""
    if name == "tiny":
        return ensure_tiny()
    if name in TINY_FAMILIES:
        return ensure_tiny_family(name)
    if name == EDGE:
        return ensure_edge()
    if name == EVAL:
        try:
            return ensure_eval()
        except FileNotFoundError as err:  # the base LM's package or the trained parts are missing
            raise ModelUnavailable(str(err)) from None
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or name.startswith("."):
        raise ModelUnavailable(f"model directory {name} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=_WEIGHT_PATTERNS, local_files_only=True))
    except Exception:
        pass  # not cached: download below
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ModelUnavailable(f"{name} is not in the local HF cache and HF_HUB_OFFLINE is set")
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError as err:
        # Checked first because the hub client retries for about 30 s before giving up.
        raise ModelUnavailable(f"{name} is not cached and {host} is unreachable ({err})") from None
    try:
        return Path(snapshot_download(name, allow_patterns=_WEIGHT_PATTERNS))
    except Exception as err:
        raise ModelUnavailable(f"could not download {name}: {err}") from None


def load_model(cfg: ModelConfig) -> VisionLanguageModel:
    """Load `cfg.name`; when that fails and `cfg.fallback_to_tiny` is set, say so once and load tiny."""
    try:
        model_dir = resolve(cfg.name)
        name = cfg.name
    except ModelUnavailable as err:
        if not cfg.fallback_to_tiny or cfg.name == "tiny":
            raise
        log.warning("model %s unavailable (%s); using the tiny random model instead", cfg.name, err)
        model_dir, name = ensure_tiny(), "tiny"
    try:
        model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        raise ModelUnavailable(f"{name}: cannot read {model_dir / 'config.json'}: {err}") from None
    adapters = _adapters()
    if model_type in _REFUSED:
        raise ModelUnavailable(f"{name}: {model_type} is not supported: {_REFUSED[model_type]}")
    if model_type not in adapters:
        raise ModelUnavailable(f"{name}: model type {model_type!r} is not supported; known: {sorted(adapters)}")
    if cfg.dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {cfg.dtype!r}")
    try:
        return adapters[model_type](model_dir, name, _DTYPES[cfg.dtype], torch.device(cfg.device))
    except ModelUnavailable:
        raise
    except Exception as err:  # truncated or foreign weights, a config that does not fit them...
        raise ModelUnavailable(f"{name}: loading {model_dir} failed: {type(err).__name__}: {err}") from err


_shared: "weakref.WeakValueDictionary[ModelConfig, VisionLanguageModel]" = weakref.WeakValueDictionary()
_shared_lock = threading.Lock()


def load_shared(cfg: ModelConfig) -> VisionLanguageModel:
    """`load_model`, but one instance per settings in a process while anyone holds it: the
    encoder and LLM nodes composed in one process share their weights, and the memory is
    freed when the last holder lets go."""
    with _shared_lock:
        model = _shared.get(cfg)
        if model is None:
            model = load_model(cfg)
            _shared[cfg] = model
        return model
