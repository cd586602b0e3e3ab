"""One preprocessing record: stored with the weights, the same logits in the app and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from explorer.models import ModelSpec, build_model
from vitcore import VisionTransformer, ViTConfig
from vitcore.cli import main
from vitcore.data.images import IMAGENET_NORMALIZATION, Preprocessing, load_image
from vitcore.io.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=2, num_classes=3))
    pre = Preprocessing(crop_size=32, resize_size=40, interpolation="bilinear", mean=IMAGENET_NORMALIZATION[0],
                        std=IMAGENET_NORMALIZATION[1], fit="crop")
    path = save_checkpoint(model, tmp_path / "m.safetensors", class_names=["a", "b", "c"], preprocessing=pre)
    return path, model.eval(), pre


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (50, 80, 3), dtype=np.uint8))  # not square: crop matters
    path = tmp_path / "photo.png"
    image.save(path)
    return path


def test_record_round_trips_through_the_checkpoint(checkpoint):
    path, _, pre = checkpoint
    _, meta = load_checkpoint(path)
    assert Preprocessing.from_dict(meta["preprocessing"]) == pre
    assert meta["normalization"] == {"mean": list(pre.mean), "std": list(pre.std)}


def test_app_path_and_cli_give_identical_logits_for_one_photo(checkpoint, photo, capsys):
    path, _, pre = checkpoint
    loaded = build_model(ModelSpec("checkpoint", digest="x"), path.read_bytes())
    x_app = loaded.preprocessing(load_image(photo.read_bytes()))[None]  # what app_pages/_ui.model_input does
    with torch.no_grad():
        app_probs = loaded.model(x_app).softmax(-1)[0]
    assert main(["predict", str(path), str(photo), "--top-k", "3", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)[0]["top"]
    for entry in cli:
        assert entry["probability"] == pytest.approx(float(app_probs[["a", "b", "c"].index(entry["class"])]),
                                                     abs=1e-7)
    # and both differ from what a different fit of the same photo gives: the record is really applied
    other = Preprocessing(crop_size=32, mean=pre.mean, std=pre.std, fit="stretch")(Image.open(photo))[None]
    assert not torch.allclose(other, x_app)


def test_a_checkpoint_saved_before_the_record_still_loads(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=2, num_classes=2))
    meta = {"class_names": ["x", "y"], "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}, "image_size": [32, 32]}
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "old.safetensors"
    save_file(tensors, str(path), metadata={"format": "vitcore/1", "config": model.config.to_json(),
                                            "metadata": json.dumps(meta)})
    _, loaded_meta = load_checkpoint(path)
    pre = Preprocessing.from_dict(loaded_meta["preprocessing"])
    assert pre.crop_size == (32, 32) and pre.std == (0.25,) * 3 and pre.fit == "auto"

    newer = tmp_path / "new.safetensors"
    save_file(tensors, str(newer), metadata={"format": "vitcore/7", "config": model.config.to_json(),
                                             "metadata": json.dumps(meta)})
    with pytest.raises(ValueError, match=r"format 'vitcore/7', newer than this vitcore reads"):
        load_checkpoint(newer)


def _header_metadata(path) -> tuple[str, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    return header["format"], json.loads(header["metadata"])


def test_a_new_checkpoint_stores_the_record_alone(checkpoint):
    path, _, pre = checkpoint
    fmt, stored = _header_metadata(path)
    assert fmt == "vitcore/3"
    assert Preprocessing.from_dict(stored["preprocessing"]) == pre
    assert "normalization" not in stored and "image_size" not in stored  # no second copy to disagree
    _, meta = load_checkpoint(path)
    assert meta["image_size"] == [32, 32] and meta["normalization"]["std"] == list(pre.std)  # views of the record


def test_a_checkpoint_with_the_record_split_in_three_still_loads(tmp_path):
    """vitcore/2 stored the record next to normalization and image_size; the record wins."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=2, num_classes=2))
    pre = Preprocessing(crop_size=32, resize_size=36, interpolation="bilinear", mean=(0.4,) * 3, std=(0.3,) * 3,
                        fit="crop")
    meta = {"class_names": ["x", "y"], "normalization": {"mean": [0.4] * 3, "std": [0.3] * 3},
            "image_size": [32, 32], "preprocessing": pre.to_dict()}
    path = tmp_path / "v2.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"format": "vitcore/2", "config": model.config.to_json(), "metadata": json.dumps(meta)})
    loaded, loaded_meta = load_checkpoint(path)
    assert Preprocessing.from_dict(loaded_meta["preprocessing"]) == pre
    assert loaded_meta["normalization"] == {"mean": [0.4] * 3, "std": [0.3] * 3}
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_a_bundle_carries_one_record_to_the_checkpoint(tmp_path):
    from vitcore.data import DataBundle, shapes_bundle
    from vitcore.data.bundle import val_transform

    data = shapes_bundle(32, per_class_train=2, per_class_val=1, batch_size=4)
    assert isinstance(data.preprocessing, Preprocessing)
    assert data.preprocessing == val_transform(32, data.normalization)
    assert data.image_size == data.preprocessing.crop_size == (32, 32)
    assert data.normalization == data.preprocessing.normalization
    # a record with a resize margin (a backbone's, as the Teach page trains on) survives the bundle
    pre = Preprocessing(crop_size=32, resize_size=40, interpolation="bilinear", mean=IMAGENET_NORMALIZATION[0],
                        std=IMAGENET_NORMALIZATION[1], fit="crop")
    custom = DataBundle(dataloaders=data.dataloaders, class_names=data.class_names,
                        dataset_sizes=data.dataset_sizes, preprocessing=pre)
    model = VisionTransformer(ViTConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=2,
                                        num_classes=data.num_classes))
    path = save_checkpoint(model, tmp_path / "b.safetensors", class_names=custom.class_names,
                           preprocessing=custom.preprocessing)
    assert Preprocessing.from_dict(load_checkpoint(path)[1]["preprocessing"]) == pre
    with pytest.raises(ValueError, match="Preprocessing record"):
        DataBundle(dataloaders={}, class_names=[], dataset_sizes={}, preprocessing=((0.5,), (0.5,)))


