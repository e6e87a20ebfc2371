"""Low-rank adapters (LoRA, Hu et al. 2021) on a frozen linear layer, merged away after training."""

from __future__ import annotations

import math

import torch
from torch import nn

from streamvlm.models.eval_model import adapted_linear


class LoRALinear(nn.Module):
    """y = base(x) + scale * B(A(x)); B starts at zero, so training starts from the base model."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        # Drawn on the CPU generator, then moved beside the base layer: the same A on any device.
        bound = 1 / math.sqrt(base.in_features)
        a = torch.empty(rank, base.in_features).uniform_(-bound, bound, generator=generator)
        device = base.weight.device
        self.A = nn.Parameter(a.to(device))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale


def add_lora(layers, targets: tuple[str, ...], rank: int, alpha: float, seed: int) -> list[LoRALinear]:
    """Wrap each layer's linears named in `targets` in place; returns the adapters in layer order."""
    generator = torch.Generator().manual_seed(seed)
    adapters = []
    for layer in layers:
        for name in targets:
            parent, attribute = adapted_linear(layer, name)
            adapter = LoRALinear(getattr(parent, attribute), rank, alpha, generator)
            setattr(parent, attribute, adapter)
            adapters.append(adapter)
    return adapters


def lora_state(layers, targets: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The adapters as `lora.<layer>.<target>.A/B` plus their common `lora.scale`."""
    state, scale = {}, None
    for index, layer in enumerate(layers):
        for name in targets:
            adapter = getattr(*adapted_linear(layer, name))
            state[f"lora.{index}.{name}.A"] = adapter.A.detach().clone()
            state[f"lora.{index}.{name}.B"] = adapter.B.detach().clone()
            scale = adapter.scale
    state["lora.scale"] = torch.tensor(scale)
    return state


@torch.no_grad()
def load_lora(layers, targets: tuple[str, ...], state: dict[str, torch.Tensor]) -> None:
    """Put `lora_state`'s adapters back into the adapters `add_lora` made (the same rank and
    alpha: another scale would change what they compute)."""
    for index, layer in enumerate(layers):
        for name in targets:
            adapter = getattr(*adapted_linear(layer, name))
            if abs(float(state["lora.scale"]) - adapter.scale) > 1e-6:
                raise ValueError(f"the adapters were trained with LoRA scale {float(state['lora.scale'])}, "
                                 f"these settings give {adapter.scale}: use their rank and alpha")
            adapter.A.copy_(state[f"lora.{index}.{name}.A"])
            adapter.B.copy_(state[f"lora.{index}.{name}.B"])
