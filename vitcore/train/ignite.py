"""The same training inside a pytorch-ignite ``Engine``: evaluator, best checkpoints, TensorBoard."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DataBundle
from .monitor import Callback, FitResult, Monitor
from .options import FitOptions
from .setup import finish_run, setup_run

__all__ = ["fit_ignite"]


def fit_ignite(
    model: nn.Module,
    data: DataBundle,
    options: FitOptions | None = None,
    *,
    callbacks: Iterable[Callback] = (),
    stop: threading.Event | Callable[[], bool] | None = None,
    log_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    **overrides: Any,
) -> FitResult:
    """Train like :func:`~vitcore.train.fit` (same options, same step function) inside a pytorch-ignite ``Engine``.

    Adds an evaluator engine (ignite ``Accuracy`` and ``Loss``) run after every epoch, a
    ``ModelCheckpoint`` keeping the best validation weights in ``checkpoint_dir`` and a
    TensorBoard logger of loss, accuracy and learning rate in ``log_dir`` (rank 0 only).
    """
    from ignite.engine import Engine, Events
    from ignite.handlers import ModelCheckpoint, global_step_from_engine
    from ignite.metrics import Accuracy, Loss

    options = FitOptions.build(options, **overrides)
    start = time.perf_counter()
    run = setup_run(model, data, options, None)
    monitor = Monitor(run, list(callbacks), stop, options.max_seconds, options.max_steps, start)

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
    return finish_run(run, monitor, options.restore_best)