def test_record_validation_and_sizes():
    with pytest.raises(ValueError, match="std"):
        Preprocessing(std=(0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="one value per channel"):
        Preprocessing(mean=(0.5, 0.5), std=(0.5, 0.5))
    with pytest.raises(ValueError, match="resize_size=100 is smaller"):
        Preprocessing(crop_size=224, resize_size=100, fit="crop")
    with pytest.raises(ValueError, match="unknown preprocessing fields"):
        Preprocessing.from_dict({"crop": 3})
    tv = Preprocessing(crop_size=224, resize_size=256, fit="crop")
    assert tv.at_size(448).resize_size == 512
    image = Image.new("RGB", (640, 480), (200, 10, 10))
    assert tv(image).shape == (3, 224, 224)
    grey = Preprocessing(crop_size=16, mean=(0.5,), std=(0.5,))
    assert grey(image).shape == (1, 16, 16)


def test_torchvision_weights_transforms_become_the_record():
    from torchvision.models import ViT_B_16_Weights

    pre = Preprocessing.from_torchvision(ViT_B_16_Weights.IMAGENET1K_V1.transforms())
    assert pre.crop_size == (224, 224) and pre.resize_size == 256 and pre.interpolation == "bilinear"
    assert pre.mean == IMAGENET_NORMALIZATION[0] and pre.fit == "crop"


@pytest.mark.slow
def test_cli_fine_tunes_the_offline_dinov2_at_its_usual_input_size(tmp_path):
    out = tmp_path / "dino"
    assert main(["train", "--data", "shapes", "--per-class-train", "4", "--per-class-val", "2", "--epochs", "1",
                 "--strategy", "head", "--from", "dinov2_small", "--out", str(out), "--quiet"]) == 0
    model, meta = load_checkpoint(out / "model.safetensors")
    assert model.config.dim == 384 and model.config.num_classes == 5 and model.config.patch_size == 14
    assert Preprocessing.from_dict(meta["preprocessing"]).crop_size == (224, 224)
