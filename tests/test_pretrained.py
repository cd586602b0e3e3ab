"""Converters from torchvision and Hugging Face, checked against the reference models themselves.

Every reference is small, random-initialised, has every parameter jittered (so a LayerNorm or
bias copied to the wrong place cannot hide behind ones / zeros) and, for Hugging Face, is saved
to a temp folder and loaded back through ``from_hf(folder)`` the normal way.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from vitcore import VisionTransformer, from_hf, from_torchvision, verify
from vitcore.pretrained import TORCHVISION_NAMES, load_hf, load_torchvision

transformers = pytest.importorskip("transformers")

SMALL = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
LABELS = {0: "cat", 1: "dog", 2: "bird", 3: "fish", 4: "frog"}


def jitter(module: nn.Module, scale: float = 0.1) -> nn.Module:
    """Add noise to every parameter (zero heads, unit LayerNorms and zero biases hide mapping bugs)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module.eval()


def hf_reference(cls_name: str, tmp_path: Path, **overrides) -> tuple[nn.Module, Path]:
    """A small jittered Hugging Face model of class ``cls_name``, saved to ``tmp_path``."""
    config_cls = transformers.DeiTConfig if cls_name.startswith("DeiT") else transformers.ViTConfig
    config = config_cls(**{**SMALL, "intermediate_size": 64, "id2label": LABELS, **overrides})
    model = jitter(getattr(transformers, cls_name)(config))
    folder = tmp_path / cls_name
    model.save_pretrained(folder)
    return model, folder


def tv_small(**kw) -> nn.Module:
    """The torchvision VisionTransformer of the brief, jittered (its head is zero-initialised)."""
    args = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5)
    return jitter(torchvision.models.VisionTransformer(**{**args, **kw}))


def block_outputs(model: VisionTransformer, images: torch.Tensor) -> tuple[torch.Tensor, list, list]:
    """(logits, output of every block, attention matrix of every block) via forward hooks on the explicit path."""
    hidden, attentions = [], []
    hooks = [b.register_forward_hook(lambda _m, _i, out: hidden.append(out)) for b in model.blocks]
    hooks += [b.attn.probe.register_forward_hook(lambda _m, _i, out: attentions.append(out)) for b in model.blocks]
    try:  # hooked probes: every block forms its attention matrix
        with torch.no_grad():
            logits = model(images)
    finally:
        for h in hooks:
            h.remove()
    return logits, hidden, attentions


