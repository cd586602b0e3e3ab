"""The live fine-tune worker: real training in the background, isolation, stop, data sources."""

from __future__ import annotations

import time

import pytest
import torch

from explorer.jobs import JobManager
from explorer.models import ModelSpec, build_model
from explorer.training import FinetuneRequest, allowed_data_folder, collected_bundle, run_finetune
from vitcore.checkpoint import load_checkpoint
from vitcore.train import replace_head


def wait(job, timeout=120.0, until=("done", "stopped", "failed")):
    end = time.monotonic() + timeout
    while job.status not in until:
        job.touch()
        assert time.monotonic() < end, f"job still {job.status}: {job.snapshot()['message']}"
        time.sleep(0.05)


@pytest.fixture
def micro():
    return build_model(ModelSpec("preset", preset="micro"))


def test_short_finetune_learns_and_leaves_the_shared_model_untouched():
    micro = build_model(ModelSpec("bundled"))  # the shared, cached model of the app
    probe = torch.randn(2, 3, 32, 32)
    before = micro.model(probe).detach().clone()
    params_before = [p.detach().clone() for p in micro.model.parameters()]
    from PIL import Image

    manager = JobManager(max_running=1)
    request = FinetuneRequest(loaded=micro, shapes_per_class=60, epochs=3, max_seconds=60, batch_size=32,
                              strategy="last_k", last_k=1,
                              probe_image=Image.new("RGB", (32, 32), (200, 30, 30)))
    job = manager.submit("session-a", lambda j: run_finetune(j, request))
    wait(job)
    snap = job.snapshot()
    assert snap["status"] == "done", snap["message"]
    summary = snap["artifacts"]["summary"]
    assert summary["best_val_accuracy"] > 0.6  # five classes: chance is 0.2
    epochs = [h for h in snap["history"] if h["kind"] == "epoch"]
    steps = [h for h in snap["history"] if h["kind"] == "step"]
    assert len(epochs) >= 1 and len(steps) >= len(epochs)
    assert len(snap["artifacts"]["timeline"]) == len(epochs) + 1  # epoch 0 = before training
    assert summary["confusion"].sum() == 5 * 12  # every validation image counted once
    # the downloadable bytes are a model that loads and predicts like the trained one
    model, meta = load_checkpoint(snap["artifacts"]["best_checkpoint"])
    assert meta["class_names"] == ["circle", "square", "triangle", "cross", "star"]
    assert model(probe).shape == (2, 5)
    # the other sessions' shared model: bit-identical logits and weights
    assert torch.equal(micro.model(probe), before)
    for p, q in zip(micro.model.parameters(), params_before):
        assert torch.equal(p, q)


def test_stop_mid_run_keeps_the_best_checkpoint(micro):
    manager = JobManager(max_running=1)
    request = FinetuneRequest(loaded=micro, shapes_per_class=40, epochs=200, max_seconds=120, batch_size=32)
    job = manager.submit("session-b", lambda j: run_finetune(j, request))
    end = time.monotonic() + 60
    while not any(h["kind"] == "epoch" for h in job.snapshot()["history"]):
        job.touch()
        assert time.monotonic() < end
        time.sleep(0.05)
    job.stop()
    wait(job)
    snap = job.snapshot()
    assert snap["status"] in ("done", "stopped")
    assert snap["artifacts"]["summary"]["stop_reason"] == "stopped"
    model, meta = load_checkpoint(snap["artifacts"]["best_checkpoint"])
    assert model.config.num_classes == 5
    best = max(h["val_accuracy"] for h in snap["history"] if h["kind"] == "epoch")
    assert meta["val_accuracy"] == pytest.approx(best)


def test_bad_data_fails_the_job_with_a_message_and_the_queue_goes_on(micro):
    manager = JobManager(max_running=1)
    bad = FinetuneRequest(loaded=micro, source="zip", zip_bytes=b"not a zip at all")
    job = manager.submit("s", lambda j: run_finetune(j, bad))
    wait(job)
    assert job.status == "failed" and "zip" in job.message.lower()


def test_server_folders_only_under_the_teacher_root(tmp_path, monkeypatch):
    monkeypatch.delenv("EXPLORER_DATA_ROOT", raising=False)
    with pytest.raises(ValueError, match="EXPLORER_DATA_ROOT"):
        allowed_data_folder("anything")
    (tmp_path / "ants_bees").mkdir()
    assert allowed_data_folder("ants_bees", str(tmp_path)) == (tmp_path / "ants_bees").resolve()
    with pytest.raises(ValueError, match="outside the allowed data folder"):
        allowed_data_folder("../../etc", str(tmp_path))
    with pytest.raises(ValueError, match="outside the allowed data folder"):
        allowed_data_folder("/etc", str(tmp_path))
    with pytest.raises(ValueError, match="is not a folder"):
        allowed_data_folder("missing", str(tmp_path))


def test_collected_images_need_two_classes_of_two(tmp_path):
    import io

    from PIL import Image

    def png(colour):
        buf = io.BytesIO()
        Image.new("RGB", (40, 40), colour).save(buf, format="PNG")
        return buf.getvalue()

    with pytest.raises(ValueError, match="at least 2 classes with at least 2 images"):
        collected_bundle({"cat": [png("red")] * 3, "dog": [png("blue")]}, (32, 32), 4, ((0.5,) * 3, (0.5,) * 3),
                         False, tmp_path / "a")
    bundle = collected_bundle({"cat": [png("red")] * 4, "dog": [png("blue")] * 4}, (32, 32), 4,
                              ((0.5,) * 3, (0.5,) * 3), False, tmp_path / "b")
    assert bundle.class_names == ["cat", "dog"]
    assert bundle.dataset_sizes["train"] + bundle.dataset_sizes["val"] == 8


def test_replace_head_keeps_the_backbone(micro):
    new = replace_head(micro.model, 3)
    assert new.config.num_classes == 3 and new.head.out_features == 3
    assert torch.equal(new.pos_embedding, micro.model.pos_embedding)
    assert torch.equal(new.blocks[0].attn.qkv.weight, micro.model.blocks[0].attn.qkv.weight)
    assert replace_head(micro.model, 5) is micro.model
    with pytest.raises(ValueError, match="positive integer"):
        replace_head(micro.model, 0)


def test_resume_continues_from_the_stopped_weights(micro):
    from explorer.training import resume_request
    from vitcore.checkpoint import save_checkpoint

    first = FinetuneRequest(loaded=micro, shapes_per_class=20, epochs=3, lr=1e-3, strategy="last_k")
    import tempfile
    from pathlib import Path

    with torch.no_grad():
        micro.model.head.bias.fill_(0.25)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        save_checkpoint(micro.model, path, class_names=micro.class_names, normalization=(micro.mean, micro.std))
        again = resume_request(first, path.read_bytes())
    assert again.strategy == "last_k" and again.epochs == 3 and again.lr == 1e-3
    assert torch.equal(again.loaded.model.head.bias, torch.full((5,), 0.25))
    assert again.loaded.class_names == micro.class_names
