"""Delta-token ViT cache: skip the work on image patches that did not change.

Two modes over the same split tower (`VisionTower`):

`stc` follows STC-Cacher (lern-to-write/STC, "STC: Streaming Token Compression"): every
`refresh` frames the ViT runs fully and keeps, per layer, the reference keys, values,
attention output and MLP output. On the frames between, each layer normalizes all
tokens and computes their keys, picks the `update_ratio` tokens whose key moved most
from the reference (lowest cosine), computes queries, values, attention and MLP for
those alone, and scatters them into the cached outputs; the other tokens take their
current residual plus the cached attention and MLP outputs.

`threshold` is ours. On a static camera most patches do not change at all, so a fixed
ratio wastes work and a per-layer choice costs a key projection of every token in every
layer. Instead the dynamic tokens are chosen once, from the pixels: a patch is dynamic
when its mean absolute change since the pixels its cached values were computed from
passes `threshold`. Only those tokens go through the layers (queries, keys, values,
attention over all tokens' cached keys and values, MLP); their new keys and values go
back into the cache. Static tokens keep their cached values outright. That ignores how
the changed tokens would have changed the static ones through attention; the share of
tokens changed since the last full pass (`drift`) bounds it, and passing
`drift_bound` runs the full ViT again. A frame with no dynamic patch returns the
previous output, and one with more than `full_above` dynamic runs the full ViT (the
partial pass would cost more).

Lossless settings, where the output equals the full ViT: `stc` with update_ratio 1;
`threshold` with drift_bound 0 (any change runs the full ViT); and the partial pass
itself with every token dynamic (threshold below 0).

`threshold` and `off` run a backend's two graphs (`backends.graphs`): the full frame, and
the delta pass on a variable number of tokens over every layer's cached keys and values;
torch, onnxruntime and TensorRT run the same two. `stc` runs the layers' pieces
(`models.siglip.SiglipLayer`) in torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from streamvlm.backends.base import VisionBackend
from streamvlm.backends.torch_backend import TorchBackend
from streamvlm.fields import check, setting
from streamvlm.models.base import VisionTower
from streamvlm.models.siglip import LayerCache, SiglipLayer, merge_heads, patch_embedding_size

MODES = ("threshold", "stc", "off")


@dataclass(frozen=True)
class DeltaSettings:
    """`vision.delta.*`: how the ViT reuses work on unchanged patches."""

    mode: str = setting("threshold", "reuse ViT work on unchanged patches: threshold (ours), stc (STC-Cacher) "
                        "or off (the full ViT every frame)", choices=MODES)
    threshold: float = setting(0.03, "threshold mode: a patch is recomputed when a quadrant's mean change passes "
                               "this (pixels 0..1; below 0: every patch)", range=(-1.0, 1.0))
    drift_bound: float = setting(0.3, "threshold mode: full ViT pass once this share of patches changed since the "
                                 "last one (0: exact)", range=(0.0, 1.0))
    full_above: float = setting(0.5, "threshold mode: full ViT pass when more than this share of patches changed",
                                range=(0.0, 1.0))
    keyframe_every: int = setting(0, "threshold mode: a full ViT pass at least every N frames whatever changed, as "
                                  "a video codec's key frame, bounding how long any approximation lives (0: only "
                                  "when change or drift asks for one)", range=(0, 1 << 20))
    refresh: int = setting(2, "stc mode: full pass every N frames", range=(1, 1000))
    update_ratio: float = setting(0.25, "stc mode: share of tokens recomputed per layer between full passes",
                                  range=(0.01, 1.0))

    def __post_init__(self):
        check(self)


@dataclass
class FrameWork:
    """What one frame cost."""

    kind: str  # "full", "partial" or "reused"
    tokens: int  # tokens recomputed (stc: per layer)
    reuse_ratio: float  # share of token-layer work skipped
    flops: int  # counted matmul FLOPs (projections, attention, MLP, patch embedding)
    recomputed: torch.Tensor | None = field(default=None, compare=False)  # [P] share of layers recomputing each token


class DeltaViT:
    """The tower's features for a stream of frames, reusing work between them (batch 1)."""

    def __init__(self, tower: VisionTower, settings: DeltaSettings = DeltaSettings(),
                 backend: VisionBackend | None = None):
        self.tower = tower
        self.settings = settings
        # threshold and off run the backend's full-frame and delta graphs; stc's per-layer
        # choice runs the tower's modules in torch.
        self.backend = backend if backend is not None else TorchBackend(tower)
        self.patch, self._embed_flops = patch_embedding_size(tower.embed)  # p, FLOPs per token
        self.last = FrameWork("full", 0, 0.0, 0)
        self.full_flops = 0  # FLOPs of one full pass, once known
        self.reset()

    def reset(self) -> None:
        """Forget the reference: the next frame runs the full ViT."""
        self._frames = 0
        self._caches: list[LayerCache] = []  # stc: per layer, from the last full pass
        self._features: dict[int, torch.Tensor] = {}  # stc: hidden_states index -> [1, P, C]
        self._output: torch.Tensor | None = None  # threshold, off: features [1, P, F]
        self._keys: torch.Tensor | None = None  # threshold: [L, 1, H, P, d]
        self._values: torch.Tensor | None = None
        self._ref_patches: torch.Tensor | None = None  # [P, 3*p*p] pixels each token's cache was made from
        self._touched: torch.Tensor | None = None  # [P] bool, changed since the last full pass
        self._since_full = 0  # threshold: frames since the last full pass

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [1, 3, S, S] -> features [1, P, C * len(feature_layers)]."""
        if pixels.shape[0] != 1:
            raise ValueError("the delta cache streams one frame at a time (batch 1)")
        mode = self.settings.mode
        if mode == "stc":
            self._stc(pixels)
            self._frames += 1
            return torch.cat([self._features[i] for i in self.tower.feature_layers], dim=-1)
        if mode == "threshold":
            self._threshold(pixels)
        else:
            self._full(pixels)
        self._frames += 1
        return self._output.clone()  # the cache goes on changing in place

    def _full(self, pixels: torch.Tensor) -> None:
        features, keys, values = self.backend.full(pixels)
        total = features.shape[1]
        self._output = features
        if self.settings.mode == "threshold":  # hold only what this mode reads back
            self._keys, self._values = keys, values
            self._ref_patches = self.patches(pixels)
        self._touched = torch.zeros(total, dtype=torch.bool, device=features.device)
        self._since_full = 0
        self.full_flops = self._graph_flops(total, total)
        self.last = FrameWork("full", total, 0.0, self.full_flops, torch.ones(total, device=features.device))

    def _graph_flops(self, rows: int, total: int) -> int:
        """FLOPs of the graphs for `rows` tokens recomputed of `total` (all: the full graph)."""
        return total * self._embed_flops + sum(layer.flops(rows, total) for layer in self.tower.layers)

    def _full_stc(self, pixels: torch.Tensor) -> None:
        x = self.tower.embed(pixels)
        wanted = set(self.tower.feature_layers)
        self._caches, self._features = [], {0: x} if 0 in wanted else {}
        for index, layer in enumerate(self.tower.layers, start=1):
            x, cache = layer.full(x)
            self._caches.append(cache)
            if index in wanted:
                self._features[index] = x
        total = x.shape[1]
        self.full_flops = self._graph_flops(total, total)
        self.last = FrameWork("full", total, 0.0, self.full_flops, torch.ones(total, device=x.device))

    def _threshold(self, pixels: torch.Tensor) -> None:
        s = self.settings
        self._since_full += 1
        # A change below the threshold everywhere (light, a lens film) never trips it, nor
        # does error a low-precision backend leaves in the cache: a key frame bounds both.
        if self._ref_patches is None or 0 < s.keyframe_every <= self._since_full:
            return self._full(pixels)
        patches = self.patches(pixels)
        change = self._change(patches)  # [P]
        dynamic = change > s.threshold
        count, total = int(dynamic.sum()), dynamic.numel()
        if count == 0:
            self.last = FrameWork("reused", 0, 1.0, 0, torch.zeros_like(change))
            return None
        touched = self._touched | dynamic
        if count > s.full_above * total or float(touched.float().mean()) > s.drift_bound:
            return self._full(pixels)
        index = dynamic.nonzero().flatten()
        features, keys, values = self.backend.delta(pixels, index, self._keys, self._values)
        self._keys.index_copy_(3, index, keys)
        self._values.index_copy_(3, index, values)
        self._output.index_copy_(1, index, features)
        self._ref_patches.index_copy_(0, index, patches.index_select(0, index))
        self._touched = touched
        self.last = FrameWork("partial", count, 1.0 - count / total, self._graph_flops(count, total),
                              dynamic.float())
        return None

    def _change(self, patches: torch.Tensor) -> torch.Tensor:
        """[P] how much each patch changed since its reference: the largest mean absolute
        change over the patch's four quadrants, so an object covering a quarter of a patch
        is not diluted by the three quarters that stayed."""
        p = self.patch
        diff = (patches - self._ref_patches).abs().view(-1, 3, p, p).mean(dim=1)  # [P, p, p]
        quadrants = F.avg_pool2d(diff[:, None], kernel_size=p // 2, stride=p // 2)  # [P, 1, 2, 2] (p even)
        return quadrants.flatten(1).amax(dim=1)

    @property
    def reference_patches(self) -> torch.Tensor | None:
        """[P, 3*p*p] the pixels each token's cached values were computed from (None before the first frame)."""
        return self._ref_patches

    def patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [1, 3, S, S] (normalized) -> [P, 3*p*p] in the 0..1 range of the camera."""
        p = self.patch
        rows = pixels.shape[2] // p * p
        cols = pixels.shape[3] // p * p
        cut = pixels[0, :, :rows, :cols].float()
        cut = cut * torch.tensor(self.tower.pixel_std, device=cut.device)[:, None, None]  # back to 0..1 spans
        return F.unfold(cut[None], kernel_size=p, stride=p)[0].T

    def _stc(self, pixels: torch.Tensor) -> None:
        s = self.settings
        if not self._caches or self._frames % s.refresh == 0:
            return self._full_stc(pixels)
        x = self.tower.embed(pixels)
        total = x.shape[1]
        flops = total * self._embed_flops
        chosen = max(1, min(total, int(total * s.update_ratio)))
        features = {0: x} if 0 in self._features else {}
        recomputed = torch.zeros(total, device=x.device)
        for layer_index, (layer, ref) in enumerate(zip(self.tower.layers, self._caches), start=1):
            x, index = _stc_layer(layer, x, ref, chosen)
            flops += layer.flops(chosen, total, key_rows=total)  # every token's key, the chosen's rest
            recomputed[index] += 1.0 / len(self._caches)
            if layer_index in self._features:
                features[layer_index] = x
        self._features.update(features)
        self.last = FrameWork("partial", chosen, 1.0 - chosen / total, flops, recomputed)
        return None


def _stc_layer(layer: SiglipLayer, x: torch.Tensor, ref: LayerCache,
               chosen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """STC-Cacher's layer between refreshes: x [1, P, C] -> [1, P, C], and the tokens chosen [n]:
    those whose key moved most from the reference (lowest cosine similarity) are recomputed."""
    h, k = layer.normed_keys(x)  # every token's key [1, P, C], to find the ones that moved
    similarity = F.cosine_similarity(k, merge_heads(ref.keys), dim=-1)[0]  # [P]
    index = torch.topk(similarity, chosen, largest=False).indices.sort().values  # [n]
    return layer.partial(x, h, k, index, ref), index
