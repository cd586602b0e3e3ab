"""The app's model registry: every kind loads, shared models stay untouched, checks are real."""

from __future__ import annotations

import os

import pytest
import torch

from explorer.models import ModelSpec, build_model, session_copy


def test_random_presets_are_deterministic_and_leave_the_global_rng_alone():
    spec = ModelSpec("preset", preset="micro", overrides=(("depth", 2),))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(spec)
    after = torch.rand(1)
    b = build_model(spec)
    assert torch.equal(before, after)  # building did not consume the caller's random numbers
    assert a.config.depth == 2 and a.label == "random micro (depth=2)"
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)


def test_session_copy_is_independent():
    loaded = build_model(ModelSpec("preset", preset="micro"))
    mine = session_copy(loaded)
    with torch.no_grad():
        mine.model.head.weight.add_(1.0)
    mine.model.fused_attention = False
    assert not torch.equal(mine.model.head.weight, loaded.model.head.weight)
    assert loaded.model.fused_attention


def test_unknown_kind_and_missing_upload_are_clear():
    with pytest.raises(ValueError, match="unknown model kind 'onnx'"):
        build_model(ModelSpec("onnx"))
    with pytest.raises(ValueError, match=r"upload a \.safetensors file first"):
        build_model(ModelSpec("checkpoint"))


def test_torchvision_entry_carries_its_reproduction_check():
    loaded = build_model(ModelSpec("torchvision", name="vit_b_32"))
    assert loaded.config.patch_size == 32 and loaded.config.dim == 768
    assert loaded.metadata["reproduction_max_diff"] < 1e-4
    assert loaded.mean == (0.485, 0.456, 0.406)


def test_hugging_face_local_folder_entry(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import ViTConfig as HFConfig
    from transformers import ViTForImageClassification

    torch.manual_seed(0)
    hf = ViTForImageClassification(HFConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64, num_labels=3,
                                            id2label={0: "ant", 1: "bee", 2: "wasp"},
                                            label2id={"ant": 0, "bee": 1, "wasp": 2}))
    hf.save_pretrained(tmp_path)
    loaded = build_model(ModelSpec("hf", name=str(tmp_path)))
    assert loaded.class_names == ["ant", "bee", "wasp"]
    assert loaded.metadata["reproduction_max_diff"] < 1e-4
    with pytest.raises(ValueError):
        build_model(ModelSpec("hf", name="someone/not-cached-anywhere"))
