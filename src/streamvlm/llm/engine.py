"""Chunked prefill and decode over the fixed-budget streaming cache.

Runs the model's own layer pieces (norms, projections, MLP, rotary table) layer by layer
through the family-neutral `models.decoder.LanguageDecoder`, but owns attention and the
cache: keys are written rotated at their position into preallocated buffers (gpt-fast's
static cache); when eviction or retrieval moves them, they are rotated by how far they
moved before they are next read, which keeps positions contiguous (see `kv_cache`; with
M-RoPE, Qwen2-VL's 3-D positions, each slot's layout gives its position, and a move shifts
all three axes alike, which is a plain rotation by the shift). Which decoders can run (LLaVA-OneVision's Qwen2, SmolLM2's and SmolVLM's
Llama, Qwen3, Qwen2-VL's M-RoPE Qwen2) is the decoder adapter's decision.
"""

from __future__ import annotations

import heapq

import torch
import torch.nn.functional as F
from torch import nn

from streamvlm.llm.contract import ContextEngine
from streamvlm.llm.kv_cache import FRAME, TEXT, CacheFull, CacheLayout, KVBuffers, StreamingKVCache
from streamvlm.llm.memory import FrameMemory, MemorySettings
from streamvlm.models.decoder import LanguageDecoder, language_decoder


