"""Query-agnostic pruning of a frame's visual tokens before they reach the LLM.

Runs after the projector and pooling, on the frame's tokens [N, D] in the LLM's embedding
space, and returns the indices to keep in ascending (original) order, so that the kept
tokens keep their grid positions (`TokenBatch.positions`). LLaVA-OneVision's LLM has 1-D
RoPE and sees a frame's tokens at consecutive positions whether or not some were dropped;
where a token sat in the frame is carried by its features (the ViT's position embeddings)
and by `positions`, which M-RoPE models (Qwen2-VL) will turn into (t, row, col) ids.

Modes:
- `stc`: STC-Pruner (STC, github.com/lern-to-write/STC, model/prune.py), per frame. A
  token's redundancy is its similarity to two anchors, the mean of all frames seen so far
  (temporal) and the current frame's mean (spatial): a multi-scale Gaussian kernel over
  L2-normalized features restricted to the lowest-variance half of the channels. The
  `keep_tokens` least redundant are kept. The temporal anchor is a running mean over the
  whole stream, so on an endless stream each new frame weighs ever less in it.
- `adaptive` (ours): the temporal anchor of a grid cell is the token last *sent* from that
  cell, which is what the LLM last saw there. A cell is sent when its token moved away from
  that anchor by more than `novelty` (cosine distance), and in any case once its anchor is
  older than `refresh_s`, a few cells per frame, so the LLM's window always holds a recent
  view of the whole frame (and an LLM restarted mid-stream has it back within refresh_s).
  The anchor's age is bounded by refresh_s, so it stays meaningful however long the stream.
  A frame sends between `min_tokens` and `keep_tokens`, the budget `stc` always spends:
  almost nothing when nothing changed, everything that changed when something appears,
  never more than stc would send (issue: a static camera must not cost more than STC).
- `off`: every token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from streamvlm.fields import check, setting

MODES = ("adaptive", "stc", "off")
STC_KERNEL_WIDTHS = tuple(2.0 ** k for k in range(-3, 2))  # STC's alphas: 1/8 .. 2


@dataclass(frozen=True)
class PruneSettings:
    """`vision.prune.*`: which of a frame's tokens go to the LLM."""

    # Default chosen by `bench qa` (docs/performance/sweeps.md): stc keeping half of a frame's
    # tokens retained 0.98 of the reference's accuracy; adaptive retained 0.89-0.91 at every
    # novelty tried, under the 0.97 a default must keep.
    mode: str = setting("stc", "drop redundant visual tokens before the LLM: adaptive (ours), stc "
                        "(STC-Pruner) or off", choices=MODES)
    keep_tokens: int = setting(98, "tokens a frame sends: stc always this many, adaptive at most this many (half "
                               "of LLaVA-OneVision's 196, the share measured; STC's paper keeps 60)",
                               range=(1, 1 << 20))
    min_tokens: int = setting(4, "adaptive mode: fewest tokens a frame sends", range=(1, 1 << 20))
    novelty: float = setting(0.02, "adaptive mode: a token is sent when it moved this far (cosine distance) from "
                             "the last one sent from its grid cell", range=(0.0, 2.0))
    refresh_s: float = setting(12.0, "adaptive mode: every grid cell is sent again at least this often, so the "
                               "LLM's vision window keeps a whole view (keep it below language.cache.vision_window_s;"
                               " 0: never)", range=(0.0, 86400.0))

    def __post_init__(self):
        check(self)
        if self.keep_tokens < self.min_tokens:
            raise ValueError(f"prune min_tokens ({self.min_tokens}) must not exceed keep_tokens ({self.keep_tokens})")


@dataclass
class Selection:
    keep: torch.Tensor  # [K] int64, ascending indices into the frame's tokens
    novelty: float  # share of the frame's tokens that changed (1.0 for a first frame)


