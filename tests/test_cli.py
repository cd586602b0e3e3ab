"""CLI: every flag documented, train -> info -> predict on Shapes, ignite + TensorBoard, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vitcore.cli import build_parser, main
from vitcore.shapes import SHAPE_CLASSES, ShapesDataset

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
    from vitcore.checkpoint import load_checkpoint

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

    from vitcore.checkpoint import load_checkpoint

    hf = ViTForImageClassification(HFConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64, num_labels=3))
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "out"
    assert main(["train", "--data", "shapes", "--per-class-train", "8", "--per-class-val", "4", "--epochs", "1",
                 "--strategy", "head", "--from", f"hf:{tmp_path / 'hf'}", "--out", str(out), "--quiet"]) == 0
    model, meta = load_checkpoint(out / "model.safetensors")
    assert model.config.dim == 32 and model.config.num_classes == 5 and model.config.patch_size == 8
    assert meta["strategy"] == "head"
