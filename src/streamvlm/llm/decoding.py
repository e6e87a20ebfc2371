"""Choosing the next token (greedy or sampled) and the decode loop shared by both engines.

The logits transforms follow transformers' processors in the order `generate` applies
them, so a sampled answer here means what it means there: repetition penalty (CTRL,
arXiv 1909.05858: divide positive logits of seen tokens by the penalty, multiply
negative ones), then temperature, then top-p (nucleus, arXiv 1904.09751: keep the
smallest set of most likely tokens whose probability reaches top_p, at least one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from streamvlm.fields import check, setting


@dataclass(frozen=True)
class Sampling:
    """`language.sampling.*`: how the next token is chosen."""

    temperature: float = setting(0.0, "sampling temperature (0: greedy)", range=(0.0, 100.0))
    top_p: float = setting(1.0, "nucleus sampling: keep the most likely tokens up to this probability",
                           range=(0.0, 1.0))
    repetition_penalty: float = setting(1.0, "divides the logits of tokens already in the question or answer "
                                        "(1: off)", range=(0.01, 100.0))
    # The generator is seeded per answer, so answers are reproducible.
    seed: int = setting(0, "sampling seed (answers are reproducible)", range=(0, 2**31 - 1))

    def __post_init__(self):
        check(self)


@dataclass
class Generation:
    token_ids: list[int]  # generated tokens, a final stop token included
    first_logits: torch.Tensor  # [V] logits that chose the first token
    stopped: bool  # ended on a stop token (else on the length limit)


class Engine(Protocol):
    def decode_step(self, token: int) -> torch.Tensor:
        """Append one generated token; the next logits [V]."""


def transform_logits(logits: torch.Tensor, seen: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """logits [V] float32 -> the logits sampled from; `seen` [S] ids the penalty applies to."""
    if sampling.repetition_penalty != 1.0 and seen.numel():
        picked = logits[seen]
        penalised = torch.where(picked < 0, picked * sampling.repetition_penalty,
                                picked / sampling.repetition_penalty)
        logits = logits.scatter(0, seen, penalised)
    if sampling.temperature > 0:
        logits = logits / sampling.temperature
    if 0 < sampling.top_p < 1:
        ordered, order = torch.sort(logits, descending=False)
        tail_mass = ordered.softmax(-1).cumsum(-1)
        drop = tail_mass <= 1 - sampling.top_p
        drop[-1] = False  # the most likely token always stays
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return logits


def next_token(logits: torch.Tensor, seen: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """The chosen id; logits [V] stay on their device and only the id comes back."""
    if sampling.temperature <= 0:
        if sampling.repetition_penalty == 1.0:
            return int(torch.argmax(logits))
        return int(torch.argmax(transform_logits(logits, seen, sampling)))
    probs = transform_logits(logits.float(), seen, sampling).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(engine: Engine, logits: torch.Tensor, max_new_tokens: int, stops: frozenset[int],
             sampling: Sampling = Sampling(), prompt_ids: torch.Tensor | None = None) -> Generation:
    """Decode from `logits` (the prompt's last logits [V]).

    The chosen tokens are fed back except the last one, as in HF generate: the cache then
    holds everything up to, not including, the final token. The caller has reserved room
    for `max_new_tokens`; decode steps never evict (an eviction per token would move the
    whole cache per token). The repetition penalty sees `prompt_ids` and the answer so far.
    """
    device = logits.device
    generator = None
    if sampling.temperature > 0:
        generator = torch.Generator(device=device).manual_seed(sampling.seed)
    prompt = prompt_ids.reshape(-1).to(device) if prompt_ids is not None else torch.empty(0, dtype=torch.long)
    seen = torch.empty(0, dtype=torch.long, device=device)
    if sampling.repetition_penalty != 1.0:  # written by index: no growing tensor per step
        seen = torch.empty(prompt.numel() + max_new_tokens, dtype=torch.long, device=device)
        seen[:prompt.numel()] = prompt
    known = prompt.numel()
    first = logits
    tokens: list[int] = []
    for step in range(max_new_tokens):
        token = next_token(logits, seen[:known], sampling, generator)
        tokens.append(token)
        if token in stops or step == max_new_tokens - 1:
            break
        if seen.numel():
            seen[known] = token
            known += 1
        logits = engine.decode_step(token)
    return Generation(tokens, first, bool(tokens) and tokens[-1] in stops)
