"""CLI: every flag documented, train -> info -> predict on Shapes, ignite + TensorBoard, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vitcore.cli import build_parser, main
from vitcore.data.shapes import SHAPE_CLASSES, ShapesDataset

TINY = ["--data", "shapes", "--per-class-train", "6", "--per-class-val", "2", "--batch-size", "10", "--quiet"]


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


@pytest.mark.parametrize("command", ["train", "predict", "info"])
def test_help_documents_every_flag(command):
    sub = _subparsers()[command]
    text = sub.format_help()
    for action in sub._actions:
        for flag in action.option_strings:
            assert flag in text
        if action.dest != "help":
            assert action.help, f"{command} {action.option_strings or action.dest} has no help text"


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "vitcore", "train", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    assert "--max-seconds" in out.stdout and "--strategy" in out.stdout and "--from" in out.stdout


def test_train_info_predict(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out), "--seed", "1"]) == 0
    ckpt = out / "model.safetensors"
    assert ckpt.is_file()
    history = json.loads((out / "history.json").read_text())
    assert len(history["history"]) == 2 and history["stop_reason"] == "completed"
    capsys.readouterr()

    assert main(["info", str(ckpt), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class_names"] == list(SHAPE_CLASSES)
    assert info["config"]["dim"] == 96 and info["parameters"] > 100_000
    assert info["val_accuracy"] == history["history"][-1]["best_val_accuracy"]

    ds = ShapesDataset(2, 32, seed=5)
    files = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        ds.sample(i)[0].save(path)
        files.append(str(path))
    assert main(["predict", str(ckpt), *files, "--top-k", "3", "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert [p["image"] for p in preds] == files
    for p in preds:
        probs = [t["probability"] for t in p["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(t["class"] in SHAPE_CLASSES for t in p["top"])
    assert main(["predict", str(ckpt), files[0]]) == 0
    assert capsys.readouterr().out.startswith(files[0] + ": ")


def test_train_with_ignite_tensorboard_and_from_checkpoint(tmp_path):
    first = tmp_path / "first"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(first), "--ignite", "--tensorboard"]) == 0
    assert list((first / "tensorboard").glob("events.out.tfevents.*"))
    assert list((first / "ignite").glob("best_*.pt"))
    second = tmp_path / "second"  # fine-tune the head of the first run's model
    assert main(["train", *TINY, "--epochs", "1", "--out", str(second), "--strategy", "head",
                 "--from", str(first / "model.safetensors")]) == 0
    from vitcore.io.checkpoint import load_checkpoint

    a, _ = load_checkpoint(first / "model.safetensors")
    b, meta = load_checkpoint(second / "model.safetensors")
    assert meta["strategy"] == "head"
    sa, sb = a.state_dict(), b.state_dict()
    assert all((sa[k] == sb[k]).all() for k in sa if not k.startswith("head."))  # backbone untouched
    assert not (sa["head.weight"] == sb["head.weight"]).all()


def test_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "is not 'shapes', a folder or a .zip" in capsys.readouterr().err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"garbage")
    assert main(["info", str(junk)]) == 2
    assert "neither a .safetensors" in capsys.readouterr().err
    assert main(["train", *TINY, "--out", str(tmp_path / "o"), "--from", "onnx:model"]) == 2
    assert "unknown source 'onnx'" in capsys.readouterr().err
    # the seed tutorial's command, offline: a clear message naming the missing weights file
    assert main(["train", "--data", "shapes", "--out", str(tmp_path / "o"), "--from", "torchvision:vit_b_16",
                 "--strategy", "head", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not in the cache" in err and "vit_b_16" in err and "checkpoints" in err


def test_train_from_a_hugging_face_folder(tmp_path):
    from transformers import ViTConfig as HFConfig
    from transformers import ViTForImageClassification

    from vitcore.io.checkpoint import load_checkpoint

    hf = ViTForImageClassification(HFConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64, num_labels=3))
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "out"
    assert main(["train", "--data", "shapes", "--per-class-train", "8", "--per-class-val", "4", "--epochs", "1",
                 "--strategy", "head", "--from", f"hf:{tmp_path / 'hf'}", "--out", str(out), "--quiet"]) == 0
    model, meta = load_checkpoint(out / "model.safetensors")
    assert model.config.dim == 32 and model.config.num_classes == 5 and model.config.patch_size == 8
    assert meta["strategy"] == "head"


# --------------------------------------------------------------------------- bad input: one line, exit code 2
def _one_line_error(capsys, argv, *expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"vitcore {argv[0]}: error: "), err
    assert "Traceback" not in err and len(err) < 2100
    for text in expected:
        assert text in err, err
    return err


def _checkpoint_blob(metadata: dict, **config_overrides) -> bytes:
    from safetensors.torch import save

    from vitcore import VisionTransformer, ViTConfig

    model = VisionTransformer(ViTConfig.preset("micro", **config_overrides))
    return save(dict(model.state_dict()), metadata={"config": model.config.to_json(),
                                                    "metadata": json.dumps(metadata)})


def test_bad_checkpoints_are_one_line_messages(tmp_path, capsys):
    cases = {
        "numbers.safetensors": (_checkpoint_blob({"class_names": [1, 2, 3, 4, 5]}), "not a string"),
        "std0.safetensors": (_checkpoint_blob({"normalization": {"mean": [0.5] * 3, "std": [0, 1, 1]}}), "> 0"),
        "list.safetensors": (_checkpoint_blob([]), "metadata must be a JSON object"),  # type: ignore[arg-type]
        "cut.safetensors": (_checkpoint_blob({})[:3000], "truncated"),
    }
    for name, (blob, expected) in cases.items():
        (tmp_path / name).write_bytes(blob)
        for command in (["info"], ["predict"]):
            args = [*command, str(tmp_path / name)] + ([str(tmp_path / name)] if command == ["predict"] else [])
            _one_line_error(capsys, args, expected)
    _one_line_error(capsys, ["info", "x" * 5000], "could not be read (File name too long)")
    std0 = str(tmp_path / "std0.safetensors")
    _one_line_error(capsys, ["train", *TINY, "--out", str(tmp_path / "o"), "--from", std0], "> 0")


def test_bad_data_paths_are_one_line_messages(tmp_path, capsys):
    import io
    import stat
    import zipfile

    _one_line_error(capsys, ["train", "--data", "d" * 5000, "--out", str(tmp_path / "o"), "--quiet"],
                    "File name too long")
    (tmp_path / "fake.zip").write_bytes(b"not a zip")
    _one_line_error(capsys, ["train", "--data", str(tmp_path / "fake.zip"), "--out", str(tmp_path / "o"), "--quiet"],
                    "not a readable zip")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("a/link.png")
        info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    (tmp_path / "link.zip").write_bytes(buf.getvalue())
    _one_line_error(capsys, ["train", "--data", str(tmp_path / "link.zip"), "--out", str(tmp_path / "o"), "--quiet"],
                    "symbolic link")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    _one_line_error(capsys, ["train", *TINY, "--out", str(blocker / "run")], "cannot create the output folder",
                    "pick a writable --out")


def test_bad_images_are_one_line_messages(tmp_path, capsys):
    import struct
    import zlib

    ckpt = Path(__file__).resolve().parent.parent / "assets" / "shapes_micro.safetensors"
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    (tmp_path / "bomb.png").write_bytes(bomb + chunk(b"IEND", b""))  # a 10-gigapixel header, no pixels
    _one_line_error(capsys, ["predict", str(ckpt), str(tmp_path / "broken.png")], "broken.png", "not a readable image")
    _one_line_error(capsys, ["predict", str(ckpt), str(tmp_path / "bomb.png")], "10000 MP", "the limit is 50 MP")
    _one_line_error(capsys, ["predict", str(ckpt), str(tmp_path)], "not a readable image", "IsADirectoryError")
    _one_line_error(capsys, ["predict", str(ckpt), str(tmp_path / "missing.png")], "FileNotFoundError")


def test_grey_and_backbone_checkpoints_in_the_cli(tmp_path, capsys):
    from vitcore import VisionTransformer, ViTConfig
    from vitcore.io.checkpoint import save_checkpoint

    image = tmp_path / "photo.png"
    ShapesDataset(1, 32, seed=3).sample(0)[0].save(image)
    grey = VisionTransformer(ViTConfig.preset("micro", in_channels=1))
    save_checkpoint(grey, tmp_path / "grey.safetensors", class_names=list(SHAPE_CLASSES),
                    normalization=((0.5,), (0.5,)))
    assert main(["predict", str(tmp_path / "grey.safetensors"), str(image), "--json", "--top-k", "5"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert sorted(t["class"] for t in top) == sorted(SHAPE_CLASSES)
    assert abs(sum(t["probability"] for t in top) - 1) < 1e-5  # all five classes: a full distribution
    grey_path = str(tmp_path / "grey.safetensors")
    _one_line_error(capsys, ["train", *TINY, "--out", str(tmp_path / "g"), "--from", grey_path],
                    "3-channel images but the model reads 1")
    backbone = VisionTransformer(ViTConfig.preset("micro", num_classes=0))
    save_checkpoint(backbone, tmp_path / "bb.safetensors", class_names=[], normalization=((0.5,) * 3, (0.5,) * 3))
    _one_line_error(capsys, ["predict", str(tmp_path / "bb.safetensors"), str(image)], "without a classification head")
    assert main(["info", str(tmp_path / "bb.safetensors"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class_names"] == [] and info["config"]["num_classes"] == 0
