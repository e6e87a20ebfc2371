"""Fixed-budget streaming KV cache: StreamingVLM's layout over preallocated buffers.

Layout (StreamingVLM, arXiv 2510.09608, sec. 3; attention sinks from StreamingLLM,
arXiv 2309.17453), in slot order, which is also stream order:

    [sinks][text sink][recent frames and recent text, interleaved as they arrived]

- sinks: the first `sink_tokens` tokens of the stream, whatever they are. A frame that
  reaches into them is kept whole, because a frame's tokens always leave together.
- text sink: the first `text_sink_tokens` text tokens after the sinks (system prompt,
  first questions and answers).
- vision window: frames younger than `vision_window_s` (and at most
  `vision_window_frames` of them, when that is set), per camera: with several cameras
  each keeps its own recent frames and all share the budget. Older frames leave whole.
- text window: the most recent `text_window_tokens` text tokens; older text leaves
  token by token, oldest first.
- budget: never more than `budget_tokens` slots. When a window rule is not enough, the
  oldest unpinned span (frame or text) leaves first.

Position rule, written once here: the token in slot i has position i. Eviction closes
the hole by moving later slots down, so positions stay contiguous and never grow. Keys
are stored rotated at their position; a key that moves is rotated again by how far it
moved (RoPE rotations compose) before it is next read (see `engine`), so a decode step
rotates nothing it did not write, and a key is re-rotated about once per frame that
leaves ahead of it while it is in the window, not once per step.

M-RoPE (Qwen2-VL) generalizes the rule: each slot holds its token's offsets (time, row,
column) from where its span starts and how far it moves the next token's start (text:
(0, 0, 0) and 1; a frame's tokens: (0, row, column) and 0; the text closing a frame jumps
by the frame's larger side, as transformers' `get_rope_index` places the text after an
image). Positions are the running sum of the moves before a slot plus its offsets, so
when a span leaves, every later token moves back by exactly what that span took: still
contiguous, as StreamingVLM keeps them. For 1-D models every slot is text-like and the
position is the slot index.

`StreamingPolicy` is pure bookkeeping (no tensors, property-tested); `KVBuffers` holds
the tensors; `StreamingKVCache` applies one to the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streamvlm.fields import check, setting

FRAME = "frame"
TEXT = "text"


class CacheFull(RuntimeError):
    """The incoming tokens cannot fit even after evicting everything evictable."""


@dataclass(frozen=True)
class CacheLayout:
    """`language.cache.*`: sizes of the streaming layout, all in tokens except the vision window.
    Defaults after StreamingVLM's 512 + 512 text tokens and 16 s of vision."""

    budget_tokens: int = setting(8192, "KV cache size in tokens, preallocated (0: full attention, grows without "
                                 "bound; the reference)", range=(0, 1 << 24), read_only=True)
    sink_tokens: int = setting(4, "first tokens of the stream kept forever (attention sinks)", range=(0, 1 << 20))
    text_sink_tokens: int = setting(512, "first text tokens after the sinks kept forever (system prompt, first "
                                    "turns)", range=(0, 1 << 20))
    text_window_tokens: int = setting(512, "most recent text tokens kept", range=(0, 1 << 20))
    vision_window_s: float = setting(16.0, "frames younger than this are kept, budget allowing (0: no time limit)",
                                     range=(0.0, 86400.0))
    vision_window_frames: int = setting(0, "at most this many frames are kept (0: no count limit)",
                                        range=(0, 1 << 20))

    def __post_init__(self):
        check(self)
        if self.bounded and self.sink_tokens + self.text_sink_tokens >= self.budget_tokens:
            raise ValueError(
                f"sink_tokens + text_sink_tokens ({self.sink_tokens + self.text_sink_tokens}) "
                f"must leave room in budget_tokens ({self.budget_tokens})")

    @property
    def bounded(self) -> bool:
        """False for budget 0: full attention, the reference that never evicts."""
        return self.budget_tokens > 0