class TokenPruner:
    """Chooses, frame by frame, which tokens go to the LLM. Keeps per-stream state."""

    def __init__(self, settings: PruneSettings):
        self.settings = settings
        self.reset()

    def reset(self) -> None:
        """Forget the stream (a new camera, a time jump): the next frame is a first frame."""
        self._mean_sum: torch.Tensor | None = None  # stc: sum of frame means, full channels
        self._frames = 0
        self._anchor: torch.Tensor | None = None  # adaptive: [N, D] token last sent from each cell
        self._sent_s: torch.Tensor | None = None  # adaptive: [N] when it was sent (-inf: never)
        self._last_s: float | None = None

    @torch.inference_mode()
    def select(self, tokens: torch.Tensor, stamp_ns: int) -> Selection:
        """tokens [N, D] of one frame (stamps ascending) -> the tokens to keep."""
        count = tokens.shape[0]
        if self.settings.mode == "off":
            return Selection(torch.arange(count, device=tokens.device), 1.0)
        if self.settings.mode == "stc":
            return self._stc(tokens)
        return self._adaptive(tokens, stamp_ns / 1e9)

    def _stc(self, tokens: torch.Tensor) -> Selection:
        count = tokens.shape[0]
        x = tokens.float()
        # The temporal anchor is kept over all channels: STC averages chunk means taken over
        # each chunk's own channel choice, which mixes different channels once the choice changes.
        frame_mean = x.mean(dim=0)
        self._mean_sum = frame_mean if self._mean_sum is None else self._mean_sum + frame_mean
        self._frames += 1
        channels = low_variance_channels(x)
        features = F.normalize(x[:, channels], dim=-1)
        memory = F.normalize(self._mean_sum[channels] / self._frames, dim=-1)
        redundancy = gaussian_similarity(features, memory) + gaussian_similarity(features, features.mean(dim=0))
        keep = min(self.settings.keep_tokens, count)
        index = torch.topk(redundancy, keep, largest=False).indices
        return Selection(index.sort().values, 1.0)

    def _adaptive(self, tokens: torch.Tensor, now_s: float) -> Selection:
        s = self.settings
        count = tokens.shape[0]
        x = tokens.float()
        if self._anchor is None or self._anchor.shape != x.shape or now_s < self._last_s:
            self.reset()  # first frame, another grid, or time went backwards
            self._anchor = torch.zeros_like(x)
            self._sent_s = torch.full((count,), -math.inf, dtype=torch.float64, device=x.device)
        channels = low_variance_channels(x)
        features = F.normalize(x[:, channels], dim=-1)
        distinct = 1.0 - features @ F.normalize(features.mean(dim=0), dim=0)  # spatial: far from the frame mean
        seen = torch.isfinite(self._sent_s)
        moved = 1.0 - (features * F.normalize(self._anchor[:, channels], dim=-1)).sum(dim=-1)
        # A cell the LLM never saw is new; those rank above every seen cell (cosine distance <= 2).
        changed = ~seen | (moved > s.novelty)
        rank = torch.where(seen, moved, 2.0 + distinct)

        ceiling = min(s.keep_tokens, count)
        keep = _descending(rank, changed)[:ceiling]
        # Refresh: cells whose copy in the LLM is older than refresh_s, oldest first,
        # as many per frame as keeps every copy younger than about refresh_s in steady state.
        if s.refresh_s > 0:
            age = now_s - self._sent_s
            stale = (age >= s.refresh_s) & ~changed
            since = s.refresh_s if self._last_s is None else min(now_s - self._last_s, s.refresh_s)
            quota = math.ceil(count * since / s.refresh_s)
            room = min(quota, ceiling - keep.numel())
            if room > 0:
                keep = torch.cat([keep, _descending(age, stale, then=distinct)[:room]])  # oldest first
        if keep.numel() < min(s.min_tokens, count):
            rest = torch.ones(count, dtype=torch.bool, device=x.device)
            rest[keep] = False
            keep = torch.cat([keep, _descending(distinct, rest)[: min(s.min_tokens, count) - keep.numel()]])

        keep = keep.sort().values
        self._anchor[keep] = x[keep]
        self._sent_s[keep] = now_s
        self._last_s = now_s
        novelty = float((changed & seen).sum()) / count if bool(seen.any()) else 1.0
        return Selection(keep, novelty)


def low_variance_channels(x: torch.Tensor) -> torch.Tensor:
    """Indices of the half of the channels whose values vary least across the tokens [N, D].
    STC scores on these: a few high-variance channels would otherwise dominate the distances."""
    variance = x.var(dim=0, unbiased=False)
    return torch.topk(variance, max(1, variance.numel() // 2), largest=False).indices


def gaussian_similarity(features: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """[N] sum over STC's kernel widths a of exp(-|f - anchor|^2 / 2a)."""
    distance2 = (features - anchor).pow(2).sum(dim=-1)
    return sum(torch.exp(-distance2 / (2 * a)) for a in STC_KERNEL_WIDTHS)


def _descending(score: torch.Tensor, mask: torch.Tensor, then: torch.Tensor | None = None) -> torch.Tensor:
    """Indices where `mask` holds, highest `score` first; ties by highest `then`, then by index."""
    index = mask.nonzero().flatten()
    if then is not None:
        index = index[torch.sort(then[index], descending=True, stable=True).indices]
    return index[torch.sort(score[index], descending=True, stable=True).indices]
