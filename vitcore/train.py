"""Fine-tuning: one step function shared by a plain PyTorch loop (:func:`fit`) and an ignite engine.

Strategies name exactly the parameters that train (see :func:`trainable_parameter_names`):

- ``"full"``: every parameter.
- ``"head"``: the classification head only (a linear probe). With augmentation off the frozen
  backbone runs once over the data and the head trains on the cached pooled features.
- ``"last_k"``: the last ``k`` encoder blocks, the final LayerNorm and the head.
- ``"lora"``: low-rank adapters (``peft``) on every block's attention ``qkv``/``proj`` and MLP
  ``fc1``/``fc2``, plus the head; merged back into plain linears when training ends.

Both loops run from any thread: there are no signal handlers, and a run stops when a callback
returns ``False`` or raises :class:`StopTraining`, or when the ``stop`` event is set.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .data import DataBundle
from .model import VisionTransformer
from .strategies import (
    DEFAULT_LR,
    LORA_TARGETS,
    STRATEGIES,
    check_strategy,
    head_names,
    merge_lora,
    prepare_model,
    replace_head,
    set_train_mode,
    trainable_parameter_names,
    trainable_parameters,
)

__all__ = [
    "DEFAULT_LR",
    "LORA_TARGETS",
    "STRATEGIES",
    "FitResult",
    "StopTraining",
    "TrainStep",
    "evaluate",
    "fit",
    "fit_ignite",
    "merge_lora",
    "replace_head",
    "prepare_model",
    "resolve_device",
    "trainable_parameter_names",
    "trainable_parameters",
]


Callback = Callable[[dict[str, Any]], Any]


class StopTraining(Exception):  # noqa: N818  (an instruction, not an error)
    """Raise from a callback to end the run cleanly (the best checkpoint is kept)."""


# --------------------------------------------------------------------------- devices
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" picks CUDA, then MPS, then CPU; an explicit device must be present."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA GPU is visible; use device='cpu' or 'auto'")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device='mps' was asked for but MPS is not available; use device='cpu' or 'auto'")
    return device


def _dist() -> tuple[bool, int, int]:
    """(distributed?, rank, world size) of the current process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


# --------------------------------------------------------------------------- cached features
class _HeadOnly(nn.Module):
    """The classifier alone, reading backbone features cached by :func:`_backbone_features`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.names = head_names(model)
        self.vit = isinstance(model, VisionTransformer)
        for name in self.names:
            self.add_module(name, getattr(model, name))  # shared modules: training updates the model's head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.vit:
            return getattr(self, self.names[0])(features)  # (B, C)
        logits = self.head(features[:, 0])  # (B, C)
        if len(self.names) == 2:
            logits = (logits + self.head_dist(features[:, 1])) / 2  # (B, C), DeiT inference rule
        return logits


@torch.no_grad()
def _backbone_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the head reads: ViT (B, 1 or 2, D) pooled (+ distillation) token; other models (B, F)."""
    if isinstance(model, VisionTransformer):
        tokens = model.forward_features(images)  # (B, T, D)
        parts = [model.pool(tokens)]  # (B, D)
        if model.head_dist is not None:
            parts.append(tokens[:, 1])  # (B, D)
        return torch.stack(parts, dim=1)  # (B, 1 or 2, D)
    name = head_names(model)[0]
    head = getattr(model, name)
    setattr(model, name, nn.Identity())
    try:
        return model(images).flatten(1)  # (B, F)
    finally:
        setattr(model, name, head)


def _cache_features(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device, bf16: bool) -> Dataset:
    was_training = model.training
    model.eval()
    feats, labels = [], []
    loader = DataLoader(dataset, batch_size=max(batch_size, 64), shuffle=False, num_workers=0)
    for x, y in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            feats.append(_backbone_features(model, x.to(device)).float().cpu())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    return TensorDataset(torch.cat(feats), torch.cat(labels))


