"""Checkpoints: exact round trips, weights-only .pt files, explained mismatches, the bundled model."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
import torch

from vitcore import VisionTransformer, ViTConfig
from vitcore.checkpoint import load, load_checkpoint, save, save_checkpoint
from vitcore.data import SHAPE_CLASSES, SHAPES_NORMALIZATION, ShapesDataset

ASSET = Path(__file__).resolve().parent.parent / "assets" / "shapes_micro.safetensors"
NAMES = ["circle", "square", "triangle", "cross", "star"]


@pytest.fixture
def micro():
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig.preset("micro")).eval()


def test_round_trip_gives_identical_logits_and_metadata(micro, tmp_path):
    path = save_checkpoint(micro, tmp_path / "m.safetensors", class_names=NAMES, normalization=SHAPES_NORMALIZATION,
                           extra={"val_accuracy": 0.5, "note": "hi"})
    model, meta = load_checkpoint(path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), micro(x))
    assert model.config == micro.config and not model.training
    assert meta["class_names"] == NAMES
    assert meta["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert meta["val_accuracy"] == 0.5 and meta["note"] == "hi" and meta["image_size"] == [32, 32]
    # bytes and file objects work too (uploads), and the aliases are the same functions
    model2, _ = load(path.read_bytes())
    model3, _ = load(io.BytesIO(path.read_bytes()))
    with torch.no_grad():
        assert torch.equal(model2(x), micro(x)) and torch.equal(model3(x), micro(x))
    assert save is save_checkpoint and load is load_checkpoint


def test_config_and_metadata_live_in_the_safetensors_header(micro, tmp_path):
    path = save_checkpoint(micro, tmp_path / "m.safetensors", class_names=NAMES, normalization=SHAPES_NORMALIZATION)
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])["__metadata__"]
    assert ViTConfig.from_json(header["config"]) == micro.config
    assert json.loads(header["metadata"])["class_names"] == NAMES


def test_pt_state_dicts_are_read_weights_only(micro, tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(micro.state_dict(), bare)
    with pytest.raises(ValueError, match="pass config="):
        load_checkpoint(bare)
    model, meta = load_checkpoint(bare, config=micro.config)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), micro(x))
    assert meta["class_names"] == [f"class_{i}" for i in range(5)]
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": micro.state_dict(), "config": micro.config.to_dict(), "class_names": NAMES}, wrapped)
    model, meta = load_checkpoint(wrapped)
    assert meta["class_names"] == NAMES


class _Evil:
    def __reduce__(self):
        return (print, ("this code must never run",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": _Evil()}, path)
    with pytest.raises(ValueError, match="weights-only"):
        load_checkpoint(path)


def test_mismatched_weights_are_listed(micro, tmp_path):
    torch.save(micro.state_dict(), tmp_path / "m.pt")
    shallower = ViTConfig.preset("micro", depth=3)
    with pytest.raises(ValueError, match=r"unexpected keys \(12\): blocks\.3\."):
        load_checkpoint(tmp_path / "m.pt", config=shallower)
    deeper = ViTConfig.preset("micro", depth=5)
    with pytest.raises(ValueError, match=r"missing keys \(12\): blocks\.4\."):
        load_checkpoint(tmp_path / "m.pt", config=deeper)
    more_classes = ViTConfig.preset("micro", num_classes=7)
    with pytest.raises(ValueError, match=r"head.weight: checkpoint \(5, 96\) vs model \(7, 96\)"):
        load_checkpoint(tmp_path / "m.pt", config=more_classes)


def test_garbage_is_refused_clearly(micro, tmp_path):
    with pytest.raises(ValueError, match=r"neither a \.safetensors checkpoint nor a PyTorch state dict"):
        load_checkpoint(b"definitely not a checkpoint")
    good = save_checkpoint(micro, tmp_path / "m.safetensors", class_names=NAMES,
                           normalization=SHAPES_NORMALIZATION).read_bytes()
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(good[: len(good) // 2])
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="3 class names"):
        save_checkpoint(micro, tmp_path / "x.safetensors", class_names=NAMES[:3], normalization=SHAPES_NORMALIZATION)
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_checkpoint(micro, tmp_path / "x.pt", class_names=NAMES, normalization=SHAPES_NORMALIZATION)


def test_peft_model_is_merged_on_save(micro, tmp_path):
    from vitcore.train import prepare_model

    peft_model = prepare_model(micro, "lora", lora_rank=2)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    x = torch.randn(2, 3, 32, 32)
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(x)
    path = save_checkpoint(peft_model, tmp_path / "lora.safetensors", class_names=NAMES,
                           normalization=SHAPES_NORMALIZATION)
    model, _ = load_checkpoint(path)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_bundled_model_meets_its_promises():
    assert ASSET.is_file(), "run `make checkpoint` to create the bundled model"
    assert ASSET.stat().st_size <= 5 * 2**20
    model, meta = load_checkpoint(ASSET)
    assert meta["class_names"] == list(SHAPE_CLASSES)
    assert meta["val_accuracy"] >= 0.95
    assert meta["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert model.config.image_size == (32, 32)
    # and it really classifies Shapes it has never seen (a seed used by neither its train nor val split)
    fresh = ShapesDataset(200, 32, seed=987)
    with torch.no_grad():
        accuracy = (model(fresh.tensors).argmax(-1) == fresh.targets).float().mean().item()
    assert accuracy >= 0.9