@dataclass
class Span:
    """Consecutive slots holding one frame or one run of text."""

    kind: str  # FRAME or TEXT
    start: int  # first slot
    length: int
    stamp_ns: int = 0  # frames: camera stamp
    pinned: bool = False  # sinks and text sink never leave
    retrieved: bool = False  # a frame brought back from long-term memory for one answer
    camera: str = ""  # frames: which camera ("" : the only one)


class StreamingPolicy:
    """Which slots hold what, and which leave when room is needed."""

    def __init__(self, layout: CacheLayout):
        self.layout = layout
        self.spans: list[Span] = []
        self.used = 0  # slots in use: 0..used-1
        self.streamed = 0  # tokens ever appended
        self.text_sink_used = 0  # text tokens pinned as the text sink so far
        self.evicted_frames: list[Span] = []  # frames the last evict_for removed (slots from before it)

    def reset(self) -> None:
        self.spans.clear()
        self.evicted_frames = []
        self.used = self.streamed = self.text_sink_used = 0

    @property
    def frame_stamps(self) -> list[int]:
        """Stamps of the frames in the cache, oldest first."""
        return [s.stamp_ns for s in self.spans if s.kind == FRAME]

    @property
    def frame_cameras(self) -> list[str]:
        """The camera of each frame in the cache, in the order of `frame_stamps`."""
        return [s.camera for s in self.spans if s.kind == FRAME]

    def max_room(self) -> int:
        """The most tokens one append could ever get (everything evictable gone)."""
        pinned = sum(s.length for s in self.spans if s.pinned)
        return self.layout.budget_tokens - pinned

    def append(self, kind: str, length: int, stamp_ns: int = 0, camera: str = "") -> int:
        """Record `length` new tokens at the end; returns their first slot."""
        if length <= 0:
            raise ValueError("append needs at least one token")
        if kind not in (FRAME, TEXT):
            raise ValueError(f"kind must be {FRAME!r} or {TEXT!r}, got {kind!r}")
        if self.used + length > self.layout.budget_tokens:
            raise CacheFull(f"{length} tokens do not fit: {self.used} of {self.layout.budget_tokens} in use")
        start = self.used
        sinks_left = max(0, self.layout.sink_tokens - self.streamed)
        if kind == FRAME:
            self._push(Span(FRAME, start, length, stamp_ns, pinned=sinks_left > 0, camera=camera))
        else:
            pinned = min(length, sinks_left)
            text_sink = min(length - pinned, self.layout.text_sink_tokens - self.text_sink_used)
            self.text_sink_used += text_sink
            self._push(Span(TEXT, start, pinned + text_sink, pinned=True))
            self._push(Span(TEXT, start + pinned + text_sink, length - pinned - text_sink))
        self.used += length
        self.streamed += length
        return start

    def _push(self, span: Span) -> None:
        if span.length == 0:
            return
        last = self.spans[-1] if self.spans else None
        if last and last.kind == TEXT == span.kind and last.pinned == span.pinned:
            last.length += span.length  # adjacent text of the same class is one run
        else:
            self.spans.append(span)

    def evict_for(self, incoming: int, kind: str = TEXT, stamp_ns: int = 0, camera: str = ""
                  ) -> list[tuple[int, int]]:
        """Apply the window rules and the budget for `incoming` tokens about to arrive.

        Returns the removed slot ranges as (start, length), ascending, in the slot
        numbering from before the call; the buffers must close them the same way.
        """
        cut = [0] * len(self.spans)  # tokens leaving from the front of each span
        evictable = [i for i, s in enumerate(self.spans) if not s.pinned]
        frames = [i for i in evictable if self.spans[i].kind == FRAME]
        texts = [i for i in evictable if self.spans[i].kind == TEXT]

        # Vision window, each camera's own: by age against its newest frame, then by count.
        window_ns = self.layout.vision_window_s * 1e9
        for name in dict.fromkeys(self.spans[i].camera for i in frames):
            own = [i for i in frames if self.spans[i].camera == name]
            arriving = kind == FRAME and camera == name
            newest = max([self.spans[i].stamp_ns for i in own] + ([stamp_ns] if arriving else []))
            count = len(own) + arriving
            for i in own:
                too_old = window_ns > 0 and newest - self.spans[i].stamp_ns >= window_ns
                too_many = 0 < self.layout.vision_window_frames < count
                if too_old or too_many:
                    cut[i] = self.spans[i].length
                    count -= 1

        # Text window: the most recent text_window_tokens unpinned text tokens stay.
        text = sum(self.spans[i].length for i in texts) + (incoming if kind == TEXT else 0)
        self._trim_text(texts, cut, text - self.layout.text_window_tokens)

        # Budget: the oldest evictable span leaves first.
        over = self.used - sum(cut) + incoming - self.layout.budget_tokens
        for i in evictable:
            if over <= 0:
                break
            left = self.spans[i].length - cut[i]
            take = left if self.spans[i].kind == FRAME else min(over, left)  # frames leave whole
            cut[i] += take
            over -= take
        if over > 0:
            raise CacheFull(f"{incoming} tokens do not fit in {self.layout.budget_tokens}: "
                            f"{self.used - sum(cut)} pinned tokens stay")
        return self._remove(cut)

    def _trim_text(self, texts: list[int], cut: list[int], excess: int) -> None:
        for i in texts:
            if excess <= 0:
                return
            take = min(excess, self.spans[i].length - cut[i])
            cut[i] += take
            excess -= take

    def _remove(self, cut: list[int]) -> list[tuple[int, int]]:
        removed, spans, shift = [], self.spans, 0
        self.spans, self.evicted_frames = [], []
        for span, n in zip(spans, cut):
            if n:
                removed.append((span.start, n))
                if span.kind == FRAME and not span.retrieved:
                    self.evicted_frames.append(span)
            if n < span.length:
                # The kept tail starts where the span started, less everything removed before it.
                self._push(Span(span.kind, span.start - shift, span.length - n, span.stamp_ns, span.pinned,
                                span.retrieved, span.camera))
            shift += n
        self.used -= shift
        return removed

    def snapshot(self) -> tuple:
        """The bookkeeping as it is now, for `restore` (a question taken back out)."""
        spans = [Span(s.kind, s.start, s.length, s.stamp_ns, s.pinned, s.retrieved, s.camera) for s in self.spans]
        return spans, self.used, self.streamed, self.text_sink_used

    def restore(self, snapshot: tuple) -> None:
        """Back to a `snapshot` taken when the cache held a prefix of what it holds now (only
        appends since, no eviction): the slots past it are free again."""
        spans, used, streamed, text_sink_used = snapshot
        if used > self.used or streamed > self.streamed:
            raise ValueError("restore needs a snapshot of a prefix of the cache")
        self.spans = [Span(s.kind, s.start, s.length, s.stamp_ns, s.pinned, s.retrieved, s.camera) for s in spans]
        self.used, self.streamed, self.text_sink_used = used, streamed, text_sink_used

    def insertion_slot(self) -> int:
        """Where retrieved memory goes: after the leading pinned spans (sinks, text sink),
        before the first span the windows manage."""
        for span in self.spans:
            if not span.pinned:
                return span.start
        return self.used

    def insert_frames(self, at: int, frames: list[tuple[int, int, str]]) -> None:
        """Record retrieved frames, (length, stamp_ns, camera) each in time order, at slot `at`
        (a span boundary); later spans move up. They stay until `remove_retrieved`."""
        total = sum(frame[0] for frame in frames)
        if self.used + total > self.layout.budget_tokens:
            raise CacheFull(f"{total} retrieved tokens do not fit: {self.used} of {self.layout.budget_tokens} in use")
        index = next((i for i, s in enumerate(self.spans) if s.start >= at), len(self.spans))
        if (self.spans[index].start if index < len(self.spans) else self.used) != at:
            raise ValueError(f"slot {at} is not a span boundary")
        for span in self.spans[index:]:
            span.start += total
        new, slot = [], at
        for length, stamp, camera in frames:
            new.append(Span(FRAME, slot, length, stamp, pinned=True, retrieved=True, camera=camera))
            slot += length
        self.spans[index:index] = new
        self.used += total

    def remove_retrieved(self) -> list[tuple[int, int]]:
        """Drop the retrieved frames; returns their slot ranges, as `evict_for` does."""
        removed = self._remove([s.length if s.retrieved else 0 for s in self.spans])
        self.evicted_frames = []
        return removed

    def check(self) -> None:
        """Raise AssertionError unless the invariants hold (used by tests)."""
        slot = 0
        for span in self.spans:
            assert span.start == slot and span.length > 0, (span, slot)
            slot += span.length
        assert slot == self.used <= self.layout.budget_tokens
        for name in set(self.frame_cameras):  # each camera's frames in time order
            stamps = [s.stamp_ns for s in self.spans if s.kind == FRAME and s.camera == name]
            assert stamps == sorted(stamps), (name, stamps)