class StreamingEngine(ContextEngine):
    """One stream's context: `prefill` frames and text, decode answers, evict by the layout."""

    def __init__(self, decoder: nn.Module | LanguageDecoder, lm_head: nn.Module, layout: CacheLayout,
                 prefill_chunk: int = 512):
        # A transformers decoder is taken as a Llama-style one (which refuses what it cannot run).
        self.language = language_decoder(decoder)
        self.lm_head = lm_head
        self.prefill_chunk = prefill_chunk
        language = self.language
        self.q_heads, self.kv_heads = language.q_heads, language.kv_heads
        self.head_dim, self.scaling = language.head_dim, language.scaling
        self.device, self.dtype = language.device, language.dtype
        slots = layout.budget_tokens
        self.cache = StreamingKVCache(layout, KVBuffers(
            len(language.layers), self.kv_heads, self.head_dim, slots, self.dtype, self.device))
        # 1-D RoPE: slot i is position i, one table for every step. M-RoPE: positions follow
        # the slots' layout (kv_cache), evaluated per forward.
        self.mrope = language.position_axes == 3
        self.cos, self.sin = (None, None) if self.mrope else self._rotary_table(slots)  # [slots, head_dim] each
        # RoPE's attention scaling (1 but for scaled variants such as YaRN): rotary tables are
        # cos and sin times it, so a rotation by a shift divides it out.
        zero = torch.zeros(1, dtype=torch.long, device=self.device)
        self._rope_gain = float(self.language.rotary(self._axes(zero))[0][0, 0])
        self.score_frames = False  # record the attention each frame token gets from its frame (for memory)
        self.memory: FrameMemory | None = None
        self._reserved: int | None = None  # tokens reserved for the turn in hand; writes then never evict

    def _axes(self, positions: torch.Tensor) -> torch.Tensor:
        """1-D positions [T] as the decoder takes them ([3, T], all axes alike, with M-RoPE)."""
        return positions.expand(3, -1) if self.mrope else positions

    @torch.inference_mode()
    def _rotary_table(self, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        # The model's own rotary table (with its scaling rule), evaluated once for every slot.
        return self.language.rotary(torch.arange(slots, device=self.device))

    @property
    def length(self) -> int:
        """Tokens in the cache now."""
        return self.cache.length

    @property
    def frame_stamps(self) -> list[int]:
        return self.cache.policy.frame_stamps

    @property
    def frame_cameras(self) -> list[str]:
        return self.cache.policy.frame_cameras

    @property
    def evicted_tokens(self) -> int:
        return self.cache.evicted_tokens

    @property
    def room(self) -> int:
        """The most tokens that could be appended at once (everything evictable evicted)."""
        return self.cache.policy.max_room()

    @property
    def nbytes(self) -> int:
        held = sum(t.numel() * t.element_size() for t in self.cache.buffers.tensors)
        return held + (self.memory.nbytes if self.memory is not None else 0)

    @property
    def free(self) -> int:
        """Slots free now, without evicting anything."""
        return self.cache.policy.layout.budget_tokens - self.cache.length

    def reset(self) -> None:
        self.cache.reset()
        self._reserved = None
        if self.memory is not None:
            self.memory.clear()

    @torch.inference_mode()
    def retune(self, layout: CacheLayout, memory: MemorySettings, prefill_chunk: int) -> None:
        if layout.budget_tokens != self.cache.policy.layout.budget_tokens:
            raise ValueError("the KV budget sizes the preallocated cache; it is fixed while running")
        self.cache.policy.layout = layout  # the windows apply from the next append
        self.prefill_chunk = prefill_chunk
        if not memory.enabled:
            self.attach_memory(None)
        elif self.memory is None:
            self.attach_memory(FrameMemory(memory, self.device))
        else:
            self.memory.settings = memory  # new limits apply now, compression to new frames
            self.memory.enforce_budget()
            self.attach_memory(self.memory)

    def prefill_frame(self, embeds: torch.Tensor, stamp_ns: int, header: int = 0, footer: int = 0,
                      layout: torch.Tensor | None = None, camera: str = "") -> None:
        self.prefill(embeds, logits=False, kind=FRAME, stamp_ns=stamp_ns, evict=self._reserved is None,
                     header=header, footer=footer, layout=layout, camera=camera)

    def prefill_text(self, embeds: torch.Tensor, logits: bool = False) -> torch.Tensor | None:
        return self.prefill(embeds, logits=logits, evict=self._reserved is None)

    def mark(self) -> tuple:
        return self.cache.policy.snapshot()

    def rollback(self, mark: tuple) -> None:
        # Only appends since the mark (room was reserved first), and an append writes every
        # slot it takes (keys, values, rotation, layout) afresh: the bookkeeping is the cache.
        self.cache.policy.restore(mark)

    def decode_step(self, token: int) -> torch.Tensor:
        # Never evicts (an eviction per token would move the whole cache per token): the
        # caller reserved room for the answer. Without room the append raises CacheFull.
        return self.prefill_tokens(torch.tensor([token]), evict=False)

    # Eviction writes into the cache's and memory's tensors, made under inference mode: any
    # entry point that may evict runs under it too (a question reserving room evicts).
    @torch.inference_mode()
    def make_room(self, incoming: int, kind: str = TEXT, stamp_ns: int = 0) -> None:
        self.cache.make_room(incoming, kind, stamp_ns)

    def reserve(self, tokens: int, recall: bool = False) -> None:
        room = self.room
        if tokens > room:
            raise CacheFull(f"the question and answer need {tokens} tokens of KV cache; at most {room} can be "
                            f"freed (language.cache.budget_tokens = {self.cache.policy.layout.budget_tokens})")
        extra = self._recall_tokens() if recall else 0
        self.make_room(tokens + min(extra, room - tokens))
        self._reserved = tokens

    def _recall_tokens(self) -> int:
        """The most tokens retrieval could bring back: the top_k largest stored frames."""
        if self.memory is None:
            return 0
        return sum(heapq.nlargest(self.memory.settings.top_k, (f.tokens for f in self.memory.frames)))

    @torch.inference_mode()
    def recall(self, question: torch.Tensor) -> list[int]:
        """Bring back the stored frames that best match the question's embeddings [T, D] into the
        room that `reserve` left beyond its own tokens, until `release`; returns their stamps."""
        room = self.free - (self._reserved or 0)
        if self.memory is None or not len(self.memory) or room <= 0:
            return []
        frames = self.memory.retrieve(self.probe_queries(question), room, self.device, self.dtype)
        if frames:
            self.cache.insert_frames(frames)
        return [frame.stamp_ns for frame in frames]

    @torch.inference_mode()
    def release(self) -> None:
        self._reserved = None
        self.cache.remove_retrieved()

    @torch.inference_mode()
    def probe_queries(self, embeds: torch.Tensor) -> torch.Tensor:
        """The queries of these tokens [T, D] in every layer, before RoPE: [layers, T, q_heads, head_dim],
        computed over the context as it is. Nothing is appended (needs T free slots)."""
        captured: list[torch.Tensor] = []
        self.cache.buffers.write_layout(self.cache.length, embeds.shape[0], None)  # as text at the end
        self._forward(embeds.to(self.device, self.dtype)[None], self.cache.length, capture=captured)
        return torch.stack(captured)

    def attach_memory(self, memory: FrameMemory | None) -> None:
        """Frames evicted from now on go to `memory` (None: they are dropped)."""
        self.memory = memory
        self.cache.on_evict = self._remember if memory is not None else None
        self.score_frames = memory is not None and memory.settings.keep_ratio < 1

    def _remember(self, frames, buffers) -> None:
        for span in frames:
            slots = slice(span.start, span.start + span.length)
            layout = buffers.layout[0, 0, slots] if self.mrope else None  # 1-D: text-like, nothing to keep
            self.memory.add(self.keys_before_rope(slots), buffers.values[:, :, slots],
                            buffers.scores[0, 0, slots, 0], span.stamp_ns, layout, span.camera)

    def keys_before_rope(self, slots: slice) -> torch.Tensor:
        """The keys of these slots [layers, kv_heads, n, head_dim] as the model projected them,
        before RoPE (long-term memory matches questions against them and moves them)."""
        buffers = self.cache.buffers
        at = buffers.rotated_at[0, 0, slots, 0].long()
        keys = buffers.keys[:, :, slots]
        if self.mrope:
            positions = at[None] + buffers.layout[0, 0, slots, :3].long().T
        else:
            positions = at
        cos, sin = self._rope(positions)
        return torch.where((at >= 0)[:, None], _rotate(keys, cos, -sin), keys)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, head_dim] for positions [T] (or [3, T] with M-RoPE)."""
        if not self.mrope:
            return self.cos[positions.clamp_min(0)], self.sin[positions.clamp_min(0)]
        return self.language.rotary(positions)

    def _bring_in_step(self, upto: int) -> None:
        """Rotate the keys of slots 0..upto-1 that moved (eviction, retrieval) by how far they
        moved, and the keys back from memory by their whole position."""
        buffers = self.cache.buffers
        bases = buffers.bases(upto)
        at = buffers.rotated_at[0, 0, :upto, 0].long()
        keys = buffers.keys[:, :, :upto]
        moved = ((at >= 0) & (at != bases)).nonzero().flatten()
        if moved.numel():
            cos, sin = self.language.rotary(self._axes(bases[moved] - at[moved]))
            turned = _rotate(keys[:, :, moved].float(), cos.float() / self._rope_gain, sin.float() / self._rope_gain)
            keys[:, :, moved] = turned.to(keys.dtype)
        fresh = (at < 0).nonzero().flatten()
        if fresh.numel():
            positions = buffers.positions(upto)[:, fresh] if self.mrope else bases[fresh]
            cos, sin = self._rope(positions)
            keys[:, :, fresh] = _rotate(keys[:, :, fresh], cos, sin)
        buffers.rotated_at[0, 0, :upto, 0] = bases.to(torch.int32)

    @torch.inference_mode()
    def prefill(self, embeds: torch.Tensor, logits: bool = True, kind: str = TEXT, stamp_ns: int = 0,
                evict: bool = True, all_logits: bool = False, header: int = 0, footer: int = 0,
                layout: torch.Tensor | None = None, camera: str = "") -> torch.Tensor | None:
        """Append embeddings [T, D]; returns the last position's logits [V] ([T, V] with all_logits).

        The LM head runs only where logits are read (a hidden x vocabulary matmul).
        header, footer: a frame's first and last tokens (its time marker, image delimiters) that
        long-term memory always keeps.
        layout: the tokens' M-RoPE position rule [T, 4] (`kv_cache.frame_layout`); None: text.
        """
        steps = embeds.shape[0]
        if evict:
            self.cache.make_room(steps, kind, stamp_ns, camera)
        start = self.cache.policy.append(kind, steps, stamp_ns, camera)
        self.cache.buffers.write_layout(start, steps, layout)
        embeds = embeds.to(self.device, self.dtype)
        outputs = []
        score = self.score_frames and kind == FRAME
        for offset in range(0, steps, self.prefill_chunk):
            chunk = embeds[offset:offset + self.prefill_chunk]
            hidden = self._forward(chunk[None], start + offset, score=score)  # [1, t, D]
            if all_logits:
                outputs.append(self.lm_head(hidden)[0].float())
            elif logits and offset + self.prefill_chunk >= steps:
                outputs.append(self.lm_head(hidden[:, -1])[0].float())
        if kind == FRAME:
            # Memory keeps a frame's text (time marker, delimiters) whole and leaves it out of
            # retrieval: mark it, also when the frame is not scored (nothing compressed, or
            # memory attached only later), so that stale scores never pose as text.
            scores = self.cache.buffers.scores[0, 0, start:start + steps, 0]
            if not score:
                scores.zero_()
            scores[:header] = float("inf")
            scores[steps - footer:] = float("inf")
        if all_logits:
            return torch.cat(outputs)
        return outputs[0] if logits else None

    def prefill_tokens(self, token_ids: torch.Tensor, logits: bool = True, evict: bool = True,
                       all_logits: bool = False) -> torch.Tensor | None:
        """Append text token ids [T] (or [1, T]); returns the last logits [V]."""
        ids = token_ids.reshape(1, -1).to(self.device)
        embeds = self.language.embed(ids)[0]
        return self.prefill(embeds, logits, TEXT, evict=evict, all_logits=all_logits)

    def _forward(self, x: torch.Tensor, start: int, score: bool = False,
                 capture: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Hidden states [1, T, D] for tokens at slots start..start+T-1, written into the cache.

        score: add to `buffers.scores` the attention each token gets from these tokens.
        capture: append each layer's queries before RoPE [T, q_heads, head_dim].
        """
        steps = x.shape[1]
        end = start + steps
        group = self.q_heads // self.kv_heads
        buffers = self.cache.buffers
        if self.cache.moved:  # only after an eviction or retrieval: a host sync there is fine
            self._bring_in_step(start)
            self.cache.moved = False
        if self.mrope:
            bases = buffers.bases(end)[start:]  # one running sum per forward, for both uses
            offsets = buffers.layout[0, 0, start:end, :3].long()
            cos_q, sin_q = self.language.rotary((bases[:, None] + offsets).T)  # [T, head_dim]
        else:
            bases = torch.arange(start, end, device=self.device)
            cos_q, sin_q = self.cos[start:end], self.sin[start:end]
        buffers.rotated_at[0, 0, start:end, 0] = bases.to(torch.int32)
        mask = None
        if steps > 1:
            # Query i (slot start+i) sees slots 0..start+i. Rows are (group, T): the
            # grouped query heads of one KV head share its keys without copying them.
            slots = torch.arange(end, device=self.device)
            mask = (slots[None] <= torch.arange(start, end, device=self.device)[:, None]).repeat(group, 1)
        for index, layer in enumerate(self.language.layers):
            q, k, v = layer.qkv(x)  # [T, Hq, d], [T, Hkv, d], [T, Hkv, d], before RoPE
            if capture is not None:
                capture.append(q.float())
            buffers.write(index, start, _rotate(k.transpose(0, 1), cos_q, sin_q), v.transpose(0, 1))
            q = _rotate(q.transpose(0, 1), cos_q, sin_q)  # [Hq, T, d]
            q = q.reshape(self.kv_heads, group * steps, self.head_dim)  # [Hkv, group*T, d]
            keys, values = buffers.keys[index, :, :end], buffers.values[index, :, :end]  # [Hkv, L, d]
            out = F.scaled_dot_product_attention(q[None], keys[None], values[None], attn_mask=mask,
                                                 scale=self.scaling)  # [1, Hkv, group*T, d]
            if score:
                self._score(q, keys[:, start:end], start, index == 0)
            out = out.view(self.q_heads, steps, self.head_dim).transpose(0, 1).reshape(1, steps, -1)
            x = layer.mlp_block(layer.attention_out(x, out))
        return self.language.final_norm(x)


    def _score(self, q: torch.Tensor, keys: torch.Tensor, start: int, first_layer: bool) -> None:
        """Vision-to-vision attention, LiveVLM's compression metric: how much the chunk's own
        tokens attend to each of them (causal), summed over heads and layers. A column is
        divided by the number of queries that can see it, so early tokens are not favoured."""
        steps = keys.shape[1]
        group = q.shape[1] // steps
        logits = torch.matmul(q, keys.transpose(1, 2)).float() * self.scaling  # [Hkv, group*T, T]
        causal = torch.ones(steps, steps, dtype=torch.bool, device=self.device).tril().repeat(group, 1)
        received = logits.masked_fill(~causal, float("-inf")).softmax(dim=-1).sum(dim=(0, 1))  # [T]
        seen_by = torch.arange(steps, 0, -1, device=self.device) * (q.shape[0] * group)
        slots = self.cache.buffers.scores[0, 0, start:start + steps, 0]
        if first_layer:
            slots.zero_()
        slots.add_(received / seen_by)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as transformers' `apply_rotary_pos_emb`: x [H, T, d], cos/sin [T, d]."""
    half = x.shape[-1] // 2
    turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + turned * sin