# --------------------------------------------------------------------------- the shared step
class TrainStep:
    """One optimisation step on a batch; the same object drives :func:`fit` and :func:`fit_ignite`."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        *,
        device: torch.device,
        label_smoothing: float = 0.0,
        bf16: bool = False,
        grad_clip: float | None = 1.0,
        set_mode: Callable[[], None] | None = None,
        distributed: bool = False,
    ) -> None:
        self.net, self.optimizer, self.scheduler = net, optimizer, scheduler
        self.device, self.label_smoothing, self.bf16, self.grad_clip = device, label_smoothing, bf16, grad_clip
        self.set_mode = set_mode or net.train
        self.distributed = distributed
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def __call__(self, batch: Any) -> dict[str, Any]:
        """Forward, loss, backward, clip, optimizer and scheduler step; returns loss/correct/n/lr."""
        x, y = batch
        x, y = x.to(self.device, non_blocking=True), torch.as_tensor(y).to(self.device)
        self.set_mode()
        lr = self.optimizer.param_groups[0]["lr"]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.net(x)  # (B, C)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        finite = bool(torch.isfinite(loss))
        if self.distributed:  # every rank must agree before DDP's gradient all-reduce
            import torch.distributed as dist

            flag = torch.tensor(float(finite), device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = bool(flag.item())
        out = {"loss": float(loss.detach()), "n": int(y.shape[0]), "lr": lr, "finite": finite,
               "correct": int((logits.detach().argmax(-1) == y).sum())}
        if not finite:
            return out  # the weights stay as they were before this batch
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return out


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device | None = None,
             bf16: bool = False) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``loader`` (eval mode, no gradients)."""
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), torch.as_tensor(y).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)  # (B, C)
        total_loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        n += int(y.shape[0])
    model.train(was_training)
    if n == 0:
        raise ValueError("the validation loader is empty; give the dataset a non-empty val split")
    return {"loss": total_loss / n, "accuracy": correct / n}


# --------------------------------------------------------------------------- results and monitoring
@dataclass
class FitResult:
    """What a training run produced."""

    model: nn.Module  # the trained model (best weights when restore_best); LoRA merged into plain linears
    history: list[dict[str, Any]]  # one dict per epoch: loss, accuracy, val_loss, val_accuracy, lr, ...
    steps: list[dict[str, Any]]  # one dict per step: step, epoch, loss, accuracy, lr, images_per_second
    best_val_accuracy: float  # -1.0 when no epoch was evaluated
    best_epoch: int | None
    best_state: dict[str, torch.Tensor] | None  # CPU copy of the best weights (state dict of the plain model)
    seconds: float
    stop_reason: str  # completed | max_seconds | max_steps | callback | stopped | nan_loss
    message: str
    strategy: str
    trainable_params: int
    images_per_second: float  # training images per second of step time (cached features count as images)
    cached_features: bool
    feature_seconds: float = 0.0  # time spent computing cached features
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def stopped_early(self) -> bool:
        """Whether the run ended before its planned epochs."""
        return self.stop_reason != "completed"


_STOP_CODES = {"": 0, "max_steps": 1, "max_seconds": 2, "stopped": 3, "callback": 4, "nan_loss": 5}


