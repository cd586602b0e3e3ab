"""Training: overfitting, exact parameter sets per strategy, LoRA merging, loop == ignite, stopping."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from torch import nn

from vitcore import VisionTransformer, ViTConfig
from vitcore.data import shapes_bundle
from vitcore.train import (
    FitResult,
    StopTraining,
    TrainStep,
    evaluate,
    fit,
    fit_ignite,
    merge_lora,
    prepare_model,
    trainable_parameter_names,
    trainable_parameters,
)


@pytest.fixture(scope="module")
def tiny_data():
    return shapes_bundle(32, per_class_train=8, per_class_val=4, batch_size=8, seed=0)


@pytest.fixture
def micro():
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig.preset("micro"))


# micro: D=96, mlp 192, depth 4, 5 classes. One block = 2 LayerNorms (2*192) + qkv (96*288+288)
# + proj (96*96+96) + fc1 (96*192+192) + fc2 (192*96+96) = 74784 scalars.
BLOCK = 2 * 192 + (96 * 288 + 288) + (96 * 96 + 96) + (96 * 192 + 192) + (192 * 96 + 96)
HEAD = 96 * 5 + 5
NORM = 2 * 96
LORA_PER_BLOCK = 8 * ((96 + 288) + (96 + 96) + (96 + 192) + (192 + 96))  # r * (in + out) per adapted linear


def test_strategy_parameter_counts_by_hand(micro):
    total = sum(p.numel() for p in micro.parameters())
    assert BLOCK == 74784
    assert trainable_parameters(micro, "full") == total
    assert trainable_parameters(micro, "head") == HEAD
    assert trainable_parameters(micro, "last_k", last_k=2) == 2 * BLOCK + NORM + HEAD
    assert trainable_parameters(micro, "last_k", last_k=1) == BLOCK + NORM + HEAD
    assert trainable_parameters(micro, "lora", lora_rank=8) == 4 * LORA_PER_BLOCK + HEAD
    assert trainable_parameter_names(micro, "head") == ["head.weight", "head.bias"]


@pytest.mark.parametrize("strategy", ["full", "head", "last_k", "lora"])
def test_each_strategy_trains_exactly_its_parameters(micro, tiny_data, strategy):
    before = {k: v.clone() for k, v in micro.state_dict().items()}
    expected = trainable_parameters(micro, strategy, last_k=2)
    result = fit(micro, tiny_data, strategy=strategy, epochs=1, max_steps=3, lr=1e-2, warmup=0, seed=0,
                 restore_best=False)
    assert result.trainable_params == expected
    assert isinstance(result.model, VisionTransformer)  # LoRA comes back merged into a plain ViT
    after = result.model.state_dict()
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if strategy == "lora":
        adapted = {f"blocks.{i}.{m}.weight" for i in range(4) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
        assert changed == adapted | {"head.weight", "head.bias"}
    else:
        assert changed == set(trainable_parameter_names(micro, strategy, last_k=2))
    assert all(p.requires_grad for p in result.model.parameters())  # flags restored after training


def test_lora_merged_equals_unmerged(micro):
    peft_model = prepare_model(micro, "lora", lora_rank=4, lora_alpha=8)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.05)  # B starts at zero; make the adapters do something
    x = torch.randn(3, 3, 32, 32)
    peft_model.eval()
    with torch.no_grad():
        unmerged = peft_model(x)  # (3, 5)
    merged = merge_lora(peft_model)
    assert type(merged) is VisionTransformer
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(x), unmerged, atol=1e-5, rtol=0)
        # and the adapters mattered: a fresh model with the base weights differs
        assert (merged(x) - VisionTransformer(micro.config)(x)).abs().max() > 1e-3


def test_overfits_one_batch():
    data = shapes_bundle(32, per_class_train=2, per_class_val=1, batch_size=10, seed=1)
    batch = next(iter(data.dataloaders["train"]))
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig.preset("micro"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    step = TrainStep(model, optimizer, scheduler, device=torch.device("cpu"))  # the step fit and ignite share
    losses = [step(batch)["loss"] for _ in range(50)]
    assert losses[0] > 1.0
    assert losses[-1] < 0.05
    out = step(batch)
    assert out["correct"] == out["n"] == 10


def test_loop_and_ignite_reach_identical_weights(micro, tiny_data, tmp_path):
    a, b = copy.deepcopy(micro), copy.deepcopy(micro)
    ra = fit(a, tiny_data, epochs=3, max_steps=7, lr=3e-3, seed=5, restore_best=False)
    rb = fit_ignite(b, tiny_data, epochs=3, max_steps=7, lr=3e-3, seed=5, restore_best=False,
                    log_dir=tmp_path / "tb", checkpoint_dir=tmp_path / "ckpt")
    assert ra.stop_reason == rb.stop_reason == "max_steps"
    assert [s["loss"] for s in ra.steps] == [s["loss"] for s in rb.steps]
    for k, v in ra.model.state_dict().items():
        assert torch.equal(v, rb.model.state_dict()[k]), k
    assert not torch.equal(a.head.weight, micro.head.weight)  # they did train
    assert [h["val_accuracy"] for h in ra.history] == pytest.approx([h["val_accuracy"] for h in rb.history])
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))  # TensorBoard logger wrote
    saved = list((tmp_path / "ckpt").glob("best_*.pt"))
    assert len(saved) == 1
    state = torch.load(saved[0], weights_only=True)
    VisionTransformer(micro.config).load_state_dict(state)  # ModelCheckpoint kept loadable weights


def test_cached_head_training_matches_naive_frozen_training(micro, tiny_data):
    a, b = copy.deepcopy(micro), copy.deepcopy(micro)
    cached = fit(a, tiny_data, strategy="head", epochs=3, lr=1e-2, seed=2, restore_best=False)
    naive = fit(b, tiny_data, strategy="head", epochs=3, lr=1e-2, seed=2, restore_best=False, cache_features=False)
    assert cached.cached_features and not naive.cached_features
    torch.testing.assert_close(a.head.weight, b.head.weight, atol=1e-5, rtol=1e-4)
    assert not torch.equal(a.head.weight, micro.head.weight)
    assert [h["val_accuracy"] for h in cached.history] == [h["val_accuracy"] for h in naive.history]


def _poison_after_first_epoch(model):
    def callback(event):
        if event["event"] == "epoch" and event["epoch"] == 1:
            with torch.no_grad():
                model.head.weight.fill_(float("nan"))
    return callback


def test_nan_loss_stops_and_keeps_best_checkpoint(micro, tiny_data):
    result = fit(micro, tiny_data, epochs=5, lr=1e-3, callbacks=[_poison_after_first_epoch(micro)])
    assert result.stop_reason == "nan_loss"
    assert "nan" in result.message and "learning rate" in result.message
    assert result.best_epoch == 1 and len(result.history) == 1
    assert torch.isfinite(result.model.head.weight).all()  # the best (epoch 1) weights came back
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, result.best_state[k])
    val = evaluate(result.model, tiny_data.dataloaders["val"])
    assert val["accuracy"] == pytest.approx(result.best_val_accuracy)


def test_callbacks_and_stop_event_stop_the_run(micro, tiny_data):
    seen = []

    def stop_at_three(event):
        seen.append(event)
        return not (event["event"] == "step" and event["step"] == 3)

    result = fit(copy.deepcopy(micro), tiny_data, epochs=4, callbacks=[stop_at_three])
    assert result.stop_reason == "callback" and len(result.steps) == 3
    assert {"loss", "accuracy", "lr", "images_per_second", "epoch", "step"} <= set(seen[0])
    assert len(result.history) == 1 and result.history[0]["complete"] is False  # partial epoch still scored
    assert result.best_state is not None

    def raise_stop(event):
        if event["event"] == "epoch":
            raise StopTraining

    result = fit(copy.deepcopy(micro), tiny_data, epochs=4, callbacks=[raise_stop])
    assert result.stop_reason == "callback" and len(result.history) == 1 and result.best_epoch == 1

    # from a worker thread, as the app runs it, stopped by an Event
    stop = threading.Event()
    box: dict[str, FitResult] = {}

    def set_at_two(event):
        if event["event"] == "step" and event["step"] == 2:
            stop.set()

    worker = threading.Thread(target=lambda: box.update(r=fit(copy.deepcopy(micro), tiny_data, epochs=4,
                                                               callbacks=[set_at_two], stop=stop)))
    worker.start()
    worker.join(60)
    assert box["r"].stop_reason == "stopped" and len(box["r"].steps) == 2


def test_max_seconds_limit(micro, tiny_data):
    result = fit(micro, tiny_data, epochs=1000, max_seconds=0.5)
    assert result.stop_reason == "max_seconds"
    assert 1 <= len(result.history) < 1000 and result.seconds >= 0.5  # stopped by the limit, not before it


def test_resnet18_baseline_head_and_full(tiny_data):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    cnn = resnet18(num_classes=5)
    assert trainable_parameters(cnn, "head") == 512 * 5 + 5
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    result = fit(cnn, tiny_data, strategy="head", epochs=1, max_steps=2, lr=1e-2, cache_features=False,
                 restore_best=False)
    changed = {k for k, v in cnn.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"fc.weight", "fc.bias"}  # frozen BatchNorm statistics stay put too
    assert result.trainable_params == 2565
    result = fit(cnn, tiny_data, strategy="full", epochs=1, max_steps=1, restore_best=False)
    assert result.trainable_params == sum(p.numel() for p in cnn.parameters())
    with pytest.raises(ValueError, match="needs a vitcore VisionTransformer"):
        fit(cnn, tiny_data, strategy="lora")


def test_bf16_autocast_runs(micro, tiny_data):
    result = fit(micro, tiny_data, epochs=1, max_steps=2, bf16=True)
    assert result.stop_reason == "max_steps"
    assert all(torch.isfinite(torch.tensor(s["loss"])) for s in result.steps)


def test_bad_arguments_are_explained(micro, tiny_data):
    with pytest.raises(ValueError, match="unknown strategy"):
        fit(micro, tiny_data, strategy="everything")
    with pytest.raises(ValueError, match="last_k=9"):
        fit(micro, tiny_data, strategy="last_k", last_k=9)
    wrong = VisionTransformer(ViTConfig.preset("micro", num_classes=3))
    with pytest.raises(ValueError, match="predicts 3 classes"):
        fit(wrong, tiny_data)
    with pytest.raises(ValueError, match="cached features"):
        fit(micro, tiny_data, strategy="full", cache_features=True)
    with pytest.raises(ValueError, match="no classifier"):
        fit(nn.Sequential(nn.Flatten(), nn.Linear(3072, 5)), tiny_data, strategy="head")


def test_fit_options_are_validated_once_and_shared_by_both_loops(micro, tiny_data):
    from vitcore.train import FitOptions

    options = FitOptions(strategy="head", epochs=1, max_steps=2, warmup=0, seed=3)
    assert options.replace(epochs=4).epochs == 4 and options.epochs == 1  # frozen: replace gives a copy
    for bad, message in [
        ({"epochs": 0}, "epochs=0"),
        ({"lr": -1.0}, "lr=-1.0 must be positive"),
        ({"warmup": 1.5}, "warmup=1.5"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"batch_size": True}, "batch_size=True"),
        ({"max_seconds": float("nan")}, "max_seconds"),
    ]:
        with pytest.raises(ValueError, match=message):
            FitOptions(**bad)
    with pytest.raises(ValueError, match=r"unknown training options \['epoch'\]"):
        fit(micro, tiny_data, epoch=3)
    a = fit(copy.deepcopy(micro), tiny_data, options)
    b = fit_ignite(copy.deepcopy(micro), tiny_data, options)
    assert a.strategy == b.strategy == "head" and a.stop_reason == b.stop_reason == "max_steps"
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)


def test_seed_none_leaves_the_global_rng_alone(micro, tiny_data):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit(copy.deepcopy(micro), tiny_data, strategy="head", epochs=1, max_steps=2, seed=None)
    assert torch.equal(torch.rand(3), expected)  # no reseeding: the caller's random stream is where it was
