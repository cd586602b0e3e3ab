"""The app's model registry: every kind loads, shared models stay untouched, checks are real."""

from __future__ import annotations

import os

import pytest
import torch

from explorer.models import ModelSpec, build_model, preprocessing_from_metadata
from vitcore import ViTConfig


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


def test_preprocessing_record_comes_from_metadata_or_falls_back_to_the_normalisation():
    config = ViTConfig.preset("micro")
    stored = {"crop_size": [32, 32], "resize_size": 40, "interpolation": "bilinear", "mean": [0.1, 0.2, 0.3],
              "std": [0.5, 0.5, 0.5], "fit": "crop"}
    pre = preprocessing_from_metadata({"preprocessing": stored}, config)
    assert pre.resize_size == 40 and pre.interpolation == "bilinear" and pre.mean == (0.1, 0.2, 0.3)
    old = preprocessing_from_metadata({"normalization": {"mean": [0.4] * 3, "std": [0.2] * 3}}, config)
    assert old.crop_size == (32, 32) and old.mean == (0.4,) * 3 and old.fit == "auto"
    with pytest.raises(ValueError, match="std"):
        preprocessing_from_metadata({"preprocessing": {**stored, "std": [0, 1, 1]}}, config)


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


def test_hugging_face_local_folder_entry(tmp_path, monkeypatch):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("EXPLORER_MODELS_ROOT", str(tmp_path))
    from transformers import ViTConfig as HFConfig
    from transformers import ViTForImageClassification

    torch.manual_seed(0)
    hf = ViTForImageClassification(HFConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64, num_labels=3,
                                            id2label={0: "ant", 1: "bee", 2: "wasp"},
                                            label2id={"ant": 0, "bee": 1, "wasp": 2}))
    hf.save_pretrained(tmp_path / "ants")
    loaded = build_model(ModelSpec("hf", name="ants"))  # a folder under the models root, named relative to it
    assert loaded.class_names == ["ant", "bee", "wasp"]
    assert loaded.metadata["reproduction_max_diff"] < 1e-4
    assert loaded.preprocessing.crop_size == (32, 32)  # no preprocessor_config.json: fitted to the model
    with pytest.raises(ValueError):
        build_model(ModelSpec("hf", name="someone/not-cached-anywhere"))
    messages = []
    for path in (str(tmp_path.parent), "/no/such/folder"):  # an existing server path outside the root, a missing one
        with pytest.raises(ValueError) as refused:
            build_model(ModelSpec("hf", name=path))
        messages.append(str(refused.value).replace(path, "PATH"))
    assert messages[0] == messages[1]  # the answer does not tell whether a server path exists