class _Monitor:
    """Step/epoch bookkeeping shared by both loops: metrics, callbacks, limits, best state."""

    def __init__(self, run: _Run, callbacks: list[Callback], stop: Any, max_seconds: float | None,
                 max_steps: int | None, start: float | None = None) -> None:
        self.run, self.callbacks, self.stop = run, callbacks, stop
        self.max_seconds, self.max_steps = max_seconds, max_steps
        self.start = time.perf_counter() if start is None else start  # includes set-up and feature caching
        self.step = 0
        self.epoch = 1
        self.steps: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self.best_acc, self.best_epoch, self.best_state = -1.0, None, None
        self.reason, self.message = "", ""
        self.train_seconds, self.train_images = 0.0, 0
        self.epoch_loss, self.epoch_correct, self.epoch_n, self.epoch_seconds = 0.0, 0, 0, 0.0
        self.last_tick = time.perf_counter()
        self.last_lr = 0.0

    # -- helpers
    def _stop_requested(self) -> bool:
        s = self.stop
        if s is None:
            return False
        if isinstance(s, threading.Event) or hasattr(s, "is_set"):
            return bool(s.is_set())
        return bool(s())

    def _call(self, event: dict[str, Any]) -> str:
        if not self.run.is_main:
            return ""
        for cb in self.callbacks:
            try:
                if cb(event) is False:
                    return "callback"
            except StopTraining:
                return "callback"
        return ""

    def _sync(self, reason: str) -> str:
        """All ranks adopt the most serious stop reason any rank (in practice rank 0) found."""
        if not self.run.distributed:
            return reason
        import torch.distributed as dist

        code = torch.tensor(_STOP_CODES[reason], device=self.run.device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        return {v: k for k, v in _STOP_CODES.items()}[int(code.item())]

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.start

    def start_epoch(self, epoch: int) -> None:
        """Reset the running epoch metrics."""
        self.epoch = epoch
        self.epoch_loss, self.epoch_correct, self.epoch_n, self.epoch_seconds = 0.0, 0, 0, 0.0
        self.last_tick = time.perf_counter()

    # -- events
    def on_step(self, out: dict[str, Any]) -> str:
        """Record a step; returns a stop reason ("" to go on)."""
        now = time.perf_counter()
        dt, self.last_tick = now - self.last_tick, now
        self.step += 1
        reason = ""
        if not out["finite"]:
            reason = "nan_loss"
            self.message = (
                f"the loss became {out['loss']} at step {self.step} (epoch {self.epoch}) with lr {out['lr']:.3g}; "
                "training stopped and kept the best checkpoint. Lower the learning rate or keep grad_clip on"
            )
        else:
            self.epoch_loss += out["loss"] * out["n"]
            self.epoch_correct += out["correct"]
            self.epoch_n += out["n"]
            self.epoch_seconds += dt
            self.train_seconds += dt
            self.train_images += out["n"]
            self.last_lr = out["lr"]
            event = {
                "event": "step", "step": self.step, "epoch": self.epoch, "loss": out["loss"],
                "accuracy": out["correct"] / out["n"], "lr": out["lr"],
                "images_per_second": self.epoch_n / max(self.epoch_seconds, 1e-9), "seconds": self.elapsed(),
            }
            self.steps.append(event)
            reason = self._call(event)
            if not reason and self._stop_requested():
                reason = "stopped"
            if not reason and self.max_seconds is not None and self.elapsed() >= self.max_seconds:
                reason = "max_seconds"
            if not reason and self.max_steps is not None and self.step >= self.max_steps:
                reason = "max_steps"
        reason = self._sync(reason)
        if reason:
            self.reason = reason
        self.last_tick = time.perf_counter()
        return reason

    def on_epoch(self, val: dict[str, float]) -> str:
        """Record an evaluated epoch (or partial epoch), keep the best state; returns a stop reason."""
        acc = val["accuracy"]
        if acc > self.best_acc:
            self.best_acc, self.best_epoch = acc, self.epoch
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.run.model.state_dict().items()}
        event = {
            "event": "epoch", "epoch": self.epoch, "step": self.step,
            "loss": self.epoch_loss / max(self.epoch_n, 1), "accuracy": self.epoch_correct / max(self.epoch_n, 1),
            "val_loss": val["loss"], "val_accuracy": acc, "lr": self.last_lr,
            "images_per_second": self.epoch_n / max(self.epoch_seconds, 1e-9), "seconds": self.elapsed(),
            "best_val_accuracy": self.best_acc, "complete": not self.reason,
        }
        self.history.append(event)
        if self.run.writer is not None:
            for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
                self.run.writer.add_scalar(f"epoch/{key}", event[key], self.step)
        if self.reason:
            return self.reason
        reason = self._call(event)
        if not reason and self._stop_requested():
            reason = "stopped"
        if not reason and self.max_seconds is not None and self.elapsed() >= self.max_seconds:
            reason = "max_seconds"
        reason = self._sync(reason)
        if reason:
            self.reason = reason
        return reason


