"""Long-term video memory: the KV of frames that left the vision window, compressed,
retrieved per question.

After LiveVLM (arXiv 2505.15269) and ReKV (ICLR 2025, github.com/Becomebright/ReKV):
- A frame leaving the streaming cache keeps `keep_ratio` of its tokens, those its own
  tokens attended to most (LiveVLM's vision-to-vision attention), with keys before RoPE
  (position-agnostic, as LiveVLM's retrieval wants), optionally stored as int8.
- `match: mean` (ReKV): a frame's retrieval key is the mean of its keys before RoPE, per
  layer, taken over all of its tokens before compression; a question's summary is the mean
  of its queries before RoPE. A frame's score is the cosine of the two, with each key head
  repeated for the query heads that share it, averaged over layers.
- `match: tokens`: each query of each question token (before RoPE) attends over every
  kept key in memory, as if all of memory were in the context; a frame scores the
  attention it receives, summed over question tokens, query heads and layers. Time
  markers receive none (every frame has one: text, not content). A mean over a frame
  dilutes a small object (one token of many) and a mean over a question its few content
  words. Measured on evaluation streams of 15 minutes (888 frames in memory), the frame
  where a needle first appeared ranked in the top 16 for 11 of 12 needle questions by
  tokens (9 with markers attended, fewer taking each query's best key per frame as
  ColBERT's late interaction does), and for 1 of 8 by mean. In `bench qa` (4 streams, 30
  needle questions) the answers attended to the needle's frame 0.73 of the time with
  tokens, 0.30 with mean, at the same short-range accuracy, so tokens is the default. It
  costs one pass over every stored key per question (7% more time in that run).
- ReKV retrieves per layer; one ranking for all layers is used here so that an answer can
  name the frames it used.
- The store is bounded in frames and in bytes; when full, the oldest frame is dropped.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

import torch

from streamvlm.fields import check, setting

STORE_DTYPES = ("int8", "float16", "bfloat16", "float32")
MATCHES = ("mean", "tokens")


@dataclass(frozen=True)
class MemorySettings:
    """`language.memory.*`: long-term memory of the frames that leave the cache."""

    max_frames: int = setting(0, "long-term memory holds at most this many frames, dropping the oldest (0: no "
                              "count limit)", range=(0, 1 << 30))
    max_mb: float = setting(512.0, "long-term memory size limit in MiB, dropping the oldest frames (0 with "
                            "max_frames 0: memory off)", range=(0.0, 1 << 20))
    keep_ratio: float = setting(0.25, "share of an evicted frame's tokens kept in memory, the most attended (1: no "
                                "compression)", range=(0.001, 1.0))
    top_k: int = setting(16, "frames brought back from memory for each question (0: no retrieval)",
                         range=(0, 4096))
    dtype: str = setting("int8", "how memory stores keys and values", choices=STORE_DTYPES)
    match: str = setting("tokens", "how a question finds frames: mean (its mean query against each frame's mean key, "
                         "ReKV) or tokens (the attention its tokens give each frame's kept keys)",
                         choices=MATCHES)

    def __post_init__(self):
        check(self)

    @property
    def max_bytes(self) -> int:
        return round(self.max_mb * 2**20)

    @property
    def enabled(self) -> bool:
        return bool(self.max_frames or self.max_mb) and self.top_k > 0


@dataclass
class StoredFrame:
    stamp_ns: int
    keys: torch.Tensor  # [layers, kv_heads, n, head_dim], before RoPE, in the store's dtype
    values: torch.Tensor
    key_scale: torch.Tensor | None  # int8: [layers, kv_heads, n, 1] per-token absmax scales
    value_scale: torch.Tensor | None
    summary_bytes: int  # its retrieval key, held in the memory's key matrix
    header: int = 0  # its first tokens are its time marker (text every frame has, not content)
    footer: int = 0  # its last tokens are text too (an image's closing delimiter)
    layout: torch.Tensor | None = None  # [n, 4] int32 its tokens' position rule (kv_cache), on the host

    @property
    def tokens(self) -> int:
        return int(self.keys.shape[2])

    @property
    def nbytes(self) -> int:
        parts = (self.keys, self.values, self.key_scale, self.value_scale, self.layout)
        return self.summary_bytes + sum(t.numel() * t.element_size() for t in parts if t is not None)


class Recalled(NamedTuple):
    """A frame brought back for a question, ready to go into the cache."""

    keys: torch.Tensor  # [layers, kv_heads, n, head_dim], before RoPE
    values: torch.Tensor
    stamp_ns: int
    layout: torch.Tensor | None  # [n, 4] position rule (None: text-like, one position a token)


class _Rows:
    """Rows added at the end and dropped from the front, kept in one tensor so that scoring
    every stored frame is one matmul, not a stack of thousands of small tensors per question."""

    def __init__(self):
        self.data: torch.Tensor | None = None
        self.start = self.end = 0

    def append(self, row: torch.Tensor) -> None:
        if self.data is None:
            self.data = row.new_empty((64, *row.shape))
        if self.end == len(self.data):
            live = self.data[self.start:self.end].clone()
            if self.start < len(self.data) // 2:  # mostly live: grow (amortized, doubling)
                self.data = row.new_empty((2 * len(self.data), *row.shape))
            self.data[:len(live)] = live
            self.start, self.end = 0, len(live)
        self.data[self.end] = row
        self.end += 1

    def popleft(self) -> None:
        self.start += 1

    def clear(self) -> None:
        self.data, self.start, self.end = None, 0, 0

    def view(self) -> torch.Tensor:
        return self.data[self.start:self.end]


class FrameMemory:
    """Compressed frames in time order, with their retrieval keys."""

    def __init__(self, settings: MemorySettings, device: torch.device | str = "cpu"):
        self.settings = settings
        self.device = torch.device(device)
        self.frames: deque[StoredFrame] = deque()
        self._keys = _Rows()  # [frames, layers, kv_heads, head_dim] float16 retrieval keys, in step with frames
        self.nbytes = 0
        self.dropped = 0  # frames dropped because the store was full

    def __len__(self) -> int:
        return len(self.frames)

    def clear(self) -> None:
        self.frames.clear()
        self._keys.clear()
        self.nbytes = 0

    @property
    def retrieval_keys(self) -> torch.Tensor:
        """[frames, layers, kv_heads, head_dim] each stored frame's mean key (float16)."""
        return self._keys.view()

    @property
    def stamps(self) -> list[int]:
        return [f.stamp_ns for f in self.frames]

    def add(self, keys: torch.Tensor, values: torch.Tensor, importance: torch.Tensor, stamp_ns: int,
            layout: torch.Tensor | None = None) -> None:
        """A frame's keys (before RoPE) and values [layers, kv_heads, n, head_dim], the
        attention its tokens received [n], and its tokens' position rule [n, 4] (M-RoPE; kept
        tokens keep their grid positions); tokens marked +inf in `importance` (the frame's
        text: leading time marker, trailing delimiter) are always kept."""
        summary = keys.float().mean(dim=2)
        text = torch.isposinf(importance)
        always = int(text.sum())
        header = int(text.int().cumprod(0).sum())  # the leading run; the rest of the text trails
        keep = always + max(1, math.ceil(self.settings.keep_ratio * (keys.shape[2] - always)))
        if keep < keys.shape[2]:
            index = torch.topk(importance.float(), keep).indices.sort().values.to(keys.device)
            keys, values = keys.index_select(2, index), values.index_select(2, index)
            layout = None if layout is None else layout.index_select(0, index.to(layout.device))
        place = self._placement()
        summary = summary.to(place, torch.float16)
        frame = StoredFrame(stamp_ns, *_pack(keys, values, self.settings.dtype, place),
                            summary_bytes=summary.numel() * summary.element_size(), header=header,
                            footer=always - header, layout=None if layout is None else layout.to("cpu", copy=True))
        if self._keys.data is not None and self._keys.data.device != place:
            # The store moved between accelerator and host: keep every key on one device.
            moved, self._keys = self._keys.view().to(place), _Rows()
            for row in moved:
                self._keys.append(row)
        self._keys.append(summary)
        self.frames.append(frame)
        self.nbytes += frame.nbytes
        self.enforce_budget()

    def _placement(self) -> torch.device:
        # On the accelerator while it has room to spare, else in host memory (pinned where
        # CUDA exists, so that loading it back for an answer is one fast copy).
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            if free > max(2**30, total // 10):
                return self.device
        return torch.device("cpu")

    def enforce_budget(self) -> None:
        s = self.settings
        while self.frames and ((s.max_frames and len(self.frames) > s.max_frames)
                               or (s.max_bytes and self.nbytes > s.max_bytes)):
            self.nbytes -= self.frames.popleft().nbytes
            self._keys.popleft()
            self.dropped += 1

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """queries [layers, T, q_heads, head_dim] (a question's queries before RoPE) ->
        [frames] cosine of their mean against each frame's mean key, averaged over layers."""
        if not self.frames:
            return torch.zeros(0)
        if self.settings.match == "tokens":
            return self._token_scores(queries)
        queries = queries.mean(dim=1)
        keys = self.retrieval_keys.to(queries.device, torch.float32)  # [F, L, Hkv, d]
        layers, kv_heads, dim = keys.shape[1:]
        group = queries.shape[1] // kv_heads
        q = queries.float().reshape(layers, kv_heads, group, dim)
        # cos(q, k repeated per group) = sum_h (sum_g q_hg) . k_h / (|q| sqrt(group) |k|), per layer
        dot = torch.einsum("lhd,flhd->fl", q.sum(dim=2), keys)
        norms = q.flatten(1).norm(dim=1) * math.sqrt(group) * keys.flatten(2).norm(dim=2)
        return (dot / norms.clamp_min(1e-12)).mean(dim=1)

    def _token_scores(self, queries: torch.Tensor) -> torch.Tensor:
        """[frames]: the attention each frame's kept tokens would receive from every query
        (per layer, query head and question token, a softmax over all stored keys), summed.
        Time markers take no part: every frame has one, and they drew a question's attention
        away from content (needle frame in the top 16 of 888: 9 of 12 with them, 11 without)."""
        layers, steps, q_heads, dim = queries.shape
        device = queries.device
        counts = torch.tensor([f.tokens - f.header - f.footer for f in self.frames], device=device)
        owner = torch.repeat_interleave(torch.arange(len(self.frames), device=device), counts)  # [N] frame of each key
        total = torch.zeros(len(self.frames), device=device)
        for layer in range(layers):  # one layer's logits at a time bounds the working memory
            keys = torch.cat([_content_keys(f, layer, device) for f in self.frames], dim=1)  # [Hkv, N, d]
            kv_heads = keys.shape[0]
            q = queries[layer].float().reshape(steps, kv_heads, q_heads // kv_heads, dim)
            q = q.permute(1, 0, 2, 3).reshape(kv_heads, -1, dim)  # [Hkv, T * group, d]
            attention = (torch.matmul(q, keys.transpose(1, 2)) / math.sqrt(dim)).softmax(dim=-1)  # [Hkv, T*g, N]
            total.index_add_(0, owner, attention.sum(dim=(0, 1)))
        return total

    def retrieve(self, queries: torch.Tensor, max_tokens: int, device: torch.device, dtype: torch.dtype
                 ) -> list[Recalled]:
        """The best `top_k` frames for these queries that fit in `max_tokens`, in time order,
        with keys and values on `device` in `dtype`."""
        chosen, tokens = [], 0
        for index in torch.argsort(self.scores(queries), descending=True, stable=True).tolist():
            if len(chosen) == self.settings.top_k:
                break
            frame = self.frames[index]
            if tokens + frame.tokens <= max_tokens:
                chosen.append(index)
                tokens += frame.tokens
        return [_unpack(self.frames[i], device, dtype) for i in sorted(chosen)]


def _pack(keys: torch.Tensor, values: torch.Tensor, dtype: str, device: torch.device):
    pin = device.type == "cpu" and torch.cuda.is_available()
    if dtype == "int8":
        (k, ks), (v, vs) = _quantize(keys), _quantize(values)
        parts = (k, v, ks, vs)
    else:
        target = getattr(torch, dtype)  # a copy even when the dtype matches: the inputs are cache views
        parts = (keys.to(target, copy=True), values.to(target, copy=True), None, None)
    moved = [None if t is None else t.to(device) for t in parts]
    return [t.pin_memory() if pin and t is not None else t for t in moved]


def _quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per token and head (absmax / 127)."""
    scale = x.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / 127
    return torch.round(x.float() / scale).to(torch.int8), scale.to(torch.float16)


def _content_keys(frame: StoredFrame, layer: int, device: torch.device) -> torch.Tensor:
    """One layer's stored keys without the frame's text [kv_heads, n - header - footer, head_dim],
    as float32 on `device` (the text is cut before it is moved or dequantized)."""
    content = slice(frame.header, frame.tokens - frame.footer)
    keys = frame.keys[layer, :, content].to(device).float()
    if frame.key_scale is None:
        return keys
    return keys * frame.key_scale[layer, :, content].to(device).float()


def _unpack(frame: StoredFrame, device: torch.device, dtype: torch.dtype):
    keys, values = frame.keys.to(device, non_blocking=True), frame.values.to(device, non_blocking=True)
    if frame.key_scale is not None:
        keys = keys.float() * frame.key_scale.to(device).float()
        values = values.float() * frame.value_scale.to(device).float()
    return Recalled(keys.to(dtype), values.to(dtype), frame.stamp_ns, frame.layout)
