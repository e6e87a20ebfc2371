"""Long-term video memory: the KV of frames that left the vision window, compressed,
retrieved per question.

After LiveVLM (arXiv 2505.15269) and ReKV (ICLR 2025, github.com/Becomebright/ReKV):
- A frame leaving the streaming cache keeps `keep_ratio` of its tokens, those its own
  tokens attended to most (LiveVLM's vision-to-vision attention), with keys before RoPE
  (position-agnostic, as LiveVLM's retrieval wants), stored as int8 or 4-bit groups
  (llm/quantize.py) or in a float dtype.
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
  costs one pass over every stored key per question (7% more time in that run). Only
  `mean` needs a retrieval key per frame (one token's keys in float16): under `tokens`
  none is stored; switching to `mean` at run time gives the frames stored before it the
  mean of their kept keys.
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
from streamvlm.llm.quantize import STORE_DTYPES, Stored, store
from streamvlm.llm.ring import Ring

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
    # Default int4 by `bench qa` (docs/performance/sweeps.md): same short-range accuracy as
    # int8 (0.87, retained 1.02), needles 0.13 against 0.10, 1.5x the frames in the same memory.
    dtype: str = setting("int4", "how memory stores keys and values (int8: a scale per token; int4: 4-bit "
                         "groups of 32 channels with a scale and minimum each)", choices=STORE_DTYPES)
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
    """A frame in memory; its keys and values are rows of the memory's ring (in step with
    `FrameMemory.frames`)."""

    stamp_ns: int
    tokens: int
    row_bytes: int  # its keys' and values' bytes per token, in the store's dtype
    summary_bytes: int = 0  # its retrieval key (match: mean), held in the memory's key matrix
    header: int = 0  # its first tokens are its time marker (text every frame has, not content)
    footer: int = 0  # its last tokens are text too (an image's closing delimiter)
    layout: torch.Tensor | None = None  # [n, 4] int32 its tokens' position rule (kv_cache), on the host
    camera: str = ""  # whose frame ("" : the only camera)

    @property
    def layout_bytes(self) -> int:
        return 0 if self.layout is None else self.layout.numel() * self.layout.element_size()

    @property
    def nbytes(self) -> int:
        return self.summary_bytes + self.tokens * self.row_bytes + self.layout_bytes


class Recalled(NamedTuple):
    """A frame brought back for a question, ready to go into the cache."""

    keys: torch.Tensor  # [layers, kv_heads, n, head_dim], before RoPE
    values: torch.Tensor
    stamp_ns: int
    layout: torch.Tensor | None  # [n, 4] position rule (None: text-like, one position a token)
    camera: str = ""


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
        self._settings = settings
        self.device = torch.device(device)
        self.frames: deque[StoredFrame] = deque()
        # Every frame's keys and values, token-major [tokens, layers, kv_heads, ...]: keys'
        # (data, scale, low) then values'.
        self._ring = Ring(self._placement)
        # match: mean: [frames, layers, kv_heads, head_dim] float16 retrieval keys, in step with frames
        self._keys = _Rows()
        self._dtype = settings.dtype  # of every frame in the ring
        self.nbytes = 0  # what the frames take (budgeted), not the ring's idle rows
        self.dropped = 0  # frames dropped because the store was full

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def reserved_bytes(self) -> int:
        """What the store holds allocated: the ring (used or not) and the retrieval keys."""
        keys = 0 if self._keys.data is None else self._keys.data.numel() * self._keys.data.element_size()
        return self._ring.nbytes + keys + sum(f.layout_bytes for f in self.frames)

    @property
    def settings(self) -> MemorySettings:
        return self._settings

    @settings.setter
    def settings(self, settings: MemorySettings) -> None:
        """New limits apply at the next `enforce_budget`, compression to new frames; a new
        dtype re-stores every frame in it."""
        before, self._settings = self._settings, settings
        if settings.dtype != self._dtype:
            self._restore()
        if settings.match != before.match:
            self._rebuild_retrieval_keys()

    def clear(self) -> None:
        self.frames.clear()
        self._ring.clear()
        self._keys.clear()
        self.nbytes = 0

    @property
    def retrieval_keys(self) -> torch.Tensor | None:
        """[frames, layers, kv_heads, head_dim] each stored frame's mean key (float16; match:
        mean only, else None)."""
        return None if self._keys.data is None else self._keys.view()

    @property
    def stamps(self) -> list[int]:
        return [f.stamp_ns for f in self.frames]

    def stored(self, index: int) -> tuple[Stored, Stored]:
        """Frame `index`'s keys and values as stored, [layers, kv_heads, n, ...] views."""
        parts = [None if t is None else t.movedim(0, 2) for t in self._ring.run(index)]
        return Stored(*parts[:3]), Stored(*parts[3:])

    def read(self, index: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame `index`'s keys and values [layers, kv_heads, n, head_dim], float32 on `device`."""
        keys, values = self.stored(index)
        return keys.dequantize(device), values.dequantize(device)

    def add(self, keys: torch.Tensor, values: torch.Tensor, importance: torch.Tensor, stamp_ns: int,
            layout: torch.Tensor | None = None, camera: str = "") -> None:
        """A frame's keys (before RoPE) and values [layers, kv_heads, n, head_dim], the
        attention its tokens received [n], and its tokens' position rule [n, 4] (M-RoPE; kept
        tokens keep their grid positions); tokens marked +inf in `importance` (the frame's
        text: leading time marker, trailing delimiter) are always kept."""
        summary = keys.float().mean(dim=2) if self._settings.match == "mean" else None
        text = torch.isposinf(importance)
        always = int(text.sum())
        header = int(text.int().cumprod(0).sum())  # the leading run; the rest of the text trails
        keep = always + max(1, math.ceil(self._settings.keep_ratio * (keys.shape[2] - always)))
        if keep < keys.shape[2]:
            index = torch.topk(importance.float(), keep).indices.sort().values.to(keys.device)
            keys, values = keys.index_select(2, index), values.index_select(2, index)
            layout = None if layout is None else layout.index_select(0, index.to(layout.device))
        rows, row_bytes = _rows(keys, values, self._dtype)
        frame = StoredFrame(stamp_ns, int(keys.shape[2]), row_bytes, header=header, footer=always - header,
                            layout=None if layout is None else layout.to("cpu", copy=True), camera=camera)
        if not self._append(rows, frame):
            return
        if summary is not None:
            self._add_retrieval_key(frame, summary.to(self._ring.parts[0].device, torch.float16))
        self.enforce_budget()

    def _append(self, rows: tuple, frame: StoredFrame) -> bool:
        s = self._settings
        limit = s.max_bytes // frame.row_bytes if s.max_bytes else None  # ring rows the byte budget allows
        while not self._ring.append(rows, limit):
            if not self.frames:  # one frame larger than the whole store
                self.dropped += 1
                return False
            self._drop_oldest()
        self.frames.append(frame)
        self.nbytes += frame.nbytes
        return True

    def _drop_oldest(self) -> None:
        frame = self.frames.popleft()
        self._ring.popleft()
        self.nbytes -= frame.nbytes
        if frame.summary_bytes:
            self._keys.popleft()
        self.dropped += 1

    def _restore(self) -> None:
        # Every frame again in the new dtype (int8 -> int4 rounds twice; float -> int once),
        # with the retrieval key it had; a frame that no longer fits leaves with its key.
        summaries = None if self._keys.data is None else self._keys.view().clone()  # in step with frames
        old = [(self.read(i, "cpu"), frame, None if summaries is None else summaries[i])
               for i, frame in enumerate(self.frames)]
        self._dtype = self._settings.dtype
        self._ring.clear()
        self._keys.clear()
        self.frames.clear()
        self.nbytes = 0
        for (keys, values), frame, summary in old:
            rows, frame.row_bytes = _rows(keys, values, self._dtype)
            frame.summary_bytes = 0
            if self._append(rows, frame) and summary is not None:
                self._add_retrieval_key(frame, summary)
        self.enforce_budget()

    def _rebuild_retrieval_keys(self) -> None:
        # Only `mean` reads them; frames stored under `tokens` have none, and get the mean of
        # what they kept (the whole frame's mean is gone with the tokens compression dropped).
        self._keys.clear()
        for index, frame in enumerate(self.frames):
            self.nbytes -= frame.summary_bytes
            frame.summary_bytes = 0
            if self._settings.match == "mean":
                keys, _ = self.stored(index)
                summary = keys.dequantize(keys.data.device).mean(dim=2).to(torch.float16)
                self._add_retrieval_key(frame, summary)

    def _add_retrieval_key(self, frame: StoredFrame, summary: torch.Tensor) -> None:
        if self._keys.data is not None and self._keys.data.device != summary.device:
            # The store moved between accelerator and host: keep every key on one device.
            moved, self._keys = self._keys.view().to(summary.device), _Rows()
            for row in moved:
                self._keys.append(row)
        self._keys.append(summary)
        frame.summary_bytes = summary.numel() * summary.element_size()
        self.nbytes += frame.summary_bytes

    def _placement(self, nbytes: int) -> torch.device:
        # On the accelerator while it has room to spare after `nbytes`, else in host memory.
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            if free - nbytes > max(2**30, total // 10):
                return self.device
        return torch.device("cpu")

    def enforce_budget(self) -> None:
        s = self._settings
        while self.frames and ((s.max_frames and len(self.frames) > s.max_frames)
                               or (s.max_bytes and self.nbytes > s.max_bytes)):
            self._drop_oldest()

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """queries [layers, T, q_heads, head_dim] (a question's queries before RoPE) ->
        [frames] cosine of their mean against each frame's mean key, averaged over layers."""
        if not self.frames:
            return torch.zeros(0)
        if self._settings.match == "tokens":
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
        rows, owner = self._content_rows()
        rows, owner = rows.to(self._ring.parts[0].device), owner.to(device)
        total = torch.zeros(len(self.frames), device=device)
        for layer in range(layers):  # one layer's logits at a time bounds the working memory
            parts = [None if t is None else t[:, layer].index_select(0, rows) for t in self._ring.parts[:3]]
            keys = Stored(*parts).dequantize(device).transpose(0, 1)  # [Hkv, N, d]
            kv_heads = keys.shape[0]
            q = queries[layer].float().reshape(steps, kv_heads, q_heads // kv_heads, dim)
            q = q.permute(1, 0, 2, 3).reshape(kv_heads, -1, dim)  # [Hkv, T * group, d]
            attention = (torch.matmul(q, keys.transpose(1, 2)) / math.sqrt(dim)).softmax(dim=-1)  # [Hkv, T*g, N]
            total.index_add_(0, owner, attention.sum(dim=(0, 1)))
        return total

    def _content_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ring rows of every frame's content tokens (its text left out), in frame order,
        and the frame each belongs to."""
        starts = torch.tensor([first + f.header for (first, _), f in zip(self._ring.runs, self.frames)])
        counts = torch.tensor([f.tokens - f.header - f.footer for f in self.frames])
        owner = torch.repeat_interleave(torch.arange(len(self.frames)), counts)
        offsets = torch.arange(len(owner)) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        return starts[owner] + offsets, owner

    def retrieve(self, queries: torch.Tensor, max_tokens: int, device: torch.device, dtype: torch.dtype
                 ) -> list[Recalled]:
        """The best `top_k` frames for these queries that fit in `max_tokens`, in time order,
        with keys and values on `device` in `dtype`."""
        chosen, tokens = [], 0
        for index in torch.argsort(self.scores(queries), descending=True, stable=True).tolist():
            if len(chosen) == self._settings.top_k:
                break
            frame = self.frames[index]
            if tokens + frame.tokens <= max_tokens:
                chosen.append(index)
                tokens += frame.tokens
        recalled = []
        for index in sorted(chosen):
            keys, values = self.read(index, device)
            frame = self.frames[index]
            recalled.append(Recalled(keys.to(dtype), values.to(dtype), frame.stamp_ns, frame.layout, frame.camera))
        return recalled


def _rows(keys: torch.Tensor, values: torch.Tensor, dtype: str) -> tuple[tuple, int]:
    """A frame's keys and values [layers, kv_heads, n, head_dim] as the ring's token-major rows
    (keys' data, scale, low, then values'), and their bytes per token."""
    rows = (*store(keys.movedim(2, 0), dtype), *store(values.movedim(2, 0), dtype))
    return rows, sum(t[0].numel() * t.element_size() for t in rows if t is not None)