# --------------------------------------------------------------------------- set-up shared by both loops
@dataclass
class _Run:
    base: nn.Module  # the user's model
    model: nn.Module  # base or its peft wrapper: whose state is checkpointed
    net: nn.Module  # what the step calls: model, the cached head, or their DDP wrapper
    eval_net: nn.Module  # the same without DDP
    step: TrainStep
    train_loader: DataLoader
    val_loader: DataLoader
    sampler: Any
    device: torch.device
    strategy: str
    cached: bool
    trainable: int
    epochs: int
    bf16: bool
    distributed: bool
    is_main: bool
    flags: dict[str, bool]
    feature_seconds: float
    writer: Any = None
    monitor: _Monitor | None = None


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or "token" in name or "pos_embedding" in name:
            no_decay.append(p)  # biases, norms, CLS/position embeddings: no weight decay
        else:
            decay.append(p)
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
            if g["params"]]


def _schedule(total_steps: int, warmup: float | int) -> Callable[[int], float]:
    if isinstance(warmup, float) and 0.0 <= warmup < 1.0:
        warm = round(warmup * total_steps)
    elif isinstance(warmup, int) and warmup >= 0:
        warm = warmup
    else:
        raise ValueError(f"warmup={warmup!r} must be a fraction of the steps in [0, 1) or a number of steps")

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm  # linear warm-up
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine decay to 0

    return factor


def _setup(
    model: nn.Module, data: DataBundle, *, strategy: str, last_k: int, epochs: int, lr: float | None,
    weight_decay: float, warmup: float | int, label_smoothing: float, device: Any, seed: int, bf16: bool,
    augment: bool | None, cache_features: bool | None, batch_size: int | None, grad_clip: float | None,
    lora_rank: int, lora_alpha: float, log_dir: str | Path | None,
) -> _Run:
    if not isinstance(model, nn.Module):
        raise ValueError(f"fit() trains an nn.Module, got {type(model).__name__}")
    if not isinstance(data, DataBundle):
        raise ValueError(f"fit() needs a vitcore DataBundle (e.g. shapes_bundle()), got {type(data).__name__}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r} must be a positive integer")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1), e.g. 0.1")
    check_strategy(model, strategy, last_k)
    head = getattr(model, head_names(model)[0])
    if isinstance(head, nn.Linear) and head.out_features != data.num_classes:
        raise ValueError(
            f"the model predicts {head.out_features} classes but the data has {data.num_classes} "
            f"({data.class_names}); replace the head first (e.g. model.head = nn.Linear(D, {data.num_classes}))"
        )
    distributed, rank, world = _dist()
    device = resolve_device(device)
    if distributed and device.type == "cuda" and device.index is None:
        import os

        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    torch.manual_seed(seed)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.to(device)

    augment = data.augment if augment is None else augment
    datasets = data.datasets or {split: loader.dataset for split, loader in data.dataloaders.items()}
    if "train" not in datasets or "val" not in datasets:
        raise ValueError(f"the DataBundle needs 'train' and 'val' splits, it has {sorted(datasets)}")
    train_set = datasets["train"] if augment else datasets.get("train_plain", datasets["train"])
    val_set = datasets["val"]
    if cache_features is None:
        cache_features = strategy == "head" and not augment
    if cache_features and (strategy != "head" or augment):
        raise ValueError("cached features need strategy='head' and augment=False (the backbone must be frozen "
                         "and see the same images every epoch)")
    batch_size = batch_size or data.batch_size

    wrapped = prepare_model(model, strategy, last_k=last_k, lora_rank=lora_rank, lora_alpha=lora_alpha)
    wrapped.to(device)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)

    feature_seconds = 0.0
    if cache_features:
        t0 = time.perf_counter()
        train_set = _cache_features(model, train_set, batch_size, device, bf16)
        val_set = _cache_features(model, val_set, batch_size, device, bf16)
        feature_seconds = time.perf_counter() - t0
        net: nn.Module = _HeadOnly(model)

        def set_mode() -> None:
            net.train()
    else:
        net = wrapped

        def set_mode() -> None:
            set_train_mode(wrapped, strategy, last_k)

    eval_net = net
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                              generator=generator, num_workers=0)
    val_loader = DataLoader(val_set, batch_size=max(batch_size, 64), shuffle=False, num_workers=0,
                            generator=torch.Generator().manual_seed(seed))
    if len(train_loader) == 0:
        raise ValueError("the training split is empty; add images to the train split")

    lr = DEFAULT_LR[strategy] if lr is None else lr
    if not lr > 0:
        raise ValueError(f"lr={lr!r} must be positive, e.g. {DEFAULT_LR[strategy]}")
    optimizer = torch.optim.AdamW(_param_groups(eval_net, weight_decay), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(epochs * len(train_loader), warmup))
    step = TrainStep(net, optimizer, scheduler, device=device, label_smoothing=label_smoothing, bf16=bf16,
                     grad_clip=grad_clip, set_mode=set_mode, distributed=distributed)
    writer = None
    if log_dir is not None and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))
    return _Run(base=model, model=wrapped, net=net, eval_net=eval_net, step=step, train_loader=train_loader,
                val_loader=val_loader, sampler=sampler, device=device, strategy=strategy, cached=cache_features,
                trainable=trainable, epochs=epochs, bf16=bf16, distributed=distributed, is_main=rank == 0,
                flags=flags, feature_seconds=feature_seconds, writer=writer)