class MakesFolder:
    """Unpickling this runs os.mkdir(path): a stand-in for code hidden in a pickled checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


# ---------------------------------------------------------------- torchvision
def test_torchvision_module_matches_logits_and_every_hidden_state():
    tv = tv_small()
    model, meta = from_torchvision(tv)
    c = model.config
    assert (c.image_size, c.patch_size, c.dim, c.depth, c.heads, c.mlp_dim, c.num_classes) == (
        (32, 32), 8, 32, 2, 2, 64, 5,
    )  # fmt: skip
    assert c.layer_norm_eps == 1e-6 and c.qkv_bias and not c.distilled
    x = torch.randn(4, 3, 32, 32)
    ref_hidden = []
    hooks = [layer.register_forward_hook(lambda _m, _i, o: ref_hidden.append(o)) for layer in tv.encoder.layers]
    with torch.no_grad():
        ref_logits = tv(x)
    for h in hooks:
        h.remove()
    logits, hidden, _ = block_outputs(model, x)
    assert ref_logits.abs().max() > 0.1  # a real head, not torchvision's zero init
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    for ours, ref in zip(hidden, ref_hidden, strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref_logits, atol=1e-5, rtol=0)  # fused path too
    assert verify(model, tv, x) < 1e-5
    assert meta["class_names"] == [f"class_{i}" for i in range(5)]
    assert meta["normalization"]["mean"] == (0.485, 0.456, 0.406) and meta["image_size"] == (32, 32)


def test_converted_model_owns_its_weights():
    tv = tv_small()
    model, _ = from_torchvision(tv)
    x = torch.randn(2, 3, 32, 32)
    before = verify(model, tv, x)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.add_(0.5)  # must not write into torchvision's in_proj_weight
    assert before < 1e-5 and verify(model, tv, x) > 1e-2
    model.blocks[0].attn.qkv.weight.data.sub_(0.5)
    assert verify(model, tv, x) < 1e-5


@pytest.mark.parametrize(
    "name, patch, dim, depth, heads, mlp_dim",
    [
        ("vit_b_16", 16, 768, 12, 12, 3072),
        ("vit_b_32", 32, 768, 12, 12, 3072),
        ("vit_l_16", 16, 1024, 24, 16, 4096),
        ("vit_l_32", 32, 1024, 24, 16, 4096),
        ("vit_h_14", 14, 1280, 32, 16, 5120),
    ],
)
def test_torchvision_family_config_mapping_on_meta_device(name, patch, dim, depth, heads, mlp_dim):
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        tv = getattr(torchvision.models, name)()
    model, _ = from_torchvision(tv)
    c = model.config
    assert (c.patch_size, c.dim, c.depth, c.heads, c.mlp_dim, c.image_size) == (
        patch, dim, depth, heads, mlp_dim, (224, 224),
    )  # fmt: skip
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in tv.parameters())


def test_torchvision_name_without_weights_builds_vit_b_16():
    model, meta = from_torchvision("vit_b_16")
    c = model.config
    assert (c.patch_size, c.dim, c.depth, c.heads, c.mlp_dim, c.num_classes, c.layer_norm_eps) == (
        16, 768, 12, 12, 3072, 1000, 1e-6,
    )  # fmt: skip
    assert sum(p.numel() for p in model.parameters()) == 86_567_656  # torchvision's documented num_params
    assert meta["source"] == "torchvision:vit_b_16" and meta["weights"] is None and len(meta["class_names"]) == 1000


def test_torchvision_refusals():
    with pytest.raises(ValueError, match="pre-logits layer"):
        from_torchvision(tv_small(representation_size=16))
    with pytest.raises(ValueError, match=r"unknown torchvision ViT 'vit_q_99'.*vit_b_16"):
        from_torchvision("vit_q_99")
    with pytest.raises(ValueError, match=r"not weights of torchvision's vit_b_16; choose one of \['DEFAULT'"):
        from_torchvision("vit_b_16", weights="IMAGENET9K")
    with pytest.raises(ValueError, match="weights= applies to a model name"):
        from_torchvision(tv_small(), weights="DEFAULT")
    with pytest.raises(ValueError, match="only 32x32 inputs"):
        verify(from_torchvision(tv_small())[0], tv_small(), torch.randn(1, 3, 48, 48))


@pytest.mark.parametrize("weights", ["DEFAULT", "IMAGENET1K_V1", "ViT_B_16_Weights.IMAGENET1K_V1", "torchvision-enum"])
def test_torchvision_missing_weights_are_refused_naming_the_cache_path(hub_dir, weights):
    if weights == "torchvision-enum":
        weights = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1
    with pytest.raises(ValueError) as err:  # how fast: benchmarks/fail_fast.py
        from_torchvision("vit_b_16", weights=weights)
    message = str(err.value)
    assert str(hub_dir / "checkpoints" / "vit_b_16-c867db91.pth") in message
    assert "https://download.pytorch.org/models/vit_b_16-c867db91.pth" in message
    assert not (hub_dir / "checkpoints" / "vit_b_16-c867db91.pth").exists()  # nothing was downloaded


def test_torchvision_pickled_code_in_cache_is_refused(hub_dir, tmp_path):
    marker = tmp_path / "code-ran"
    path = hub_dir / "checkpoints" / "vit_b_16-c867db91.pth"
    path.parent.mkdir(parents=True)
    torch.save({"conv_proj.weight": torch.zeros(1), "payload": MakesFolder(marker)}, path)
    with pytest.raises(ValueError, match=r"pickled code, which is refused \(weights_only=True\)"):
        from_torchvision("vit_b_16", weights="IMAGENET1K_V1")
    assert not marker.exists()


@pytest.mark.slow  # writes and reads a 170 MB vit_b_16 checkpoint: 9-17 s on two busy cores
def test_torchvision_weights_from_cache_carry_normalisation_and_classes(hub_dir):
    weights = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1
    source = jitter(torchvision.models.vit_b_16(), scale=0.01)
    path = hub_dir / "checkpoints" / "vit_b_16-c867db91.pth"
    path.parent.mkdir(parents=True)
    torch.save({k: v.half() for k, v in source.state_dict().items()}, path)  # half: a 170 MB file, not 340
    model, meta = from_torchvision("vit_b_16", weights=weights)
    reference = load_torchvision("vit_b_16", weights="IMAGENET1K_V1")
    x = torch.randn(1, 3, 224, 224)
    assert verify(model, reference, x) < 1e-4
    torch.testing.assert_close(model.cls_token, source.class_token.half().float())
    assert meta["weights"] == "ViT_B_16_Weights.IMAGENET1K_V1"
    assert meta["class_names"][:2] == ["tench", "goldfish"] and len(meta["class_names"]) == 1000
    assert meta["normalization"] == {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    assert meta["image_size"] == (224, 224) and meta["resize_size"] == 256


# ---------------------------------------------------------------- Hugging Face
@pytest.mark.parametrize("cls_name", ["ViTForImageClassification", "DeiTForImageClassificationWithTeacher"])
def test_hf_saved_folder_matches_logits_hidden_states_and_eager_attentions(cls_name, tmp_path):
    hf, folder = hf_reference(cls_name, tmp_path)
    model, meta = from_hf(str(folder))
    assert model.config.num_prefix_tokens == (2 if cls_name.startswith("DeiT") else 1)
    assert model.config.layer_norm_eps == hf.config.layer_norm_eps == 1e-12
    x = torch.randn(3, 3, 32, 32)
    reference = load_hf(str(folder))  # the saved copy, with eager attention
    assert reference.config._attn_implementation == "eager"
    with torch.no_grad():
        out = reference(x, output_hidden_states=True, output_attentions=True)
        ours_embed = model.embed(x)
    logits, hidden, attentions = block_outputs(model, x)
    torch.testing.assert_close(logits, out.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours_embed, out.hidden_states[0], atol=1e-4, rtol=0)
    for ours, ref in zip(hidden, out.hidden_states[1:], strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    assert len(attentions) == len(out.attentions) == 2
    T = model.config.num_prefix_tokens + 16
    for ours, ref in zip(attentions, out.attentions, strict=True):
        assert ours.shape == ref.shape == (3, 2, T, T)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert verify(model, hf, x) < 1e-4
    assert meta["class_names"] == ["cat", "dog", "bird", "fish", "frog"]
    assert meta["normalization"] == {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}  # no preprocessor_config


def test_hf_deit_with_teacher_averages_the_two_heads(tmp_path):
    hf, folder = hf_reference("DeiTForImageClassificationWithTeacher", tmp_path)
    model, _ = from_hf(str(folder))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = hf(x)
        tokens = model.forward_features(x)  # (B, 2+N, D)
        cls_logits, dist_logits = model.head(tokens[:, 0]), model.head_dist(tokens[:, 1])
        logits = model(x)
    torch.testing.assert_close(cls_logits, out.cls_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(dist_logits, out.distillation_logits, atol=1e-4, rtol=0)
    assert (out.cls_logits - out.distillation_logits).abs().max() > 0.1  # averaging is visible
    torch.testing.assert_close(logits, (out.cls_logits + out.distillation_logits) / 2, atol=1e-4, rtol=0)


def test_hf_deit_without_teacher_reads_cls_only(tmp_path):
    hf, folder = hf_reference("DeiTForImageClassification", tmp_path)
    model, meta = from_hf(str(folder))
    assert model.config.distilled and model.dist_token is not None and model.head_dist is None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=0)
    assert "CLS token only" in meta["notes"][0]


@pytest.mark.parametrize("cls_name", ["ViTModel", "DeiTModel"])
def test_hf_headless_dino_style_model_returns_features(cls_name, tmp_path):
    hf, folder = hf_reference(cls_name, tmp_path)  # ViTModel keeps its default pooler
    model, meta = from_hf(str(folder))
    assert model.config.num_classes == 0 and isinstance(model.head, nn.Identity) and model.head_dist is None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        last = hf(x).last_hidden_state  # (B, T, D); the pooler is not reproduced
        torch.testing.assert_close(model.forward_features(x), last, atol=1e-4, rtol=0)
        torch.testing.assert_close(model(x), last[:, 0], atol=1e-4, rtol=0)
    assert meta["class_names"] == [] and "pooler" in meta["notes"][0]
    assert verify(model, hf, x) < 1e-4


@pytest.mark.parametrize("cls_name", ["ViTForImageClassification", "DeiTForImageClassificationWithTeacher"])
@pytest.mark.parametrize("size", [(48, 48), (24, 24), (40, 56)])
def test_hf_position_interpolation_matches_interpolate_pos_encoding(cls_name, size, tmp_path):
    hf, folder = hf_reference(cls_name, tmp_path)
    model, _ = from_hf(str(folder))
    h, w = size
    x = torch.randn(2, 3, h, w)
    emb = hf.base_model.embeddings
    tokens = torch.zeros(1, model.num_prefix_tokens + (h // 8) * (w // 8), 32)
    with torch.no_grad():
        ref_pos = emb.interpolate_pos_encoding(tokens, h, w)  # (1, prefix+N', D)
        ours_pos = model.pos_embedding_for(model.grid_for(h, w))
        torch.testing.assert_close(ours_pos, ref_pos, atol=1e-6, rtol=0)
        assert ours_pos.shape[1] != emb.position_embeddings.shape[1]  # the grid really changed
        ref_logits = hf(x, interpolate_pos_encoding=True).logits
        torch.testing.assert_close(model(x), ref_logits, atol=1e-4, rtol=0)
    assert verify(model, hf, x) < 1e-4


def test_hf_module_and_preprocessor_metadata(tmp_path):
    hf, folder = hf_reference("ViTForImageClassification", tmp_path)
    processor = transformers.ViTImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    processor.save_pretrained(folder)
    _, meta = from_hf(str(folder))
    assert meta["normalization"] == {"mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}
    assert meta["resize_size"] == (224, 224) and meta["architecture"] == "ViTForImageClassification"
    model, meta = from_hf(hf)  # an in-memory module converts too
    x = torch.randn(2, 3, 32, 32)
    assert verify(model, hf, x) < 1e-4 and meta["family"] == "hf-vit"


def test_hf_verify_detects_a_changed_weight(tmp_path):
    hf, folder = hf_reference("ViTForImageClassification", tmp_path)
    model, _ = from_hf(str(folder))
    x = torch.randn(2, 3, 32, 32)
    assert verify(model, hf, x) < 1e-4
    with torch.no_grad():
        bias = model.blocks[1].mlp.fc2.bias
        bias.add_(torch.randn_like(bias) * 0.05)  # not a constant: the final LayerNorm would cancel that
    assert verify(model, hf, x) > 1e-2


def test_hf_missing_id_offline_is_refused_clearly():
    from huggingface_hub import constants

    with pytest.raises(ValueError) as err:  # how fast: benchmarks/fail_fast.py
        from_hf("nobody-here/vit-that-does-not-exist")
    message = str(err.value)
    assert "'nobody-here/vit-that-does-not-exist'" in message and str(constants.HF_HUB_CACHE) in message
    assert "not in the local cache" in message


def test_hf_id_loads_from_the_local_cache_without_network(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "cache" / "models--someone--tiny-vit"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    hf, folder = hf_reference("ViTForImageClassification", tmp_path)
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_bytes((folder / "config.json").read_bytes())
    with pytest.raises(ValueError, match=r"a weights file \(one of \['model\.safetensors'"):
        from_hf("someone/tiny-vit")  # config cached, weights not
    (snapshot / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    model, meta = from_hf("hf:someone/tiny-vit")
    assert meta["source"] == "hf:someone/tiny-vit" and meta["class_names"][0] == "cat"
    assert verify(model, hf, torch.randn(2, 3, 32, 32)) < 1e-4


def test_hf_bad_folders_are_explained(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        from_hf(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"has no config\.json; save the model there"):
        from_hf(str(tmp_path / "empty"))
    _, folder = hf_reference("ViTModel", tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no weights; expected one of"):
        from_hf(str(folder))


def test_hf_unsupported_models_are_refused(tmp_path):
    with pytest.raises(ValueError, match="exact GELU"):
        from_hf(hf_reference("ViTModel", tmp_path, hidden_act="gelu_new")[0])
    with pytest.raises(ValueError, match="expected one of the Hugging Face classes"):
        from_hf(transformers.ViTForMaskedImageModeling(transformers.ViTConfig(**SMALL, encoder_stride=8)))
    beit = transformers.BeitModel(transformers.BeitConfig(**SMALL, intermediate_size=64))
    beit.save_pretrained(tmp_path / "beit")
    with pytest.raises(ValueError, match=r"is a 'beit' model; vitcore reproduces the Hugging Face model types"):
        from_hf(str(tmp_path / "beit"))


def test_hf_tampered_safetensors_is_refused(tmp_path):
    _, folder = hf_reference("ViTForImageClassification", tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])  # truncated: the header promises more bytes than there are
    with pytest.raises(ValueError, match="damaged safetensors file"):
        from_hf(str(folder))
    header_len = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + header_len].replace(b'"F32"', b'"F64"', 1)  # a tensor's dtype rewritten
    weights.write_bytes(data[:8] + header + data[8 + header_len :])
    with pytest.raises(ValueError, match="could not load the weights"):
        from_hf(str(folder))
    weights.write_bytes(data)  # control: the untouched file loads
    assert isinstance(from_hf(str(folder))[0], VisionTransformer)


def test_hf_pickled_bin_with_code_is_refused_but_plain_bin_loads(tmp_path):
    hf, folder = hf_reference("ViTForImageClassification", tmp_path)
    (folder / "model.safetensors").unlink()
    state = hf.state_dict()
    torch.save(state, folder / "pytorch_model.bin")  # tensors only: allowed by weights_only=True
    model, _ = from_hf(str(folder))
    assert verify(model, hf, torch.randn(1, 3, 32, 32)) < 1e-4

    marker = tmp_path / "code-ran"
    torch.save({**state, "payload": MakesFolder(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickled file with code is refused"):
        from_hf(str(folder))
    assert not marker.exists()
    with open(folder / "pytorch_model.bin", "wb") as f:  # a bare pickle, not even a torch zip
        pickle.dump(MakesFolder(marker), f, protocol=2)
    with pytest.raises(ValueError, match="could not load the weights"):
        from_hf(str(folder))
    assert not marker.exists()


def test_verify_rejects_unknown_references():
    model, _ = from_torchvision(tv_small())
    with pytest.raises(ValueError, match="cannot verify against Linear"):
        verify(model, nn.Linear(2, 2), torch.randn(1, 3, 32, 32))
    assert TORCHVISION_NAMES[0] == "vit_b_16"


# ---------------------------------------------------------------- DINOv2 (Hugging Face)
DINO_SMALL = dict(image_size=28, patch_size=7, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)


def dinov2_reference(tmp_path: Path, registers: int = 0, **overrides) -> tuple[nn.Module, Path]:
    """A jittered Dinov2Model (or Dinov2WithRegistersModel), saved; LayerScale far from 1 so folding shows."""
    if registers:
        config = transformers.Dinov2WithRegistersConfig(**DINO_SMALL, num_register_tokens=registers, **overrides)
        model = transformers.Dinov2WithRegistersModel(config)
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**DINO_SMALL, **overrides))
    with torch.no_grad():
        for layer in model.encoder.layer:  # LayerScale values of a trained DINOv2 are far from 1
            layer.layer_scale1.lambda1.uniform_(0.2, 2.0)
            layer.layer_scale2.lambda1.uniform_(0.2, 2.0)
    jitter(model)
    folder = tmp_path / f"dinov2-r{registers}"
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize("registers", [0, 4])
@pytest.mark.parametrize("size", [(28, 28), (42, 21), (14, 14)])  # native, larger and non-square, smaller
def test_dinov2_matches_hidden_states_and_eager_attentions(registers, size, tmp_path):
    hf, folder = dinov2_reference(tmp_path, registers)
    model, meta = from_hf(str(folder))
    c = model.config
    assert c.num_registers == registers and c.num_classes == 0 and c.num_prefix_tokens == 1 + registers
    assert c.pos_interpolation == ("bicubic_antialias" if registers else "bicubic")  # as transformers 5.x does
    reference = load_hf(str(folder))
    assert reference.config._attn_implementation == "eager"
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = reference(x, output_hidden_states=True, output_attentions=True)
        ours = model.forward_intermediates(x, attention=True)
    T = 1 + registers + (size[0] // 7) * (size[1] // 7)
    assert ours.features.shape == out.last_hidden_state.shape == (2, T, 32)
    torch.testing.assert_close(ours.features, out.last_hidden_state, atol=1e-4, rtol=0)
    assert len(ours.tokens) == len(out.hidden_states) == 3  # embeddings, then each block
    for mine, ref in zip(ours.tokens, out.hidden_states, strict=True):
        torch.testing.assert_close(mine, ref, atol=1e-4, rtol=0)
    for mine, ref in zip(ours.attention, out.attentions, strict=True):
        assert mine.shape == ref.shape == (2, 2, T, T)
        torch.testing.assert_close(mine, ref, atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), out.last_hidden_state[:, 0], atol=1e-4, rtol=0)  # CLS features
    assert verify(model, hf, x) < 1e-4
    assert meta["family"] == ("hf-dinov2_with_registers" if registers else "hf-dinov2")
    assert any("LayerScale is folded" in n for n in meta["notes"])


def test_dinov2_layerscale_is_folded_into_the_linears(tmp_path):
    hf, _ = dinov2_reference(tmp_path)
    model, _ = from_hf(hf)
    layer, block = hf.encoder.layer[0], model.blocks[0]
    lam1, lam2 = layer.layer_scale1.lambda1, layer.layer_scale2.lambda1
    torch.testing.assert_close(block.attn.proj.weight, lam1[:, None] * layer.attention.o_proj.weight)
    torch.testing.assert_close(block.attn.proj.bias, lam1 * layer.attention.o_proj.bias)
    torch.testing.assert_close(block.mlp.fc2.weight, lam2[:, None] * layer.mlp.fc2.weight)
    torch.testing.assert_close(block.mlp.fc2.bias, lam2 * layer.mlp.fc2.bias)
    assert (lam1 - 1).abs().max() > 0.1  # the scales are not trivially 1


def test_dinov2_registers_need_the_antialiased_interpolation(tmp_path):
    hf, _ = dinov2_reference(tmp_path, registers=2)
    model, _ = from_hf(hf)
    x = torch.randn(1, 3, 14, 14)  # 4x4 grid -> 2x2: antialias changes the result when shrinking
    plain = VisionTransformer(model.config.replace(pos_interpolation="bicubic"))
    plain.load_state_dict(model.state_dict())
    assert verify(model, hf, x) < 1e-4 and verify(plain.eval(), hf, x) > 1e-3


def test_dinov2_refusals_name_the_feature(tmp_path):
    swiglu = transformers.Dinov2Model(transformers.Dinov2Config(**DINO_SMALL, use_swiglu_ffn=True))
    with pytest.raises(ValueError, match=r"SwiGLU MLP \(use_swiglu_ffn=True"):
        from_hf(swiglu)
    classifier = transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**DINO_SMALL, num_labels=3))
    with pytest.raises(ValueError, match=r"\[CLS, mean of the patch tokens\] concatenated"):
        from_hf(classifier)
    classifier.save_pretrained(tmp_path / "cls")
    with pytest.raises(ValueError, match=r"is a Dinov2ForImageClassification: .*reproduces \['Dinov2Model'\]"):
        from_hf(str(tmp_path / "cls"))
    with pytest.raises(ValueError, match="exact GELU"):
        from_hf(transformers.Dinov2Model(transformers.Dinov2Config(**DINO_SMALL, hidden_act="silu")))


# ---------------------------------------------------------------- weights that fit no tensor
def test_hf_folder_whose_weights_fit_no_tensor_is_refused(tmp_path):
    _, vit_folder = hf_reference("ViTModel", tmp_path, **DINO_SMALL, intermediate_size=128)  # same shapes
    _, dino_folder = dinov2_reference(tmp_path)
    (dino_folder / "model.safetensors").write_bytes((vit_folder / "model.safetensors").read_bytes())
    with pytest.raises(ValueError) as err:
        from_hf(str(dino_folder))  # a DINOv2 config with ViT weights: once loaded silently as a random net
    message = str(err.value)
    assert "do not fit its config (Dinov2Model)" in message and "tensors are missing" in message
    assert "would start from random values" in message and "does not use" in message


def test_hf_checkpoint_without_pooler_or_mask_token_still_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    hf, folder = hf_reference("ViTModel", tmp_path)  # ViTModel has a pooler that vitcore does not reproduce
    state = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith("pooler.")}, folder / "model.safetensors")
    model, _ = from_hf(str(folder))
    assert verify(model, hf, torch.randn(1, 3, 32, 32)) < 1e-4
    dino, dino_folder = dinov2_reference(tmp_path)
    state = load_file(dino_folder / "model.safetensors")
    save_file({k: v for k, v in state.items() if "mask_token" not in k}, dino_folder / "model.safetensors")
    model, _ = from_hf(str(dino_folder))
    assert verify(model, dino, torch.randn(1, 3, 28, 28)) < 1e-4


def test_hf_checkpoint_missing_one_block_tensor_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder = hf_reference("ViTForImageClassification", tmp_path)
    state = load_file(folder / "model.safetensors")
    dropped = next(k for k in state if k.endswith("layers.1.mlp.fc2.bias") or k.endswith("layer.1.output.dense.bias"))
    save_file({k: v for k, v in state.items() if k != dropped}, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"1 of the model's tensors are missing"):
        from_hf(str(folder))


# ---------------------------------------------------------------- sources an app accepts
def test_resolve_hf_source_accepts_hub_ids_and_folders_under_the_root_only(tmp_path):
    from vitcore.pretrained import resolve_hf_source

    root = tmp_path / "models"
    (root / "dino" / "small").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "escape").symlink_to(tmp_path / "secret")
    assert resolve_hf_source("facebook/dinov2-small", root) == "facebook/dinov2-small"
    assert resolve_hf_source(" hf:google/vit-base-patch16-224 ", None) == "google/vit-base-patch16-224"
    assert resolve_hf_source("dino/small", root) == str((root / "dino" / "small").resolve())
    assert resolve_hf_source(str(root / "dino" / "small"), root) == str((root / "dino" / "small").resolve())

    def refusal(text, models_root):
        with pytest.raises(ValueError) as err:
            resolve_hf_source(text, models_root)
        return str(err.value).replace(repr(text), "<text>")

    # forbidden (exists, outside the root) and missing paths get the same answer
    outside = [str(tmp_path / "secret"), "../secret", "escape", "/etc", str(root)]
    missing = [str(tmp_path / "nothing-here"), "../nothing-here", "no-such-folder", "/no/such/folder"]
    answers = {refusal(t, root) for t in outside + missing}
    assert len(answers) == 1 and "models root (EXPLORER_MODELS_ROOT)" in answers.pop()
    # without a root, no folder at all, even one that exists
    answers = {refusal(t, None) for t in [str(root / "dino" / "small"), str(tmp_path / "nothing"), "../x", "/etc"]}
    assert len(answers) == 1 and "EXPLORER_MODELS_ROOT is not set" in answers.pop()
    for bad in ["", "   ", "org/../name", "a/b/c", "-org/name", "org/name\x00"]:
        with pytest.raises(ValueError):
            resolve_hf_source(bad, root)


def test_models_root_from_env(monkeypatch, tmp_path):
    from vitcore.pretrained import models_root_from_env

    monkeypatch.delenv("EXPLORER_MODELS_ROOT", raising=False)
    assert models_root_from_env() is None
    monkeypatch.setenv("EXPLORER_MODELS_ROOT", str(tmp_path))
    assert models_root_from_env() == tmp_path


def test_from_hf_source_reads_hub_ids_only_from_the_cache_and_hides_server_paths(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from vitcore.pretrained import from_hf_source

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "models"
    hf, _ = hf_reference("ViTForImageClassification", root)  # saved as <root>/ViTForImageClassification
    model, meta, reference = from_hf_source("ViTForImageClassification", root)
    assert meta["source"] == "hf:ViTForImageClassification" and str(tmp_path) not in str(meta)
    assert (
        verify(model, reference, torch.randn(1, 3, 32, 32)) < 1e-4
        and verify(model, hf, torch.randn(1, 3, 32, 32)) < 1e-4
    )

    # an id that happens to be a folder relative to the server's working directory is still only an id
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    with pytest.raises(ValueError) as err:
        from_hf_source("org/name", None)
    assert "not in the local cache" in str(err.value) and str(tmp_path) not in str(err.value)
    # a broken folder under the root: the explanation names it as typed, not by its server path
    (root / "broken").mkdir()
    with pytest.raises(ValueError) as err:
        from_hf_source("broken", root)
    assert "has no config.json" in str(err.value) and str(tmp_path) not in str(err.value)
