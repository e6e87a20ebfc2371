"""The per-family pieces behind the adapters (`models.decoder`, `models.siglip`) against
transformers' own modules, on small random models of every supported family.

A new family's adapter adds its random model here: its decoder through the streaming
engine must give transformers' logits, and its ViT layer's pieces transformers' output.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from streamvlm.llm.engine import StreamingEngine
from streamvlm.llm.kv_cache import CacheLayout
from streamvlm.models.decoder import LlamaStyleDecoder, check_supported
from streamvlm.models.siglip import SiglipLayer

ATOL = 1e-5  # float32, summation order only


def _causal_lm(family: str):
    import transformers

    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),  # per-head q/k norms
    }[family]
    torch.manual_seed(0)
    config = config_class(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    return model_class(config).eval()


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_engine_on_each_llama_style_family_equals_transformers(family):
    model = _causal_lm(family)
    ids = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(1))
    engine = StreamingEngine(model.model, model.lm_head, CacheLayout(budget_tokens=1024), prefill_chunk=16)
    with torch.inference_mode():
        ours = engine.prefill_tokens(ids, all_logits=True)
        reference = model(input_ids=ids[None]).logits[0].float()
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)


def test_the_adapter_builds_the_decoder_the_engine_runs(tiny_model):
    assert isinstance(tiny_model.language, LlamaStyleDecoder)
    ids = tiny_model.tokenize("a short question")[0]
    layout = CacheLayout(budget_tokens=1024)
    with torch.inference_mode():
        built = StreamingEngine(tiny_model.language, tiny_model.lm_head, layout).prefill_tokens(ids)
        wrapped = StreamingEngine(tiny_model.decoder, tiny_model.lm_head, layout).prefill_tokens(ids)
    assert torch.equal(built, wrapped)


@pytest.mark.parametrize("config, refused", [
    (SimpleNamespace(model_type="qwen2", rope_parameters={"mrope_section": [16, 24, 24]}), "M-RoPE"),
    (SimpleNamespace(model_type="gpt2"), "no adapter"),
    (SimpleNamespace(model_type="qwen2", use_sliding_window=True), "sliding-window"),
    (SimpleNamespace(model_type="qwen3", layer_types=["full_attention", "sliding_attention"]), "layer types"),
], ids=["mrope", "other-family", "sliding-window", "mixed-layers"])
def test_what_the_llama_style_adapter_cannot_run_is_refused(config, refused):
    with pytest.raises(NotImplementedError, match=refused):
        check_supported(config)


@pytest.fixture(scope="module")
def siglip():
    """Two random SigLIP layers (16 patches) and the embeddings of random pixels."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    config = SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, image_size=56, patch_size=14)
    model = SiglipVisionModel(config).eval()
    vision = getattr(model, "vision_model", model)  # transformers 4 nests it, 5 does not
    x = vision.embeddings(torch.rand(1, 3, 56, 56) * 2 - 1).detach()  # [1, 16, 64]
    return vision.encoder.layers, x


def test_siglip_layer_pieces_equal_the_transformers_layer(siglip):
    layers, x = siglip
    with torch.inference_mode():
        for hf_layer in layers:
            layer = SiglipLayer(hf_layer)
            expected = hf_layer(x, None)
            out, cache = layer.full(x)
            torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
            torch.testing.assert_close(layer(x), expected, atol=ATOL, rtol=0)
            # The delta pass and STC's partial layer over the same frame's caches give the same rows.
            index = torch.tensor([0, 5, 6, 15])
            delta_out, k, v = layer.delta(x.index_select(1, index), index, cache.keys, cache.values)
            torch.testing.assert_close(delta_out, expected.index_select(1, index), atol=ATOL, rtol=0)
            torch.testing.assert_close(k, cache.keys.index_select(2, index), atol=ATOL, rtol=0)
            h, keys = layer.normed_keys(x)
            torch.testing.assert_close(layer.partial(x, h, keys, index, cache), expected, atol=ATOL, rtol=0)
            x = expected


def test_siglip_layer_flop_count(siglip):
    layer = SiglipLayer(siglip[0][0])
    width, mlp = 64, 128
    assert layer.flops(16, 16) == 2 * 16 * (4 * width * width + 2 * width * mlp) + 4 * 16 * 16 * width
    # STC: every token's key, the rest for the 4 chosen.
    assert layer.flops(4, 16, key_rows=16) == (2 * width * width * (3 * 4 + 16) + 4 * 4 * 16 * width
                                               + 2 * 4 * 2 * width * mlp)
