"""Few-shot teaching: cached features, the linear head, the attached model, collections, jobs, isolation."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from explorer import fewshot as T
from explorer import specs
from explorer import state as S
from explorer.jobs import JobManager
from explorer.models import build_model, seeded_model
from vitcore import ViTConfig
from vitcore.data.images import Preprocessing
from vitcore.io.checkpoint import load_checkpoint
from vitcore.model import VisionTransformer
from vitcore.train.fewshot import (
    VIEWS,
    attach_head,
    extract_features,
    lfw_subset,
    logistic_loss,
    minimize_lbfgs,
    pooled_features,
    train_linear_head,
    with_views,
)

TINY = ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=2, mlp_ratio=2.0, num_classes=0)


@pytest.fixture
def backbone() -> VisionTransformer:
    return seeded_model(TINY, seed=3)


@pytest.fixture
def pre() -> Preprocessing:
    return Preprocessing.for_model((32, 32))


def photo(colour, size=(40, 30), noise_seed=None) -> Image.Image:
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8) + np.array(colour, dtype=np.uint8)
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
        arr = np.clip(arr.astype(int) + rng.integers(-40, 40, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def coloured_set(colours, per_class=8):
    images, labels = [], []
    for label, colour in enumerate(colours):
        for i in range(per_class):
            images.append(photo(colour, noise_seed=100 * label + i))
            labels.append(label)
    return images, labels


# --------------------------------------------------------------------------- the pool option
def test_cls_plus_mean_pool_reads_both_tokens_with_a_2d_head():
    cfg = TINY.replace(num_classes=3, pool="cls+mean")
    model = seeded_model(cfg)
    assert model.head.in_features == 2 * cfg.dim == cfg.pool_dim
    tokens = torch.randn(2, 1 + cfg.num_patches, cfg.dim)
    pooled = model.pool(tokens)
    assert torch.equal(pooled[:, : cfg.dim], tokens[:, 0])
    assert torch.allclose(pooled[:, cfg.dim :], tokens[:, 1:].mean(1))
    with pytest.raises(ValueError, match="'cls\\+mean' for both"):
        TINY.replace(pool="max")
    with pytest.raises(ValueError, match="distillation head"):
        TINY.replace(pool="cls+mean", distilled=True, num_classes=2)


# --------------------------------------------------------------------------- features
def test_features_are_cls_and_mean_patch_of_the_final_norm_and_the_backbone_is_only_read(backbone, pre):
    images, _ = coloured_set([(200, 20, 20), (20, 20, 200)], per_class=3)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    seen = []
    feats = extract_features(backbone, images, pre, batch_size=4, progress=lambda d, t: seen.append((d, t)))
    assert feats.shape == (6, 2 * TINY.dim)
    with torch.no_grad():
        tokens = backbone.forward_features(pre.batch(images))
    expected = torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=-1)
    assert torch.allclose(feats, expected, atol=1e-5)
    assert torch.allclose(pooled_features(backbone, tokens), expected)
    assert seen == [(0, 6), (4, 6), (6, 6)]  # counts images
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())
    assert all(p.grad is None for p in backbone.parameters())
    assert not backbone.training


def test_views_flip_and_crop_and_repeat_labels():
    img = Image.fromarray(np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3))
    out, labels = with_views([img], [1], VIEWS)
    assert labels == [1, 1, 1, 1] and len(out) == 4
    assert np.array_equal(np.asarray(out[1]), np.asarray(img)[:, ::-1])
    assert out[2].size == (16, 8)
    assert np.array_equal(np.asarray(out[3]), np.asarray(out[2])[:, ::-1])
    with pytest.raises(ValueError, match="unknown views"):
        with_views([img], [0], ["rotate"])


# --------------------------------------------------------------------------- the head
def test_linear_head_is_deterministic_and_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 16, generator=g) * 5 + 3
    y = (x[:, 0] > 3).long()
    a = train_linear_head(x, y, 2)
    b = train_linear_head(x, y, 2)
    assert torch.equal(a.head.weight, b.head.weight) and torch.equal(a.head.bias, b.head.bias)
    assert a.train_accuracy == 1.0
    with pytest.raises(ValueError, match="one per feature row"):
        train_linear_head(x, y[:-1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        train_linear_head(x, torch.zeros(40, dtype=torch.long), 1)


def test_cached_features_give_the_same_head_as_training_through_the_backbone(backbone, pre):
    """Frozen backbone: the objective on cached features is the objective through the backbone."""
    images, labels = coloured_set([(200, 40, 40), (40, 200, 40), (40, 40, 200)], per_class=4)
    cached = train_linear_head(extract_features(backbone, images, pre), labels, 3, weight_decay=1e-2,
                               standardize=False)

    model = attach_head(backbone, torch.nn.Linear(2 * TINY.dim, 3), ["a", "b", "c"])
    x = pre.batch(images)
    calls = []

    def through_the_backbone(params):  # features recomputed by the (frozen) model at every evaluation
        with torch.no_grad():
            f = model.pool(model.forward_features(x)).double().numpy()
        calls.append(1)
        return logistic_loss(params, f, np.asarray(labels), 3, 1e-2)

    D2 = 2 * TINY.dim
    params, _, _ = minimize_lbfgs(through_the_backbone, np.zeros(3 * D2 + 3), max_iter=300)
    assert len(calls) > 5
    W, b = params[: 3 * D2].reshape(3, D2), params[3 * D2 :]
    assert np.allclose(cached.head.weight.detach().numpy(), W, atol=1e-4)
    assert np.allclose(cached.head.bias.detach().numpy(), b, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(model.pool(model.forward_features(x)) @ torch.from_numpy(W).float().T
                              + torch.from_numpy(b).float(), cached.head(model.pool(model.forward_features(x))),
                              atol=1e-3)


def test_lbfgs_finds_the_minimum_of_a_convex_quadratic():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20, 20))
    hessian, target = a @ a.T + np.eye(20), rng.normal(size=20)
    x, f, iterations = minimize_lbfgs(lambda x: (0.5 * (x - target) @ hessian @ (x - target), hessian @ (x - target)),
                                      np.zeros(20), max_iter=500, gtol=1e-10)
    assert np.allclose(x, target, atol=1e-6) and f < 1e-10 and iterations < 500


def test_lbfgs_runs_blas_on_one_thread_and_gives_the_pool_back():
    from threadpoolctl import threadpool_info

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before, seen = blas_threads(), []

    def quadratic(x):
        seen.append(blas_threads())
        return 0.5 * float(x @ x), x

    x, f, _ = minimize_lbfgs(quadratic, np.ones(8))
    assert f < 1e-12 and np.allclose(x, 0)
    assert seen and all(threads and set(threads) == {1} for threads in seen)
    assert blas_threads() == before


def test_logistic_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    f, y = rng.normal(size=(7, 5)), rng.integers(0, 3, 7)
    params = rng.normal(size=3 * 5 + 3) * 0.3
    _, grad = logistic_loss(params, f, y, 3, 0.1)
    eps = 1e-6
    numeric = [(logistic_loss(params + eps * e, f, y, 3, 0.1)[0] - logistic_loss(params - eps * e, f, y, 3, 0.1)[0])
               / (2 * eps) for e in np.eye(params.size)]
    assert np.allclose(grad, numeric, atol=1e-6)


# --------------------------------------------------------------------------- the taught model
def test_attached_model_equals_head_on_features_and_round_trips_as_a_checkpoint(backbone, pre):
    images, labels = coloured_set([(220, 30, 30), (30, 30, 220)], per_class=5)
    feats = extract_features(backbone, images, pre)
    head = train_linear_head(feats, labels, 2).head
    rng = torch.get_rng_state()
    model = attach_head(backbone, head, ["red", "blue"])
    assert torch.equal(torch.get_rng_state(), rng)  # no random initialisation drawn from the global RNG
    assert all(p.requires_grad for p in model.parameters())  # trainable further (last k, LoRA, full)
    assert model.config.pool == "cls+mean" and model.config.num_classes == 2
    x = pre.batch(images)
    with torch.no_grad():
        logits = model(x)
        assert torch.allclose(logits, head(feats), atol=1e-5)
    assert model.patch_embed.proj.weight.data_ptr() != backbone.patch_embed.proj.weight.data_ptr()  # own copy
    data = T.checkpoint_bytes(model, ["red", "blue"], pre)
    loaded, meta = load_checkpoint(data)
    assert meta["class_names"] == ["red", "blue"]
    assert Preprocessing.from_dict(meta["preprocessing"]) == pre
    with torch.no_grad():
        assert torch.equal(loaded(x), logits)
    assert (logits.argmax(-1) == torch.tensor(labels)).all()


def test_use_this_model_makes_it_the_session_model_of_every_page(backbone, pre):
    images, labels = coloured_set([(220, 30, 30), (30, 30, 220)], per_class=5)
    head = train_linear_head(extract_features(backbone, images, pre), labels, 2).head
    data = T.checkpoint_bytes(attach_head(backbone, head), ["<b>red</b>", "../blue"], pre)
    state = {S.SESSION_MODELS: {}}
    name = "taught #1 (2 classes)"  # what the page's "Use this model" stores
    state[S.SESSION_MODELS][name] = data
    state[S.SESSION_MODEL_NAME] = name
    state[S.MODEL_KIND] = "session"
    spec, blob = specs.spec_from_state(state)
    assert spec.kind == "session" and blob is data
    loaded = build_model(spec, blob)
    assert loaded.class_names == ["<b>red</b>", "../blue"]  # labels as typed
    assert loaded.preprocessing == pre


# --------------------------------------------------------------------------- collecting
def test_collection_refuses_bad_input_with_messages():
    c = T.ClassCollection()
    with pytest.raises(ValueError, match="at least 2 classes"):
        c.check()
    c.rename(0, "cat")
    c.rename(1, " Cat ")
    for i in range(2):
        for k in range(T.MIN_IMAGES):
            assert c.add(i, f"k{k}", png(photo((10 * k, 50, 90 * i)))) is None
    with pytest.raises(ValueError, match="are the same"):
        c.check()
    c.rename(1, "")
    with pytest.raises(ValueError, match="empty"):
        c.check()
    c.rename(1, "<script>alert(1)</script>")
    assert c.check() == ["cat", "<script>alert(1)</script>"]  # kept as plain text
    assert T.plain_label("<b>x</b>") == "&lt;b&gt;x&lt;/b&gt;"
    c.remove(1, "k0")
    with pytest.raises(ValueError, match="at least 5 photos"):
        c.check()
    assert c.add(1, "k0", png(photo((1, 2, 3)))) is None and c.counts()[1] == 4  # a deleted upload stays deleted
    message = c.add(1, "doc", b"%PDF-1.4 not an image", "notes.pdf")
    assert message and message.startswith("notes.pdf") and c.counts()[1] == 4
    assert c.add_class() is None
    assert sum(c.add_class() is None for _ in range(10)) == T.MAX_CLASSES - 3
    assert "At most" in c.add_class()


def test_collection_caps_photos_per_class_and_decodes_big_photos_small():
    c = T.ClassCollection()
    big = png(photo((120, 80, 40), size=(4000, 3000)), "JPEG")
    assert c.add(0, "big", big, "big.jpg") is None
    assert max(c.classes[0].images["big"].image.size) <= T.TEACH_SIDE
    assert max(c.classes[0].images["big"].thumb.size) <= T.THUMB_SIDE
    small = png(photo((1, 2, 3), size=(8, 8)))
    for k in range(T.MAX_IMAGES_PER_CLASS - 1):
        assert c.add(0, f"s{k}", small) is None
    message = c.add(0, "one-too-many", small, "extra.png")
    assert message and str(T.MAX_IMAGES_PER_CLASS) in message and c.counts()[0] == T.MAX_IMAGES_PER_CLASS
    read = []
    messages = c.add_many(0, [(f"x{k}", f"x{k}.jpg", lambda: read.append(1) or small) for k in range(40)])
    assert len(messages) == 1 and messages[0].startswith("40 photo(s) were not added") and not read


def test_a_zip_of_class_folders_becomes_a_collection(tmp_path):
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, colour in (("apple", (200, 30, 30)), ("pear", (30, 200, 30))):
            for k in range(5):
                z.writestr(f"{name}/{k}.png", png(photo(colour, noise_seed=k)))
    collection, messages = T.collection_from_zip(buf.getvalue())
    assert messages == []
    assert collection.check() == ["apple", "pear"] and collection.counts() == [5, 5]


# --------------------------------------------------------------------------- the job
def wait(job, timeout=180.0):
    end = time.monotonic() + timeout
    while job.status not in ("done", "stopped", "failed"):
        job.touch()
        assert time.monotonic() < end, job.snapshot()["message"]
        time.sleep(0.05)


def request_for(backbone, pre, colours, names, **kw) -> T.TeachRequest:
    c = T.ClassCollection(len(names))
    for i, (name, colour) in enumerate(zip(names, colours)):
        c.rename(i, name)
        for k in range(6):
            c.add(i, f"{name}{k}", png(photo(colour, noise_seed=17 * i + k)))
    names, images = c.request_data()
    return T.TeachRequest(backbone=backbone, preprocessing=pre, class_names=names, images=images, **kw)


def test_teach_job_trains_a_head_and_reports_validation(backbone, pre):
    manager = JobManager(max_running=1)
    request = request_for(backbone, pre, [(220, 30, 30), (30, 220, 30), (30, 30, 220)], ["r", "g", "b"])
    job = T.submit_teach(manager, "s1", request)
    wait(job)
    assert job.status == "done", job.message
    summary = job.snapshot()["artifacts"]["summary"]
    assert summary["confusion"].sum() == summary["val_images"] == 3  # one validation photo per class
    assert summary["augmented"] and summary["train_features"] == 3 * summary["train_images"]  # + flip, crop
    assert summary["val_accuracy"] == 1.0 and summary["mistakes"] == []
    taken = T.take_result(job, backbone)
    assert job.snapshot()["artifacts"]["model"] is None  # the job no longer holds a model
    out = T.explain(taken["model"], backbone, pre, photo((30, 220, 30)), occlusion_block=2)
    assert out["target"] == 1 and out["probs"].sum() == pytest.approx(1.0, abs=1e-5)
    assert out["rollout"].shape == out["occlusion"].shape == out["cls_attention"].shape == (4, 4)
    assert out["cls_attention"].sum() <= 1.0 + 1e-5


def test_block_occlusion_of_one_patch_is_vitcores_occlusion_map(backbone, pre):
    from vitcore.inspect.analysis import occlusion_map

    images, labels = coloured_set([(220, 30, 30), (30, 30, 220)], per_class=4)
    head = train_linear_head(extract_features(backbone, images, pre), labels, 2).head
    model = attach_head(backbone, head)
    x = pre(images[0])[None]
    assert np.allclose(T.block_occlusion(model, x, 0, block=1), occlusion_map(model, x, 0).numpy())
    coarse = T.block_occlusion(model, x, 0, block=2)
    assert coarse.shape == (4, 4) and coarse[0, 0] == coarse[1, 1]
    with torch.no_grad():
        boxed = x.clone()
        boxed[..., : 2 * model.config.patch_size, : 2 * model.config.patch_size] = 0
        assert coarse[0, 0] == pytest.approx(float(model(x)[0, 0] - model(boxed)[0, 0]), abs=1e-5)


@pytest.mark.parametrize("strategy", ["last_k", "lora", "full"])
def test_deeper_strategies_fine_tune_a_private_copy(backbone, pre, strategy):
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    request = request_for(backbone, pre, [(220, 30, 30), (30, 30, 220)], ["r", "b"], strategy=strategy, last_k=1,
                          epochs=2)
    job = T.submit_teach(JobManager(max_running=1), "s", request)
    wait(job)
    assert job.status == "done", job.message
    assert isinstance(job.snapshot()["artifacts"]["model"], bytes)  # a checkpoint file from the worker process
    model = T.take_result(job, backbone)["model"]
    assert isinstance(model, VisionTransformer) and model.config.num_classes == 2
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())
    ptrs = {v.data_ptr() for v in backbone.state_dict().values()}
    shared = [k for k, v in model.state_dict().items() if v.data_ptr() in ptrs]
    if strategy == "last_k":  # the frozen blocks are the backbone's own storage, the last block is not
        assert any(k.startswith("blocks.0.") for k in shared) and not any(k.startswith("blocks.1.") for k in shared)
    loaded, _ = load_checkpoint(T.checkpoint_bytes(model, ["r", "b"], pre))  # LoRA merged: a plain checkpoint
    x = pre(photo((220, 30, 30)))[None]
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_a_taught_model_shares_the_backbones_storage_and_predicts_like_a_copy(backbone, pre):
    images, labels = coloured_set([(220, 30, 30), (30, 30, 220)], per_class=4)
    head = train_linear_head(extract_features(backbone, images, pre), labels, 2).head
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    shared = T.taught_model(backbone, head, ["red", "blue"])
    copied = attach_head(backbone, head, ["red", "blue"])
    mine, theirs = shared.state_dict(), backbone.state_dict()
    for name, tensor in theirs.items():
        if not name.startswith("head"):
            assert mine[name].data_ptr() == tensor.data_ptr(), name  # the same memory: nothing copied
    assert mine["head.weight"].data_ptr() != head.weight.data_ptr()  # the head is the model's own
    assert not any(p.requires_grad for p in shared.parameters())
    x = pre.batch(images)
    with torch.no_grad():
        assert torch.allclose(shared(x), copied(x), atol=1e-6)
    shared.train()  # its mode is its own: the shared backbone stays in eval mode
    assert not backbone.training
    shared.eval()
    out = T.explain(shared, backbone, pre, images[0], occlusion_block=2)  # gradients without touching weights
    assert out["target"] == 0 and all(p.grad is None for p in backbone.parameters())
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())


def test_two_sessions_at_once_see_only_their_own_classes_and_models(backbone, pre):
    manager = JobManager(max_running=2)
    a = request_for(backbone, pre, [(220, 30, 30), (30, 30, 220)], ["apple", "plum"])
    b = request_for(backbone, pre, [(30, 220, 30), (220, 220, 30), (30, 220, 220)], ["x", "y", "z"])
    jobs = {}
    threads = [threading.Thread(target=lambda o, r: jobs.__setitem__(o, T.submit_teach(manager, o, r)), args=(o, r))
               for o, r in (("session-a", a), ("session-b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.monotonic() + 300
    while any(job.status not in ("done", "stopped", "failed") for job in jobs.values()):
        for job in jobs.values():  # both pages keep polling while either job runs
            job.touch()
        assert time.monotonic() < end, [job.message for job in jobs.values()]
        time.sleep(0.05)
    assert all(job.status == "done" for job in jobs.values()), [job.message for job in jobs.values()]
    ra, rb = T.take_result(jobs["session-a"], backbone), T.take_result(jobs["session-b"], backbone)
    assert ra["summary"]["class_names"] == ["apple", "plum"] and rb["summary"]["class_names"] == ["x", "y", "z"]
    assert jobs["session-a"].owner == "session-a" and jobs["session-b"].owner == "session-b"
    assert ra["model"] is not rb["model"] and ra["model"].config.num_classes == 2
    assert rb["model"].config.num_classes == 3
    assert not set(map(id, a.images[0])) & set(map(id, b.images[0]))


def test_a_bad_request_fails_the_job_with_a_message(backbone, pre):
    request = request_for(backbone, pre, [(220, 30, 30), (30, 30, 220)], ["r", "b"], strategy="nonsense")
    job = T.submit_teach(JobManager(max_running=1), "s", request)
    wait(job)
    assert job.status == "failed" and "unknown strategy" in job.message


# --------------------------------------------------------------------------- the lfw target, small
@pytest.mark.slow
def test_lfw_ten_shot_with_real_dinov2_at_two_draws():
    from vitcore.pretrained.dinov2 import dinov2_small

    model, meta = dinov2_small()
    pre = Preprocessing.from_dict(meta["preprocessing"])
    images, labels, _ = lfw_subset()
    accuracies = []
    for draw in range(2):
        g = torch.Generator().manual_seed(draw)
        picks = [(torch.randperm(100, generator=g) + 100 * c).tolist() for c in (0, 1)]
        train = picks[0][:10] + picks[1][:10]
        val = picks[0][10:30] + picks[1][10:30]  # 40 held-out photos per draw keep CI short
        feats = extract_features(model, [images[i] for i in train + val], pre, batch_size=20)
        head = train_linear_head(feats[:20], [labels[i] for i in train], 2).head
        preds = head(feats[20:]).argmax(-1)
        accuracies.append(float((preds == torch.tensor([labels[i] for i in val])).float().mean()))
    assert np.mean(accuracies) >= 0.85, accuracies


def test_a_teach_job_loads_its_backbone_from_the_spec_instead_of_a_pickled_copy(pre):
    import pickle

    from explorer.models import ModelSpec, build_model

    spec = ModelSpec("preset", preset="tiny", overrides=(("image_size", 32), ("patch_size", 8), ("dim", 32),
                                                         ("depth", 2), ("heads", 2), ("num_classes", 0)))
    shared = build_model(spec).model
    colours, names = [(220, 30, 30), (30, 30, 220)], ["r", "b"]
    by_object = request_for(shared, pre, colours, names)
    by_spec = request_for(shared, pre, colours, names, backbone_spec=spec)
    light = by_spec.for_worker()
    assert light.backbone is None and by_object.for_worker() is by_object
    assert len(pickle.dumps(light)) < len(pickle.dumps(by_object)) - sum(
        p.numel() * p.element_size() for p in shared.parameters())  # the weights stay out of the file
    resolved = light.resolved()
    assert all(torch.equal(resolved.backbone.state_dict()[k], v) for k, v in shared.state_dict().items())
    with pytest.raises(ValueError, match="backbone_spec"):
        request_for(None, pre, colours, names).resolved()
    heads = []
    for request in (by_object, by_spec):
        job = T.submit_teach(JobManager(max_running=1), "s", request)
        wait(job)
        assert job.status == "done", job.message
        heads.append(job.snapshot()["artifacts"]["head"])
    assert np.array_equal(np.asarray(heads[0]["weight"]), np.asarray(heads[1]["weight"]))