class KVBuffers:
    """Preallocated keys (rotated at `rotated_at`) and values for every layer: [layers, kv_heads, slots,
    head_dim]."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, slots: int, dtype: torch.dtype,
                 device: torch.device):
        shape = (layers, kv_heads, slots, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        # Attention each slot received from its own frame's tokens (long-term memory keeps
        # the most attended ones). Shaped so that slots are dim 2, like the keys.
        self.scores = torch.zeros((1, 1, slots, 1), dtype=torch.float32, device=device)
        # Each slot's position rule (see the module docstring): offsets (time, row, column)
        # and the move to the next token's start.
        self.layout = torch.zeros((1, 1, slots, 4), dtype=torch.int32, device=device)
        # The start position (`bases`) each slot's key was rotated at; -1: not rotated yet (a
        # key back from memory). A key whose slot's start has since moved is rotated by the
        # difference before it is read (engine), so keys are rotated once, not at every step.
        self.rotated_at = torch.full((1, 1, slots, 1), -1, dtype=torch.int32, device=device)

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.keys, self.values, self.scores, self.layout, self.rotated_at

    def write_layout(self, start: int, steps: int, layout: torch.Tensor | None) -> None:
        """Slots start..start+steps-1 get `layout` [steps, 4] (None: text, one position each)."""
        rows = self.layout[0, 0, start:start + steps]
        if layout is None:
            rows.zero_()
            rows[:, 3] = 1
        else:
            rows.copy_(layout)

    def bases(self, end: int) -> torch.Tensor:
        """[end] where each of slots 0..end-1 starts: the sum of the moves before it (the slot
        index itself for 1-D models, whose every move is 1)."""
        moves = self.layout[0, 0, :end, 3].long()
        return torch.cumsum(moves, 0) - moves

    def positions(self, end: int) -> torch.Tensor:
        """M-RoPE positions [3, end] of slots 0..end-1 from their layout."""
        return (self.bases(end)[:, None] + self.layout[0, 0, :end, :3].long()).T

    def write(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """keys, values [kv_heads, T, head_dim] into slots start..start+T-1."""
        end = start + keys.shape[1]
        self.keys[layer, :, start:end].copy_(keys)
        self.values[layer, :, start:end].copy_(values)

    def close_gaps(self, removed: list[tuple[int, int]], used_before: int) -> None:
        """Move the slots that stay down over the removed ranges, keeping their order."""
        write, read = 0, 0
        for start, length in [*removed, (used_before, 0)]:
            if start > read:  # slots read..start-1 stay
                if write != read:
                    for buf in self.tensors:
                        _move_down(buf, write, read, start - read)
                write += start - read
            read = start + length


    def open_gap(self, at: int, length: int, used: int) -> None:
        """Move slots at..used-1 up by `length`, leaving at..at+length-1 free to write."""
        for buf in self.tensors:
            _move_up(buf, at, at + length, used - at)


def _move_up(buf: torch.Tensor, src: int, dst: int, length: int) -> None:
    # The mirror of _move_down: pieces no longer than the gap, the last piece first.
    gap = dst - src
    for end in range(length, 0, -gap):
        n = min(gap, end)
        buf[:, :, dst + end - n:dst + end].copy_(buf[:, :, src + end - n:src + end])


def _move_down(buf: torch.Tensor, dst: int, src: int, length: int) -> None:
    # Copy slots src.. to dst.. (dst < src) along dim 2 in pieces no longer than the gap,
    # so no piece overlaps its own source and no scratch buffer is needed.
    gap = src - dst
    for offset in range(0, length, gap):
        n = min(gap, length - offset)
        buf[:, :, dst + offset:dst + offset + n].copy_(buf[:, :, src + offset:src + offset + n])


class StreamingKVCache:
    """The policy and the buffers kept in step: evict, close the gaps, then append."""

    def __init__(self, layout: CacheLayout, buffers: KVBuffers):
        self.policy = StreamingPolicy(layout)
        self.buffers = buffers
        self.evicted_tokens = 0
        self.on_evict = None  # called with (evicted frame spans, buffers) before their slots are reused
        self.moved = False  # slots moved since the engine last brought the keys' rotation in step

    @property
    def length(self) -> int:
        return self.policy.used

    def reset(self) -> None:
        self.policy.reset()
        self.evicted_tokens = 0
        self.moved = False

    def make_room(self, incoming: int, kind: str = TEXT, stamp_ns: int = 0, camera: str = ""
                  ) -> list[tuple[int, int]]:
        used_before = self.policy.used
        removed = self.policy.evict_for(incoming, kind, stamp_ns, camera)
        if removed:
            if self.on_evict is not None and self.policy.evicted_frames:
                self.on_evict(self.policy.evicted_frames, self.buffers)  # before their slots are reused
            self.buffers.close_gaps(removed, used_before)
            self.evicted_tokens += sum(n for _, n in removed)
            self.moved = True
        return removed

    def insert_frames(self, frames: list) -> None:
        """Put retrieved frames (`memory.Recalled`: keys, values [layers, kv_heads, n, head_dim],
        stamp_ns, layout [n, 4]) in time order, between the pinned spans and the windows, at
        contiguous slots."""
        at = self.policy.insertion_slot()
        used_before = self.policy.used
        self.policy.insert_frames(at, [(frame.keys.shape[2], frame.stamp_ns, frame.camera) for frame in frames])
        total = self.policy.used - used_before
        self.buffers.open_gap(at, total, used_before)
        for frame in frames:
            n = frame.keys.shape[2]
            self.buffers.keys[:, :, at:at + n].copy_(frame.keys)
            self.buffers.values[:, :, at:at + n].copy_(frame.values)
            self.buffers.write_layout(at, n, frame.layout)
            self.buffers.rotated_at[0, 0, at:at + n] = -1  # memory keeps keys before RoPE
            at += n
        self.moved = True

    def remove_retrieved(self) -> None:
        used_before = self.policy.used
        removed = self.policy.remove_retrieved()
        if removed:
            self.buffers.close_gaps(removed, used_before)
            self.moved = True


def frame_layout(header: int, cells: torch.Tensor, grid: tuple[int, int], footer: int) -> torch.Tensor:
    """The M-RoPE layout [header + n + footer, 4] of a frame sent as text (a time marker),
    n tokens at grid cells `cells` [n] (raster indices into rows x cols, a pruned frame's
    kept ones), then text that closes it: every token keeps its grid row and column, and the
    closing text starts max(rows, cols) after the tokens' start, as transformers' Qwen2-VL
    `get_rope_index` places the text after an image."""
    if footer < 1:
        raise ValueError("an M-RoPE frame needs closing text (e.g. <|vision_end|>) to carry its extent")
    rows, cols = grid
    n = cells.numel()
    layout = torch.zeros(header + n + footer, 4, dtype=torch.int32)
    layout[:header, 3] = 1
    cells = cells.to("cpu", torch.int64)
    layout[header:header + n, 1] = (cells // cols).to(torch.int32)
    layout[header:header + n, 2] = (cells % cols).to(torch.int32)
    extent = max(rows, cols)
    layout[header + n, :3] = extent
    layout[header + n, 3] = extent + 1
    layout[header + n + 1:, 3] = 1
    return layout
