"""Results and bookkeeping shared by both loops: metrics per step and epoch, callbacks, limits, best state."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .step import StopTraining, TrainStep

__all__ = ["Callback", "FitResult", "Monitor", "TrainingRun"]

Callback = Callable[[dict[str, Any]], Any]


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


class Monitor:
    """Step/epoch bookkeeping shared by both loops: metrics, callbacks, limits, best state."""

    def __init__(self, run: TrainingRun, callbacks: list[Callback], stop: Any, max_seconds: float | None,
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


@dataclass
class TrainingRun:
    """Everything one fit needs, built by ``setup_run`` and shared by both loops."""

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
    monitor: Monitor | None = None
