"""The plain PyTorch training loop (the tutorial's), on the shared step, set-up and monitor."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from torch import nn

from ..data import DataBundle
from .monitor import Callback, FitResult, Monitor
from .options import FitOptions
from .setup import finish_run, setup_run
from .step import evaluate

__all__ = ["fit"]


def fit(
    model: nn.Module,
    data: DataBundle,
    options: FitOptions | None = None,
    *,
    callbacks: Iterable[Callback] = (),
    stop: threading.Event | Callable[[], bool] | None = None,
    log_dir: str | Path | None = None,
    **overrides: Any,
) -> FitResult:
    """Train ``model`` in place with a plain PyTorch loop and return a :class:`FitResult`.

    Args:
        model: a vitcore ``VisionTransformer``, or any classifier whose last layer is ``.fc``/``.head``
            (e.g. torchvision ``resnet18`` as a CNN baseline: strategies "full" and "head").
        data: a :class:`~vitcore.data.DataBundle`; its ``datasets`` are re-loaded with seeded loaders
            (and a ``DistributedSampler`` under torchrun).
        options: a :class:`FitOptions`; keyword ``overrides`` change some of its fields
            (``fit(model, data, strategy="head", epochs=5)`` works without building one).
        callbacks: callables receiving a dict per step (event="step": step, epoch, loss, accuracy, lr,
            images_per_second, seconds) and per epoch (event="epoch": adds val_loss, val_accuracy,
            best_val_accuracy). Returning ``False`` or raising :class:`StopTraining` stops the run.
        stop: a ``threading.Event`` (or zero-argument callable) checked every step.
        log_dir: TensorBoard event files of loss, accuracy and learning rate (rank 0 only).
    """
    options = FitOptions.build(options, **overrides)
    start = time.perf_counter()
    run = setup_run(model, data, options, log_dir)
    monitor = Monitor(run, list(callbacks), stop, options.max_seconds, options.max_steps, start)
    for epoch in range(1, options.epochs + 1):
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
    return finish_run(run, monitor, options.restore_best)


