"""Checkpoints: exact round trips, weights-only .pt files, explained mismatches, the bundled model."""

from __future__ import annotations

import contextlib
import io
import json
import struct
from pathlib import Path

import pytest
import torch

from vitcore import VisionTransformer, ViTConfig
from vitcore.data.shapes import SHAPE_CLASSES, SHAPES_NORMALIZATION, ShapesDataset
from vitcore.io.checkpoint import load_checkpoint, save_checkpoint

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
    model2, _ = load_checkpoint(path.read_bytes())
    model3, _ = load_checkpoint(io.BytesIO(path.read_bytes()))
    with torch.no_grad():
        assert torch.equal(model2(x), micro(x)) and torch.equal(model3(x), micro(x))


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
    assert meta["val_accuracy"] >= 0.97
    assert meta["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert model.config.image_size == (64, 64) and model.config.grid_size == (8, 8)  # maps with something to show
    assert meta["preprocessing"]["crop_size"] == [64, 64]
    # and it really classifies Shapes it has never seen (a seed used by neither its train nor val split)
    fresh = ShapesDataset(200, 64, seed=987)
    with torch.no_grad():
        accuracy = (model(fresh.tensors).argmax(-1) == fresh.targets).float().mean().item()
    assert accuracy >= 0.9


# --------------------------------------------------------------------------- hostile files
def _blob(model, config_json=None, metadata=None, extra_header=None) -> bytes:
    """A safetensors blob with ``model``'s tensors and whatever config / metadata strings we want."""
    from safetensors.torch import save

    header = {"format": "vitcore/1", "config": model.config.to_json() if config_json is None else config_json}
    if metadata is not None:
        header["metadata"] = metadata if isinstance(metadata, str) else json.dumps(metadata)
    header.update(extra_header or {})
    return save({k: v.contiguous() for k, v in model.state_dict().items()}, metadata=header)


def _raw(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


GOOD_META = {"class_names": NAMES, "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3}, "image_size": [32, 32]}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"class_names": [1, 2, 3, 4, 5]}, r"class name #0 is 1 \(int\), not a string"),
        ({"class_names": "circle,square"}, "class_names must be a list of strings"),
        ({"class_names": NAMES[:4]}, "lists 4 class names for a 5-class head"),
        ({"normalization": {"mean": [0.5] * 2, "std": [0.5] * 2}}, "one value per input channel"),
        ({"normalization": "imagenet"}, "must be \\(mean, std\\)"),
        ({"normalization": {"mean": "0.5", "std": [0.5] * 3}}, "mean must be a list of numbers"),
        ({"normalization": {"mean": [0.5] * 3, "std": [0.5, 0.0, 0.5]}}, "std .* must be > 0 .*NaN"),
        ({"normalization": {"mean": [0.5] * 3, "std": [0.5, -1, 0.5]}}, "must be > 0"),
        ({"normalization": {"mean": [0.5] * 3}}, "exactly the keys 'mean' and 'std'"),
        ({"image_size": [64, 64]}, "disagrees with the config's \\[32, 32\\]"),
        ({"image_size": "big"}, "disagrees with the config"),
    ],
)
def test_bad_metadata_is_a_value_error_that_says_what_is_wrong(micro, change, match):
    with pytest.raises(ValueError, match=match):
        load_checkpoint(_blob(micro, metadata={**GOOD_META, **change}))


def test_metadata_that_is_not_an_object_or_not_json(micro):
    with pytest.raises(ValueError, match="metadata must be a JSON object"):
        load_checkpoint(_blob(micro, metadata=["circle", "square"]))
    with pytest.raises(ValueError, match="metadata that is not JSON"):
        load_checkpoint(_blob(micro, metadata="{not json"))
    with pytest.raises(ValueError, match="config that is not valid JSON"):
        load_checkpoint(_blob(micro, config_json="{dim: 96"))
    with pytest.raises(ValueError, match=r"unknown ViTConfig fields \['colour'\]"):
        load_checkpoint(_blob(micro, config_json=json.dumps({**micro.config.to_dict(), "colour": "red"})))
    with pytest.raises(ValueError, match=r"invalid config .*heads"):
        load_checkpoint(_blob(micro, config_json=json.dumps({**micro.config.to_dict(), "heads": "four"})))
    with pytest.raises(ValueError, match="invalid config"):
        load_checkpoint(_blob(micro, config_json=json.dumps([1, 2, 3])))
    with pytest.raises(ValueError, match="invalid config"):  # inf * dim overflows int() inside ViTConfig
        load_checkpoint(_blob(micro, config_json=json.dumps({**micro.config.to_dict(), "mlp_ratio": 1e308 * 10})))


def test_absurd_config_integers_are_refused_at_once(micro):
    # ViTConfig's own message would list the divisors of dim: a loop of 10^12 steps
    config = json.dumps({**micro.config.to_dict(), "dim": 10**12 + 1})
    with pytest.raises(ValueError, match="dim=1000000000001 is far beyond"):
        load_checkpoint(_blob(micro, config_json=config))


def test_damaged_headers_are_value_errors(micro):
    good = _blob(micro)
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(struct.pack("<Q", 20) + b"{" + b"\xff" * 19 + b"data")
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(good[:30])  # cut inside the header
    with pytest.raises(ValueError, match="must map names to strings"):
        load_checkpoint(_raw({"__metadata__": {"config": {"dim": 96}}}))
    with pytest.raises(ValueError, match="header entry of tensor 'w' is malformed"):
        load_checkpoint(_raw({"__metadata__": {"config": micro.config.to_json()}, "w": {"dtype": "F32"}}))
    with pytest.raises(ValueError, match="truncated: its tensors need"):
        load_checkpoint(_raw({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, b"\0" * 16))


def test_no_exception_but_value_error_for_any_cut_or_flipped_byte(micro):
    good = _blob(micro, metadata=GOOD_META)
    (n,) = struct.unpack("<Q", good[:8])
    cuts = sorted({*range(0, 8 + n, max(1, (8 + n) // 60)), 8 + n, 8 + n + 1, len(good) - 1})
    for cut in cuts:
        with pytest.raises(ValueError):
            load_checkpoint(good[:cut])
    for pos in range(8, 8 + n, max(1, n // 80)):  # flip header bytes: broken JSON, names, numbers
        blob = bytearray(good)
        blob[pos] ^= 0x55
        with contextlib.suppress(ValueError):  # any other exception fails the test
            load_checkpoint(bytes(blob))


def test_weights_that_do_not_fit_the_config_name_the_first_differing_tensor(micro):
    narrower = json.dumps({**micro.config.to_dict(), "dim": 64})
    with pytest.raises(ValueError, match=r"shapes that differ \(\d+\): cls_token: checkpoint \(1, 1, 96\) vs model "
                                         r"\(1, 1, 64\)"):
        load_checkpoint(_blob(micro, config_json=narrower))
    bigger_image = json.dumps({**micro.config.to_dict(), "image_size": [64, 64]})
    with pytest.raises(ValueError, match=r"pos_embedding: checkpoint \(1, 17, 96\) vs model \(1, 65, 96\)"):
        load_checkpoint(_blob(micro, config_json=bigger_image, metadata={**GOOD_META, "image_size": [64, 64]}))


def test_integer_weights_are_refused(micro):
    from safetensors.torch import save

    state = {k: v.to(torch.int64) if k == "cls_token" else v for k, v in micro.state_dict().items()}
    blob = save(state, metadata={"config": micro.config.to_json()})
    with pytest.raises(ValueError, match="'cls_token' is stored as I64; weights must be floating point"):
        load_checkpoint(blob)


@pytest.fixture
def no_model_built(monkeypatch):
    """Fail the test if load_checkpoint builds any model (even on the meta device)."""
    import vitcore.io.checkpoint as ckpt

    def refuse(config):
        raise AssertionError(f"a model was built for {config}")

    monkeypatch.setattr(ckpt, "VisionTransformer", refuse)


@pytest.mark.parametrize(
    "overrides",
    [dict(image_size=65536, patch_size=16),  # 16.7 M tokens: the position embedding alone is 6 GB
     dict(image_size=65536, patch_size=65536),  # one token, but a 4.3 G-pixel input image
     dict(dim=4096, heads=32, depth=64)],  # 13 G parameters
)
def test_huge_configs_are_refused_before_anything_is_allocated(micro, no_model_built, overrides):
    config = json.dumps({**micro.config.to_dict(), **overrides,
                         "image_size": [overrides.get("image_size", 32)] * 2})
    with pytest.raises(ValueError, match=r"needs about [\d.]+ GB .*the limit is 2.0 GB.*max_bytes"):
        load_checkpoint(_blob(micro, config_json=config))


def test_memory_budget_is_a_parameter_and_counts_every_parameter(micro, tmp_path):
    from vitcore.io.checkpoint import model_memory_bytes
    from vitcore.model import parameter_count

    for config in [ViTConfig.preset("micro"), ViTConfig.preset("micro", num_classes=0, qkv_bias=False),
                   ViTConfig.preset("micro", image_size=(32, 48), distilled=True, in_channels=1, mlp_ratio=3.0),
                   ViTConfig.preset("micro", distilled=True, distilled_head=False, pool="mean"),
                   ViTConfig.preset("micro", num_registers=4, pool="cls+mean"),
                   *(ViTConfig.preset("micro", token_mixer=m) for m in ("linear", "retention", "pooling", "mlp"))]:
        assert parameter_count(config) == sum(p.numel() for p in VisionTransformer(config).parameters()), config
    path = save_checkpoint(micro, tmp_path / "m.safetensors", class_names=NAMES, normalization=SHAPES_NORMALIZATION)
    need = model_memory_bytes(micro.config)
    with pytest.raises(ValueError, match=r"the limit is 0\.0 GB"):
        load_checkpoint(path.read_bytes(), max_bytes=need - 1)
    model, _ = load_checkpoint(path.read_bytes(), max_bytes=need)
    assert model.config == micro.config
    with pytest.raises(ValueError, match="larger than the"):  # the file itself, checked before it is read
        load_checkpoint(path, max_bytes=1000)
    with pytest.raises(ValueError, match="max_bytes"):
        load_checkpoint(path, max_bytes=0)


def test_grey_scale_model_round_trip(tmp_path):
    config = ViTConfig.preset("micro", in_channels=1)
    grey = VisionTransformer(config).eval()
    with pytest.raises(ValueError, match="one value per input channel; the model reads 1 channel"):
        save_checkpoint(grey, tmp_path / "g.safetensors", class_names=NAMES, normalization=SHAPES_NORMALIZATION)
    path = save_checkpoint(grey, tmp_path / "g.safetensors", class_names=NAMES, normalization=((0.4,), (0.2,)))
    model, meta = load_checkpoint(path)
    assert model.config.in_channels == 1
    assert meta["normalization"] == {"mean": [0.4], "std": [0.2]}
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), grey(x))
    # without normalisation metadata the default has one value per channel too
    _, meta = load_checkpoint(_blob(grey))
    assert meta["normalization"] == {"mean": [0.5], "std": [0.5]}


def test_feature_backbone_round_trip(tmp_path):
    config = ViTConfig.preset("micro", num_classes=0)
    backbone = VisionTransformer(config).eval()
    with pytest.raises(ValueError, match=r"no classification head .*num_classes=0"):
        save_checkpoint(backbone, tmp_path / "b.safetensors", class_names=NAMES, normalization=SHAPES_NORMALIZATION)
    path = save_checkpoint(backbone, tmp_path / "b.safetensors", class_names=[], normalization=SHAPES_NORMALIZATION)
    model, meta = load_checkpoint(path)
    assert meta["class_names"] == [] and meta["config"]["num_classes"] == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 96) and torch.equal(out, backbone(x))  # pooled features, no head
    with pytest.raises(ValueError, match="no classification head"):
        load_checkpoint(_blob(backbone, metadata={**GOOD_META}))


def test_pt_files_with_bad_wrappers_are_value_errors(micro, tmp_path):
    for i, obj in enumerate([
        {"state_dict": micro.state_dict(), "config": [1, 2]},
        {"state_dict": micro.state_dict(), "config": {**micro.config.to_dict(), "colour": 1}},
        {"state_dict": micro.state_dict(), "config": micro.config.to_dict(), "class_names": [0, 1, 2, 3, 4]},
        {"state_dict": micro.state_dict(), "config": micro.config.to_dict(), "normalization": "imagenet"},
        {"state_dict": {}, "config": micro.config.to_dict()},
        [torch.zeros(3)],
    ]):
        path = tmp_path / f"{i}.pt"
        torch.save(obj, path)
        with pytest.raises(ValueError):
            load_checkpoint(path)


def test_odd_sources_are_value_errors(tmp_path):
    (tmp_path / "t.txt").write_text("text")
    with open(tmp_path / "t.txt") as text_mode, pytest.raises(ValueError, match="binary mode"):
        load_checkpoint(text_mode)
    with pytest.raises(ValueError, match="a path, bytes or a binary file object"):
        load_checkpoint(None)
    with pytest.raises(ValueError, match="does not exist or is not a file"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="config must be a ViTConfig"):
        load_checkpoint(b"x", config={"dim": 96})