def _finish(run: _Run, monitor: _Monitor, restore_best: bool) -> FitResult:
    model = run.model
    best_state = monitor.best_state
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    if run.strategy == "lora":
        if best_state is not None and not restore_best:
            shadow = copy.deepcopy(model)
            shadow.load_state_dict(best_state)
            best_state = merge_lora(shadow).state_dict()
        model = merge_lora(model)
        if best_state is not None and restore_best:
            best_state = model.state_dict()
        if best_state is not None:
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in best_state.items()}
    for name, p in model.named_parameters():
        p.requires_grad_(run.flags.get(name, True))
    model.train(False)
    if run.writer is not None:
        run.writer.close()
    reason = monitor.reason or "completed"
    message = monitor.message or {
        "completed": f"finished {run.epochs} epoch(s)",
        "max_seconds": f"stopped at the time limit after {monitor.elapsed():.1f} s (epoch {monitor.epoch})",
        "max_steps": f"stopped after {monitor.step} step(s) as asked",
        "callback": f"a callback stopped the run at step {monitor.step} (epoch {monitor.epoch})",
        "stopped": f"stopped on request at step {monitor.step} (epoch {monitor.epoch})",
    }[reason]
    if monitor.best_epoch is not None:
        message += f"; best val accuracy {monitor.best_acc:.2%} at epoch {monitor.best_epoch}"
    return FitResult(
        model=model, history=monitor.history, steps=monitor.steps, best_val_accuracy=monitor.best_acc,
        best_epoch=monitor.best_epoch, best_state=best_state, seconds=monitor.elapsed(), stop_reason=reason,
        message=message, strategy=run.strategy, trainable_params=run.trainable,
        images_per_second=monitor.train_images / max(monitor.train_seconds, 1e-9), cached_features=run.cached,
        feature_seconds=run.feature_seconds,
    )


