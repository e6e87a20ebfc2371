"""Vision backends: exported ONNX graphs equal torch (tiny and SigLIP-base sizes), the
onnxruntime backend passes the delta cache's exactness tests, and TensorRT engines are
refused when their manifest does not match (TensorRT itself runs only with CUDA)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from streamvlm.backends import BackendSettings, make_backend
from streamvlm.backends.onnxruntime_backend import OnnxRuntimeBackend
from streamvlm.config import PipelineConfig
from streamvlm.backends import artifacts as manifests
from streamvlm.export.onnx_export import DELTA, FULL, INFO, export_onnx
from streamvlm.vision.delta_cache import DeltaSettings, DeltaViT
from streamvlm.vision.encoder import VisionEncoder
from streamvlm.vision.stage import VisionStage
from streamvlm.vision.towers import random_siglip
from test_delta_cache import ATOL, _scene

EXPORT_ATOL = 1e-4  # float32, the acceptance bound for exported graphs


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model, engines):
    info = export_onnx(tiny_model.tower, "tiny", engines, 384, say=lambda _: None)
    return tiny_model, info


def test_exported_graphs_equal_torch_tiny(tiny_onnx):
    _, info = tiny_onnx
    assert info["max_abs_diff"]["full"] < EXPORT_ATOL and info["max_abs_diff"]["delta"] < EXPORT_ATOL
    written = json.loads((Path(info["dir"]) / INFO).read_text())
    assert written["model"] == "tiny" and set(written["files"]) == {FULL, DELTA}


def test_exported_graphs_equal_torch_base(engines):
    info = export_onnx(random_siglip("base"), "siglip-base", engines, 384, say=lambda _: None)
    assert info["max_abs_diff"]["full"] < EXPORT_ATOL and info["max_abs_diff"]["delta"] < EXPORT_ATOL
    assert info["patches"] == 729 and info["layers"] == 12


def _ort(info) -> OnnxRuntimeBackend:
    folder = Path(info["dir"])
    backend = OnnxRuntimeBackend(folder / FULL, folder / DELTA, providers=["CPUExecutionProvider"])
    assert backend.providers == ["CPUExecutionProvider"]  # what the session really runs on
    return backend


@pytest.mark.parametrize("settings", [
    DeltaSettings(mode="threshold", threshold=-1.0, drift_bound=1.0, full_above=1.0),  # every token dynamic
    DeltaSettings(mode="threshold", threshold=0.0, drift_bound=0.0),
    DeltaSettings(mode="off"),
], ids=["all-dynamic", "threshold-0-drift-0", "off"])
def test_onnxruntime_delta_cache_lossless_settings_equal_the_full_vit(tiny_onnx, settings):
    model, info = tiny_onnx
    delta, full = DeltaViT(model.tower, settings, _ort(info)), VisionEncoder(model.tower)
    frames = _scene(4)
    kinds = []
    for frame in frames + [frames[-1]]:
        pixels = model.preprocess(frame)
        torch.testing.assert_close(delta(pixels), full(pixels), atol=ATOL, rtol=0)
        kinds.append(delta.last.kind)
    if settings.threshold < 0:
        assert "partial" in kinds  # the delta graph itself ran


def test_onnxruntime_and_torch_delta_caches_agree_frame_by_frame(tiny_onnx):
    model, info = tiny_onnx
    ort_cache, torch_cache = DeltaViT(model.tower, DeltaSettings(), _ort(info)), DeltaViT(model.tower)
    for frame in _scene(6):
        pixels = model.preprocess(frame)
        torch.testing.assert_close(ort_cache(pixels), torch_cache(pixels), atol=ATOL, rtol=0)
        assert ort_cache.last.kind == torch_cache.last.kind and ort_cache.last.tokens == torch_cache.last.tokens


def test_vision_stage_runs_on_the_onnxruntime_backend(tiny_onnx, engines, frames):
    model, _ = tiny_onnx
    base = {"fps": 0.0, "prune.mode": "off", "backend.engines_dir": str(engines)}
    ort_stage = VisionStage(PipelineConfig().replace(model={"name": "tiny"}, vision={**base, "backend.name": "onnxruntime"}),
                            model)
    torch_stage = VisionStage(PipelineConfig().replace(model={"name": "tiny"}, vision=base), model)
    assert ort_stage.encoder.backend.describe().startswith("onnxruntime (CPUExecutionProvider")
    for i, frame in enumerate(frames):
        a, b = ort_stage.process(frame, (i + 1) * 10**9), torch_stage.process(frame, (i + 1) * 10**9)
        torch.testing.assert_close(a.embeddings, b.embeddings, atol=ATOL, rtol=0)


def test_missing_or_foreign_graphs_are_refused_with_the_export_command(tiny_onnx, engines, tmp_path):
    model, _ = tiny_onnx
    with pytest.raises(FileNotFoundError, match="streamvlm export onnx --model tiny"):
        make_backend(BackendSettings("onnxruntime", str(tmp_path)), model.tower, "tiny")
    foreign = tmp_path / "tiny"
    foreign.mkdir()
    (foreign / INFO).write_text(json.dumps({"model": "siglip-base"}))
    with pytest.raises(ValueError, match="holds graphs of 'siglip-base'.*streamvlm export onnx --model tiny"):
        make_backend(BackendSettings("onnxruntime", str(tmp_path)), model.tower, "tiny")


def _manifest(**changes) -> manifests.Manifest:
    fields = {"model": "tiny", "onnx_sha256": {FULL: "aa", DELTA: "bb"}, "tensorrt": "10.3.0",
              "gpu": "Orin", "precision": "int8", **changes}
    return manifests.Manifest(**fields)


def test_a_mismatched_engine_manifest_is_refused_with_the_rebuild_command(tmp_path):
    here = {"model": "tiny", "onnx_sha256": {FULL: "aa", DELTA: "bb"}, "tensorrt": "10.3.0", "gpu": "Orin",
            "precision": "int8"}
    manifests.check(_manifest(), tmp_path, **here)  # everything matches: no error
    for field, value, named in [("gpu", "NVIDIA H100", "gpu"), ("tensorrt", "8.6.1", "tensorrt"),
                                ("model", "siglip-base", "model"), ("onnx_sha256", {FULL: "xx", DELTA: "bb"},
                                                                    "onnx_sha256 of vision_full.onnx")]:
        with pytest.raises(manifests.ManifestMismatch) as err:
            manifests.check(_manifest(**{field: value}), tmp_path, **here)
        assert named in str(err.value)
        assert f"streamvlm export trt --onnx {tmp_path} --precision int8 --calib calibration" in str(err.value)
    written = _manifest().write(tmp_path)
    assert written.name == "trt_int8.json" and manifests.Manifest.read(tmp_path, "int8") == _manifest()
    with pytest.raises(FileNotFoundError, match="streamvlm export trt"):
        manifests.Manifest.read(tmp_path, "fp16")


def _tensorrt_missing() -> str:
    if not torch.cuda.is_available():
        return "no CUDA GPU here: TensorRT engines build and run only on one"
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed (it comes with JetPack or NVIDIA's index)"
    return ""


needs_tensorrt = pytest.mark.skipif(bool(_tensorrt_missing()), reason=_tensorrt_missing() or "tensorrt present")


@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_tensorrt_engines_equal_torch(tiny_onnx, engines, precision):
    from streamvlm.export.tensorrt_build import build_engine

    model, info = tiny_onnx
    build_engine(info["dir"], precision)
    backend = make_backend(BackendSettings("tensorrt", str(engines), trt_precision=precision), model.tower, "tiny")
    cached, full = DeltaViT(model.tower, DeltaSettings(), backend), VisionEncoder(model.tower)
    tolerance = 1e-4 if precision == "fp32" else 2e-2
    for frame in _scene(4):
        pixels = model.preprocess(frame)
        torch.testing.assert_close(cached(pixels.cuda()).cpu(), full(pixels), atol=tolerance, rtol=0)


@needs_tensorrt
def test_tensorrt_refuses_an_engine_built_for_another_gpu(tiny_onnx, engines):
    from streamvlm.export.tensorrt_build import build_engine

    model, info = tiny_onnx
    build_engine(info["dir"], "fp16")
    path = manifests.Manifest.read(info["dir"], "fp16")
    manifests.Manifest(**{**path.__dict__, "gpu": "some other GPU"}).write(info["dir"])
    with pytest.raises(manifests.ManifestMismatch, match="gpu.*streamvlm export trt"):
        make_backend(BackendSettings("tensorrt", str(engines), trt_precision="fp16"), model.tower, "tiny")


def test_export_onnx_command_prints_the_differences(tmp_path):
    from test_cli import streamvlm

    result = streamvlm("export", "onnx", "--model", "tiny", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["dir"] == str(tmp_path / "tiny") and max(out["max_abs_diff"].values()) < EXPORT_ATOL
    assert "[3/3] max abs diff vs torch" in result.stderr  # the progress display


def test_calib_make_picks_frames_spread_over_a_bag(tmp_path):
    from conftest import SAMPLE_BAG
    from test_cli import streamvlm

    from streamvlm.export.calibration import calibration_frames

    result = streamvlm("calib", "make", str(SAMPLE_BAG), "--out", str(tmp_path), "--count", "8")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["frames"] == 8
    frames = calibration_frames(tmp_path)
    assert len(frames) == 8 and frames[0].ndim == 3 and not np.array_equal(frames[0], frames[-1])
    with pytest.raises(FileNotFoundError, match="streamvlm calib make"):
        calibration_frames(tmp_path / "empty")
