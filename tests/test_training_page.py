"""The live fine-tune worker: real training in the background, isolation, stop, data sources."""

from __future__ import annotations

import time

import pytest
import torch

from explorer.jobs import JobManager
from explorer.models import ModelSpec, build_model
from explorer.training import FinetuneRequest, allowed_data_folder, collected_bundle, run_finetune
from vitcore.io.checkpoint import load_checkpoint
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
    from vitcore.io.checkpoint import save_checkpoint

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


# --------------------------------------------------------------------------- data sources are hostile input
def _png(colour, size=(24, 24)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _write_png(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png(colour))


HALF = ((0.5,) * 3, (0.5,) * 3)


def test_links_out_of_the_data_root_are_refused(tmp_path, monkeypatch, micro):
    from explorer.training import build_bundle

    root, outside = tmp_path / "root", tmp_path / "private"
    for cls in ("ants", "bees"):
        for i in range(2):
            _write_png(root / "set" / cls / f"{i}.png", (200, 20 * i, 0))
    for i in range(2):
        _write_png(outside / "exam_answers" / f"{i}.png", (0, 0, 0))
    monkeypatch.setenv("EXPLORER_DATA_ROOT", str(root))
    request = FinetuneRequest(loaded=micro, source="folder", folder="set", batch_size=4)
    assert build_bundle(request, tmp_path / "work").class_names == ["ants", "bees"]

    (root / "set" / "answers").symlink_to(outside / "exam_answers", target_is_directory=True)
    with pytest.raises(ValueError, match=r"class folder .*answers.* is a link to a place outside"):
        build_bundle(request, tmp_path / "work")
    (root / "set" / "answers").unlink()
    (root / "set" / "ants" / "copied.png").symlink_to(outside / "exam_answers" / "0.png")
    with pytest.raises(ValueError, match=r"image .*copied\.png.* is a link to a file outside"):
        build_bundle(request, tmp_path / "work")
    with pytest.raises(ValueError, match="not a usable folder name"):
        allowed_data_folder("x" * 5000, str(root))


@pytest.mark.parametrize(
    ("collected", "match"),
    [
        ({"..": [b"a", b"b"], "dog": [b"a", b"b"]}, r"class name '\.\.' is not allowed"),
        ({"  ": [b"a", b"b"], "dog": [b"a", b"b"]}, "a class name is empty"),
        ({"Cat": [b"a", b"b"], " cat ": [b"a", b"b"]}, r"class names 'Cat' and 'cat' are the same"),
        ([("cat", [b"a", b"b"]), ("cat", [b"a", b"b"])], r"class names 'cat' and 'cat' are the same"),
        ({"x" * 61: [b"a", b"b"], "dog": [b"a", b"b"]}, "61 characters long; the limit is 60"),
        ({"cat\ndog": [b"a", b"b"], "dog": [b"a", b"b"]}, "control characters"),
        ({"cat": [_png("red")] * 2, "dog": [_png("blue"), b"no"]}, r"image 2 of class 'dog': This file is not"),
    ],
)
def test_collected_class_names_are_checked(tmp_path, collected, match):
    with pytest.raises(ValueError, match=match):
        collected_bundle(collected, (32, 32), 4, HALF, False, tmp_path / "work")


def test_collected_names_are_labels_never_paths(tmp_path):
    from explorer.training import checkpoint_bytes

    work = tmp_path / "job" / "work"
    names = ["../escape", "<b>x</b>", "a/b\\c"]
    collected = {name: [_png((80 * i, 40, 200 - 60 * i)) for _ in range(3)] for i, name in enumerate(names)}
    bundle = collected_bundle(collected, (32, 32), 4, HALF, False, work)
    assert bundle.class_names == names  # the labels, exactly as typed (HTML stays text)
    written = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
    assert written == [f"collected/class_{c:03d}/img_{i:04d}.png" for c in range(3) for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == ["work"]  # nothing written next to it
    labels = {y for _, y in bundle.datasets["train"]} | {y for _, y in bundle.datasets["val"]}
    assert labels == {0, 1, 2}
    model = replace_head(build_model(ModelSpec("preset", preset="micro")).model, 3)
    _, meta = load_checkpoint(checkpoint_bytes(model, bundle.class_names, HALF))
    assert meta["class_names"] == names


def _job_temp_folders(tmp_path, monkeypatch):
    import tempfile

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def _left_in(temp) -> list[str]:
    """What jobs left in the temp folder (torch's own compile cache, torchinductor_*, is not ours)."""
    return sorted(p.name for p in temp.iterdir() if not p.name.startswith("torchinductor"))


def test_temporary_folders_are_removed_when_a_job_ends(tmp_path, monkeypatch, micro):
    import io
    import zipfile

    temp = _job_temp_folders(tmp_path, monkeypatch)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for cls, colour in (("red", (220, 0, 0)), ("blue", (0, 0, 220))):
            for i in range(4):
                z.writestr(f"{cls}/{i}.png", _png(colour))
    manager = JobManager(max_running=1)
    # a job that fails after its zip was extracted (unknown strategy): the traceback keeps the bundle
    # alive, so the extraction folder would stay until garbage collection without the explicit clean-up
    failing = FinetuneRequest(loaded=micro, source="zip", zip_bytes=buf.getvalue(), strategy="everything", epochs=1)
    job = manager.submit("s", lambda j: run_finetune(j, failing))
    wait(job)
    assert job.status == "failed" and "strategy" in job.message
    assert _left_in(temp) == []
    # a class named '..' once made the job write its images into the temp folder's parent, where they stayed
    dots = FinetuneRequest(loaded=micro, source="collected", collected={"..": [_png((9, 9, 9))] * 2,
                                                                        "dog": [_png((90, 9, 9))] * 2})
    job = manager.submit("s", lambda j: run_finetune(j, dots))
    wait(job)
    assert job.status == "failed" and "class name '..' is not allowed" in job.message
    assert _left_in(temp) == []
    collected = {"red": [_png((220, 0, 0))] * 3, "blue": [_png((0, 0, 220))] * 3}
    ok = FinetuneRequest(loaded=micro, source="collected", collected=collected, epochs=1, batch_size=4)
    job = manager.submit("s", lambda j: run_finetune(j, ok))
    wait(job)
    assert job.status == "done", job.message
    assert _left_in(temp) == []


def test_grey_and_backbone_models_fine_tune_in_the_app(tmp_path):
    from PIL import Image

    from explorer.training import build_bundle
    from vitcore import VisionTransformer, ViTConfig
    from vitcore.io.checkpoint import save_checkpoint

    grey_path = save_checkpoint(VisionTransformer(ViTConfig.preset("micro", in_channels=1)), tmp_path / "g.safetensors",
                                class_names=[f"c{i}" for i in range(5)], normalization=((0.5,), (0.5,)))
    grey = build_model(ModelSpec("checkpoint"), grey_path.read_bytes())
    assert grey.preprocessing.channels == 1 and len(grey.class_names) == 5
    from explorer.images import to_tensor

    x = to_tensor(Image.new("RGB", (40, 30), (255, 0, 0)), grey.image_size, grey.mean, grey.std)
    assert x.shape == (1, 1, 32, 32)  # an RGB photo becomes the grey image a 1-channel model reads
    torch.testing.assert_close(x, torch.full_like(x, (76 / 255 - 0.5) / 0.5), atol=0.01, rtol=0)  # L = .299 R
    with pytest.raises(ValueError, match="one value per channel"):
        to_tensor(Image.new("RGB", (8, 8)), (8, 8), (0.5, 0.5), (0.5, 0.5))
    with pytest.raises(ValueError, match=r"Shapes set is in colour .* this model reads 1"):
        build_bundle(FinetuneRequest(loaded=grey), tmp_path / "w")
    collected = {"light": [_png((230, 230, 230))] * 3, "dark": [_png((20, 20, 20))] * 3}
    request = FinetuneRequest(loaded=grey, source="collected", collected=collected, epochs=1, batch_size=4,
                              probe_image=Image.new("RGB", (40, 30), (200, 10, 10)))
    manager = JobManager(max_running=1)
    job = manager.submit("s", lambda j: run_finetune(j, request))
    wait(job)
    snap = job.snapshot()
    assert snap["status"] == "done", snap["message"]
    assert snap["artifacts"]["summary"]["grid"][0]["image"].shape == (32, 32, 3)  # grey shown as RGB
    model, meta = load_checkpoint(snap["artifacts"]["best_checkpoint"])
    assert model.config.in_channels == 1 and meta["normalization"] == {"mean": [0.5], "std": [0.5]}
    assert meta["class_names"] == ["light", "dark"]

    backbone_path = save_checkpoint(VisionTransformer(ViTConfig.preset("micro", num_classes=0)),
                                    tmp_path / "b.safetensors", class_names=[], normalization=HALF)
    backbone = build_model(ModelSpec("checkpoint"), backbone_path.read_bytes())
    with torch.no_grad():
        out = backbone.model(torch.zeros(1, 3, 32, 32))
    assert len(backbone.class_names) == out.shape[-1] == 96  # one label per output: the pooled features
    assert backbone.class_names[0] == "feature 0"
    request = FinetuneRequest(loaded=backbone, shapes_per_class=10, epochs=1, batch_size=10)
    job = manager.submit("s", lambda j: run_finetune(j, request))
    wait(job)
    assert job.status == "done", job.message
    model, meta = load_checkpoint(job.snapshot()["artifacts"]["best_checkpoint"])
    assert model.config.num_classes == 5 and len(meta["class_names"]) == 5


def test_resnet_baseline_is_seeded_without_touching_the_global_rng():
    from torchvision.models import resnet18

    from explorer.training import _seeded_resnet_init

    a, b, c = resnet18(num_classes=3), resnet18(num_classes=3), resnet18(num_classes=3)
    state_after_build = torch.random.get_rng_state()
    for net, seed in ((a, 7), (b, 7), (c, 8)):
        _seeded_resnet_init(net, seed)
    assert torch.equal(torch.random.get_rng_state(), state_after_build)  # the helper drew nothing globally
    pa, pb, pc = (dict(n.named_parameters()) for n in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not torch.equal(pa["conv1.weight"], pc["conv1.weight"])
    fan_out = 64 * 7 * 7  # kaiming_normal_(mode="fan_out", relu), as torchvision initialises
    assert abs(pa["conv1.weight"].std().item() - (2 / fan_out) ** 0.5) < 0.1 * (2 / fan_out) ** 0.5
    assert pa["fc.bias"].abs().max() <= 1 / 512**0.5


# --------------------------------------------------------------------------- issue 15: what the page shows
@pytest.mark.slow
def test_a_stop_at_the_time_limit_inside_epoch_1_still_reports_its_val_accuracy(micro):
    from explorer.training import last_val_accuracy, time_left

    manager = JobManager(max_running=1)
    # 1200 images per class: the first epoch cannot end within the 3 s budget
    request = FinetuneRequest(loaded=micro, shapes_per_class=1200, epochs=15, max_seconds=3, batch_size=64)
    job = manager.submit("s", lambda j: run_finetune(j, request))
    seen_left = []
    end = time.monotonic() + 600
    while job.status not in ("done", "stopped", "failed"):
        job.touch()
        left = time_left(job.snapshot())
        if left is not None:
            seen_left.append(left)
        assert time.monotonic() < end
        time.sleep(0.05)
    snap = job.snapshot()
    assert snap["status"] == "done", snap["message"]
    summary = snap["artifacts"]["summary"]
    assert summary["stop_reason"] == "max_seconds"
    epochs = [h for h in snap["history"] if h["kind"] == "epoch"]
    assert len(epochs) == 1 and not epochs[0]["complete"]  # the partial epoch, evaluated after the stop
    assert last_val_accuracy(snap["history"]) == pytest.approx(summary["best_val_accuracy"])
    assert len(snap["artifacts"]["timeline"]) == 2 and snap["artifacts"]["best_checkpoint"]
    assert seen_left and max(seen_left) <= 3.0  # the time left never exceeds the budget
    # the probe matches the data: a Shapes validation image, not a photo from the sidebar
    assert snap["artifacts"]["probe"].shape == (32, 32, 3)
    assert summary["confusion"].sum() == 5 * 240  # the full validation split, once, at the end


def test_evaluation_during_training_uses_a_bounded_subset_with_every_class():
    from explorer.training import _bounded_val, _shapes

    data = _shapes((32, 32), 200, ("circle", "square", "triangle", "cross", "star"), 64, 0, False)
    assert len(data.datasets["val"]) == 200
    small = _bounded_val(data, 50)
    labels = [small.datasets["val"][i][1] for i in range(len(small.datasets["val"]))]
    assert len(labels) == 50 and sorted(set(labels)) == [0, 1, 2, 3, 4]
    assert small.datasets["train"] is data.datasets["train"] and _bounded_val(data, 500) is data


def test_use_this_model_switches_every_page_and_survives_a_reload(tmp_path, micro):
    from explorer import state as S
    from explorer.jobs import JobStore
    from explorer.specs import spec_from_state
    from explorer.training import checkpoint_bytes, restore_session, use_session_model

    store = JobStore(tmp_path)
    data = checkpoint_bytes(micro.model, micro.class_names, (micro.mean, micro.std))
    state: dict = {S.MODEL_KIND: "auto", S.SESSION_MODELS: {}}
    use_session_model(state, store, "ABCDEFGH", "fine-tune #3 (done)", data)
    spec, raw = spec_from_state(state)  # what the sidebar and every page load
    assert spec.kind == "session" and spec.name == "fine-tune #3 (done)" and raw == data
    reloaded: dict = {S.MODEL_KIND: "session", S.SESSION_MODEL_NAME: "fine-tune #3 (done)", S.SESSION_MODELS: {}}
    restore_session(reloaded, store, "ABCDEFGH")
    assert spec_from_state(reloaded)[1] == data


def test_a_restarted_job_can_resume_from_its_record(micro):
    from explorer.training import request_from_record
    from vitcore.train import FitOptions

    options = FitOptions(strategy="last_k", last_k=1, epochs=4, max_seconds=30.0, lr=2e-3)
    original = FinetuneRequest(loaded=micro, shapes_per_class=120, options=options)
    again = request_from_record({"settings": original.settings()}, micro)
    assert again.fit_options() == options and again.shapes_per_class == 120
    with pytest.raises(ValueError, match="upload them again"):
        request_from_record({"settings": {"source": "zip"}}, micro)
    with pytest.raises(ValueError, match="unknown strategy"):
        FinetuneRequest(loaded=micro, strategy="everything").fit_options()


@pytest.mark.slow
def test_start_is_disabled_exactly_while_the_sessions_job_runs_or_waits():
    """AppTest: Start is disabled while the session's job runs, enabled once it has ended (also after a stop)."""
    import threading
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from explorer import state as S
    from explorer.jobs import default_manager

    page = "app_pages/finetune.py"
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "streamlit_app.py"), default_timeout=180)
    at.run()
    at.switch_page(page).run()

    def start_disabled() -> bool:
        at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
        return next(b for b in at.button if b.key == "ft_start").disabled

    assert start_disabled() is False
    manager = default_manager()
    gate = threading.Event()
    blocker = manager.submit("someone-else", lambda j: gate.wait(60))  # holds the trainer: ours waits
    mine = manager.submit("me", lambda j: None)
    at.session_state[S.TRAIN_JOB] = mine.id
    assert start_disabled() is True  # waiting counts as busy
    assert any("place 1 in line" in w.value for w in at.warning)
    mine.stop()  # Stop on a waiting job ends it at once
    assert start_disabled() is False and mine.status == "stopped"
    second = manager.submit("me", lambda j: gate.wait(60))
    at.session_state[S.TRAIN_JOB] = second.id
    assert start_disabled() is True
    gate.set()
    end = time.monotonic() + 30
    while not (blocker.status == "done" and second.status == "done"):
        second.touch()
        assert time.monotonic() < end
        time.sleep(0.05)
    assert start_disabled() is False
