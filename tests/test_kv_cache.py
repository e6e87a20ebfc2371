"""The streaming cache's policy and buffers, without a model: property tests over random streams.

A shadow list holds, for every slot, which stream token is there. Each eviction is applied
to it by the ranges the policy returns, so the tests check the bookkeeping against an
independent model of the content, not against itself.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamvlm.llm.kv_cache import (
    FRAME,
    TEXT,
    CacheFull,
    CacheLayout,
    KVBuffers,
    StreamingPolicy,
    frame_layout,
)

S = 10**9

layouts = st.builds(
    CacheLayout,
    budget_tokens=st.integers(64, 400),
    sink_tokens=st.integers(0, 8),
    text_sink_tokens=st.integers(0, 24),
    text_window_tokens=st.integers(0, 64),
    vision_window_s=st.sampled_from([0.0, 2.0, 5.0, 16.0]),
    vision_window_frames=st.integers(0, 6),
)
# One step of a stream: a frame (tokens, seconds since the previous frame), text (a
# caption or answer being fed), or a question with room reserved for its answer.
steps = st.one_of(
    st.tuples(st.just("frame"), st.integers(1, 40), st.sampled_from([0.5, 1.0, 3.0])),
    st.tuples(st.just("text"), st.integers(1, 30), st.just(0.0)),
    st.tuples(st.just("ask"), st.integers(1, 20), st.integers(0, 30)),
)


class Shadow:
    """What each slot holds: (stream index, kind, frame stamp)."""

    def __init__(self):
        self.slots: list[tuple[int, str, int]] = []
        self.streamed = 0
        self.frames: dict[int, int] = {}  # stamp -> token count

    def append(self, kind: str, n: int, stamp: int = 0) -> None:
        self.slots += [(self.streamed + i, kind, stamp) for i in range(n)]
        self.streamed += n
        if kind == FRAME:
            self.frames[stamp] = n

    def remove(self, removed: list[tuple[int, int]]) -> None:
        gone = {slot for start, n in removed for slot in range(start, start + n)}
        assert removed == sorted(removed) and len(gone) == sum(n for _, n in removed), "ranges overlap"
        self.slots = [s for i, s in enumerate(self.slots) if i not in gone]


def _feed(policy: StreamingPolicy, shadow: Shadow, kind: str, n: int, stamp: int = 0, evict: bool = True):
    if evict:
        shadow.remove(policy.evict_for(n, kind, stamp))
    policy.append(kind, n, stamp)
    shadow.append(kind, n, stamp)


def _check(policy: StreamingPolicy, shadow: Shadow, last_kind: str, last_n: int) -> None:
    layout = policy.layout
    policy.check()
    assert policy.used == len(shadow.slots) <= layout.budget_tokens
    # Order: slots stay in stream order.
    indices = [i for i, _, _ in shadow.slots]
    assert indices == sorted(indices)
    # Sinks: the first stream tokens are all still there.
    sinks = min(layout.sink_tokens, shadow.streamed)
    assert indices[:sinks] == list(range(sinks))
    # Frames leave whole.
    held: dict[int, int] = {}
    for _, kind, stamp in shadow.slots:
        if kind == FRAME:
            held[stamp] = held.get(stamp, 0) + 1
    assert all(shadow.frames[stamp] == n for stamp, n in held.items())
    assert sorted(held) == policy.frame_stamps
    # Spans agree with the shadow, slot by slot.
    for span in policy.spans:
        kinds = {kind for _, kind, _ in shadow.slots[span.start:span.start + span.length]}
        assert kinds == {span.kind}
    # Windows, right after the step that applied them.
    unpinned = [s for s in policy.spans if not s.pinned]
    frames = [s for s in unpinned if s.kind == FRAME]
    if last_kind == FRAME and frames:
        newest = max(policy.frame_stamps)
        if layout.vision_window_s:
            assert all(newest - f.stamp_ns < layout.vision_window_s * S for f in frames)
        if layout.vision_window_frames:
            assert len(frames) <= layout.vision_window_frames
    text = sum(s.length for s in unpinned if s.kind == TEXT)
    assert text <= max(layout.text_window_tokens, last_n if last_kind == TEXT else 0) + (
        last_n if last_kind == "ask" else 0)


@settings(max_examples=300, deadline=None)
@given(layout=layouts, stream=st.lists(steps, min_size=1, max_size=60))
def test_random_streams_keep_the_budget_and_the_layout(layout, stream):
    policy, shadow = StreamingPolicy(layout), Shadow()
    stamp = 0
    _feed(policy, shadow, TEXT, 6)  # the stream prefix (system prompt)
    for kind, n, extra in stream:
        if n > policy.max_room():
            with pytest.raises(CacheFull):
                policy.evict_for(n, TEXT)
            continue
        if kind == "frame":
            stamp += int(extra * S)
            _feed(policy, shadow, FRAME, n, stamp)
            _check(policy, shadow, FRAME, n)
        elif kind == "text":
            _feed(policy, shadow, TEXT, n)
            _check(policy, shadow, TEXT, n)
        else:  # a question of n tokens, then an answer of up to `extra` tokens, room reserved once
            answer = extra
            if n + answer > policy.max_room():
                continue
            shadow.remove(policy.evict_for(n + answer, TEXT))
            _feed(policy, shadow, TEXT, n, evict=False)
            for _ in range(answer):  # decode steps never evict
                _feed(policy, shadow, TEXT, 1, evict=False)
            _check(policy, shadow, "ask", n + answer)


def test_sinks_survive_any_number_of_evictions():
    layout = CacheLayout(budget_tokens=200, sink_tokens=4, text_sink_tokens=10, text_window_tokens=20,
                         vision_window_s=3.0)
    policy, shadow = StreamingPolicy(layout), Shadow()
    _feed(policy, shadow, TEXT, 12)  # 4 sinks + 8 of the text sink
    for i in range(1, 2001):
        _feed(policy, shadow, FRAME, 30, i * S)
        if i % 7 == 0:
            _feed(policy, shadow, TEXT, 9)
    # The 12 first tokens, then the first 2 text tokens after frame 7 complete the text sink.
    assert [i for i, _, _ in shadow.slots[:14]] == list(range(12)) + [12 + 30 * 7, 13 + 30 * 7]
    assert policy.spans[0].pinned and policy.spans[0].length == 14  # 4 sinks + a 10-token text sink
    assert len(policy.frame_stamps) == 3  # the 3 s vision window at 1 fps


def test_a_frame_reaching_into_the_sinks_is_kept_whole():
    policy, shadow = StreamingPolicy(CacheLayout(budget_tokens=100, sink_tokens=8, text_sink_tokens=0,
                                                 text_window_tokens=0, vision_window_s=1.0)), Shadow()
    _feed(policy, shadow, TEXT, 3)
    for i in range(1, 20):
        _feed(policy, shadow, FRAME, 10, i * S)
    assert policy.frame_stamps == [S, 19 * S]  # the first frame holds sinks 3..7, so it stays
    assert policy.used == 23


def test_budget_evicts_oldest_first_when_windows_allow_more():
    policy, shadow = StreamingPolicy(CacheLayout(budget_tokens=100, sink_tokens=0, text_sink_tokens=0,
                                                 text_window_tokens=1000, vision_window_s=0.0)), Shadow()
    for i in range(1, 8):
        _feed(policy, shadow, FRAME, 30, i * S)
    assert policy.frame_stamps == [5 * S, 6 * S, 7 * S]
    _feed(policy, shadow, TEXT, 25)  # the oldest frame leaves for the text
    assert policy.frame_stamps == [6 * S, 7 * S] and policy.used == 85


def test_text_window_evicts_old_text_token_by_token():
    policy, shadow = StreamingPolicy(CacheLayout(budget_tokens=500, sink_tokens=2, text_sink_tokens=3,
                                                 text_window_tokens=10)), Shadow()
    for _ in range(5):
        _feed(policy, shadow, TEXT, 7)
    kept = [i for i, _, _ in shadow.slots]
    assert kept == [0, 1, 2, 3, 4] + list(range(25, 35))


def test_too_long_for_the_budget_is_refused_and_changes_nothing():
    policy, shadow = StreamingPolicy(CacheLayout(budget_tokens=50, sink_tokens=4, text_sink_tokens=10)), Shadow()
    _feed(policy, shadow, TEXT, 20)
    _feed(policy, shadow, FRAME, 20, S)
    spans = [(s.kind, s.start, s.length) for s in policy.spans]
    with pytest.raises(CacheFull):
        policy.evict_for(37, TEXT)  # 14 pinned + 37 > 50
    assert [(s.kind, s.start, s.length) for s in policy.spans] == spans
    with pytest.raises(CacheFull):
        policy.append(TEXT, 11)


@settings(max_examples=200, deadline=None)
@given(used=st.integers(1, 60), data=st.data())
def test_close_gaps_equals_deleting_the_ranges(used, data):
    cuts = sorted(data.draw(st.sets(st.integers(0, used - 1), max_size=used)))
    removed: list[tuple[int, int]] = []
    for slot in cuts:  # consecutive removed slots form one range, as the policy reports them
        if removed and removed[-1][0] + removed[-1][1] == slot:
            removed[-1] = (removed[-1][0], removed[-1][1] + 1)
        else:
            removed.append((slot, 1))
    buffers = KVBuffers(layers=2, kv_heads=3, head_dim=4, slots=64, dtype=torch.float32, device=torch.device("cpu"))
    content = torch.arange(used, dtype=torch.float32)[None, None, :, None].expand(2, 3, used, 4)
    buffers.keys[:, :, :used] = content
    buffers.values[:, :, :used] = -content
    pointers = buffers.keys.data_ptr(), buffers.values.data_ptr()
    buffers.close_gaps(removed, used)
    kept = torch.tensor([i for i in range(used) if i not in set(cuts)], dtype=torch.float32)
    assert torch.equal(buffers.keys[0, 0, :len(kept), 0], kept)
    assert torch.equal(buffers.values[1, 2, :len(kept), 3], -kept)
    assert (buffers.keys.data_ptr(), buffers.values.data_ptr()) == pointers  # moved in place


def _mrope_positions(spans: list[tuple[str, int, int]]) -> torch.Tensor:
    """Qwen2-VL's rule laid out fresh (transformers' get_rope_index): text has t = h = w =
    the next index; a frame of a (rows x cols) grid has t = the next index and h, w over the
    grid from it, and the text after it starts max(rows, cols) later ("<|vision_end|>",
    here one token closing each frame)."""
    columns, nxt = [], 0
    for kind, rows, cols in spans:
        if kind == TEXT:
            columns.append(torch.arange(nxt, nxt + rows).expand(3, rows))
            nxt += rows
        else:
            h, w = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
            columns.append(torch.stack([torch.zeros(rows * cols, dtype=torch.long), h.flatten(), w.flatten()]) + nxt)
            nxt += max(rows, cols)
            columns.append(torch.tensor([nxt] * 3)[:, None])  # the closing text
            nxt += 1
    return torch.cat(columns, dim=1)


def test_mrope_layout_after_eviction_is_the_fresh_layout_of_the_kept_tokens():
    stream = [(TEXT, 5, 0), (FRAME, 3, 4), (TEXT, 2, 0), (FRAME, 2, 5), (TEXT, 3, 0)]
    buffers = KVBuffers(1, 1, 4, 64, torch.float32, torch.device("cpu"))
    slot, spans = 0, []
    for kind, rows, cols in stream:
        layout = None if kind == TEXT else frame_layout(0, torch.arange(rows * cols), (rows, cols), 1)
        steps = rows if kind == TEXT else rows * cols + 1
        buffers.write_layout(slot, steps, layout)
        spans.append((slot, steps))
        slot += steps
    assert torch.equal(buffers.positions(slot), _mrope_positions(stream))
    buffers.close_gaps([spans[1]], slot)  # the first frame leaves
    assert torch.equal(buffers.positions(slot - spans[1][1]), _mrope_positions([stream[0], *stream[2:]]))


def test_a_pruned_frame_keeps_its_tokens_grid_positions():
    layout = frame_layout(2, torch.tensor([1, 5, 6]), (3, 4), 1)  # a marker of 2 tokens, 3 of 12 cells kept
    buffers = KVBuffers(1, 1, 4, 16, torch.float32, torch.device("cpu"))
    buffers.write_layout(0, 6, layout)
    buffers.write_layout(6, 1, None)
    expected = torch.tensor([[0, 1, 2, 2, 2, 6, 7], [0, 1, 2, 3, 3, 6, 7], [0, 1, 3, 3, 4, 6, 7]])
    assert torch.equal(buffers.positions(7), expected)