_FIT_DOC_ARGS = """
    Args:
        model: a vitcore ``VisionTransformer``, or any classifier whose last layer is ``.fc``/``.head``
            (e.g. torchvision ``resnet18`` as a CNN baseline: strategies "full" and "head").
        data: a :class:`~vitcore.data.DataBundle`; its ``datasets`` are re-loaded with seeded loaders
            (and a ``DistributedSampler`` under torchrun).
        strategy: "full", "head", "last_k" or "lora" (see the module docstring).
        epochs / max_seconds / max_steps: limits; whichever comes first ends the run.
        lr: peak learning rate of AdamW (default per strategy, ``DEFAULT_LR``); linear ``warmup``
            (fraction of the steps, or a step count) then cosine decay to 0 over ``epochs``.
        callbacks: callables receiving a dict per step (event="step": step, epoch, loss, accuracy, lr,
            images_per_second, seconds) and per epoch (event="epoch": adds val_loss, val_accuracy,
            best_val_accuracy). Returning ``False`` or raising :class:`StopTraining` stops the run.
        stop: a ``threading.Event`` (or zero-argument callable) checked every step.
        augment: use the augmented train split (default: the bundle's setting).
        cache_features: train the head on cached backbone features (default: strategy "head" without
            augmentation).
        restore_best: load the best validation weights into the returned model.
        bf16: bfloat16 autocast. device: None picks cuda, mps, then cpu.
"""


def fit(
    model: nn.Module,
    data: DataBundle,
    *,
    strategy: str = "full",
    last_k: int = 2,
    epochs: int = 10,
    max_seconds: float | None = None,
    max_steps: int | None = None,
    lr: float | None = None,
    weight_decay: float = 0.05,
    warmup: float | int = 0.05,
    label_smoothing: float = 0.0,
    callbacks: Iterable[Callback] = (),
    stop: threading.Event | Callable[[], bool] | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    bf16: bool = False,
    augment: bool | None = None,
    cache_features: bool | None = None,
    batch_size: int | None = None,
    grad_clip: float | None = 1.0,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    restore_best: bool = True,
    log_dir: str | Path | None = None,
) -> FitResult:
    """Train ``model`` in place with a plain PyTorch loop and return a :class:`FitResult`."""
    start = time.perf_counter()
    run = _setup(model, data, strategy=strategy, last_k=last_k, epochs=epochs, lr=lr, weight_decay=weight_decay,
                 warmup=warmup, label_smoothing=label_smoothing, device=device, seed=seed, bf16=bf16,
                 augment=augment, cache_features=cache_features, batch_size=batch_size, grad_clip=grad_clip,
                 lora_rank=lora_rank, lora_alpha=lora_alpha, log_dir=log_dir)
    monitor = _Monitor(run, list(callbacks), stop, max_seconds, max_steps, start)
    for epoch in range(1, epochs + 1):
        if run.sampler is not None:
            run.sampler.set_epoch(epoch)
        monitor.start_epoch(epoch)
        reason = ""
        for batch in run.train_loader:
            out = run.step(batch)
            if run.writer is not None and out["finite"]:
                run.writer.add_scalar("train/loss", out["loss"], monitor.step + 1)
                run.writer.add_scalar("train/lr", out["lr"], monitor.step + 1)
            reason = monitor.on_step(out)
            if reason:
                break
        if reason == "nan_loss":
            break
        if monitor.epoch_n == 0:
            break
        if monitor.on_epoch(evaluate(run.eval_net, run.val_loader, run.device, run.bf16)):
            break
    return _finish(run, monitor, restore_best)


fit.__doc__ = (fit.__doc__ or "") + _FIT_DOC_ARGS


def fit_ignite(
    model: nn.Module,
    data: DataBundle,
    *,
    log_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    **kwargs: Any,
) -> FitResult:
    """Train like :func:`fit` (same arguments, same step function) inside a pytorch-ignite ``Engine``.

    Adds an evaluator engine (ignite ``Accuracy`` and ``Loss``) run after every epoch, a
    ``ModelCheckpoint`` keeping the best validation weights in ``checkpoint_dir`` and a
    TensorBoard logger of loss, accuracy and learning rate in ``log_dir`` (rank 0 only).
    """
    from ignite.engine import Engine, Events
    from ignite.handlers import ModelCheckpoint, global_step_from_engine
    from ignite.metrics import Accuracy, Loss

    restore_best = kwargs.pop("restore_best", True)
    callbacks = list(kwargs.pop("callbacks", ()))
    stop = kwargs.pop("stop", None)
    max_seconds = kwargs.pop("max_seconds", None)
    max_steps = kwargs.pop("max_steps", None)
    options = {
        "strategy": "full", "last_k": 2, "epochs": 10, "lr": None, "weight_decay": 0.05, "warmup": 0.05,
        "label_smoothing": 0.0, "device": None, "seed": 0, "bf16": False, "augment": None, "cache_features": None,
        "batch_size": None, "grad_clip": 1.0, "lora_rank": 8, "lora_alpha": 16.0,
    }
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(f"fit_ignite() got unknown arguments {unknown}; it takes the arguments of fit()")
    options.update(kwargs)
    start = time.perf_counter()
    run = _setup(model, data, log_dir=None, **options)
    monitor = _Monitor(run, callbacks, stop, max_seconds, max_steps, start)

    def train_step(engine: Engine, batch: Any) -> dict[str, Any]:
        return run.step(batch)

    @torch.no_grad()
    def eval_step(engine: Engine, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        run.eval_net.eval()
        x, y = batch
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.bf16):
            logits = run.eval_net(x.to(run.device))  # (B, C)
        return logits.float(), torch.as_tensor(y).to(run.device)

    trainer, evaluator = Engine(train_step), Engine(eval_step)
    Accuracy().attach(evaluator, "accuracy")
    Loss(nn.CrossEntropyLoss()).attach(evaluator, "loss")
    state = {"evaluated_epoch": 0}

    @trainer.on(Events.EPOCH_STARTED)
    def _start(engine: Engine) -> None:
        if run.sampler is not None:
            run.sampler.set_epoch(engine.state.epoch)
        monitor.start_epoch(engine.state.epoch)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _after_step(engine: Engine) -> None:
        if monitor.on_step(engine.state.output):
            engine.terminate()

    def _evaluate(engine: Engine) -> None:
        if state["evaluated_epoch"] == engine.state.epoch or monitor.reason == "nan_loss" or monitor.epoch_n == 0:
            return
        state["evaluated_epoch"] = engine.state.epoch
        evaluator.run(run.val_loader)
        metrics = evaluator.state.metrics
        if monitor.on_epoch({"loss": float(metrics["loss"]), "accuracy": float(metrics["accuracy"])}):
            engine.terminate()

    trainer.add_event_handler(Events.EPOCH_COMPLETED, _evaluate)
    trainer.add_event_handler(Events.TERMINATE, _evaluate)  # a stopped run still scores its partial epoch

    logger = None
    if run.is_main and checkpoint_dir is not None:
        saver = ModelCheckpoint(
            str(checkpoint_dir), filename_prefix="best", n_saved=1, require_empty=False,
            score_function=lambda e: float(e.state.metrics["accuracy"]), score_name="val_accuracy",
            global_step_transform=global_step_from_engine(trainer),
        )
        evaluator.add_event_handler(Events.COMPLETED, saver, {"model": run.model})
    if run.is_main and log_dir is not None:
        from ignite.handlers.tensorboard_logger import OptimizerParamsHandler, OutputHandler, TensorboardLogger

        logger = TensorboardLogger(log_dir=str(log_dir))
        logger.attach(trainer, OutputHandler(tag="train", output_transform=lambda o: {
            "loss": o["loss"], "accuracy": o["correct"] / max(o["n"], 1)}), Events.ITERATION_COMPLETED)
        logger.attach(trainer, OptimizerParamsHandler(run.step.optimizer, param_name="lr"), Events.ITERATION_STARTED)
        logger.attach(evaluator, OutputHandler(tag="val", metric_names=["loss", "accuracy"],
                                               global_step_transform=global_step_from_engine(trainer)),
                      Events.COMPLETED)
    try:
        trainer.run(run.train_loader, max_epochs=run.epochs)
    finally:
        if logger is not None:
            logger.close()
    return _finish(run, monitor, restore_best)

