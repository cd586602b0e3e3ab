"""Set-up and wind-down shared by :func:`~vitcore.train.fit` and :func:`~vitcore.train.fit_ignite`."""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import DataBundle
from .monitor import FitResult, Monitor, TrainingRun
from .options import FitOptions
from .step import HeadOnly, TrainStep, cached_feature_dataset, dist_info, resolve_device
from .strategies import DEFAULT_LR, check_strategy, head_names, merge_lora, prepare_model, set_train_mode


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
    warm = round(warmup * total_steps) if isinstance(warmup, float) else warmup  # FitOptions checked it

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm  # linear warm-up
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine decay to 0

    return factor


def setup_run(model: nn.Module, data: DataBundle, options: FitOptions, log_dir: str | Path | None) -> TrainingRun:
    if not isinstance(model, nn.Module):
        raise ValueError(f"fit() trains an nn.Module, got {type(model).__name__}")
    if not isinstance(data, DataBundle):
        raise ValueError(f"fit() needs a vitcore DataBundle (e.g. shapes_bundle()), got {type(data).__name__}")
    o = options
    strategy, last_k, epochs, seed, bf16 = o.strategy, o.last_k, o.epochs, o.seed, o.bf16
    augment, cache_features, batch_size = o.augment, o.cache_features, o.batch_size
    check_strategy(model, strategy, last_k)
    head = getattr(model, head_names(model)[0])
    if isinstance(head, nn.Linear) and head.out_features != data.num_classes:
        raise ValueError(
            f"the model predicts {head.out_features} classes but the data has {data.num_classes} "
            f"({data.class_names}); replace the head first (e.g. model.head = nn.Linear(D, {data.num_classes}))"
        )
    distributed, rank, world = dist_info()
    device = resolve_device(o.device)
    if distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    if seed is None:  # leave torch's global RNG alone (a server thread); the data order is still seeded privately
        seed = int.from_bytes(os.urandom(7), "little")
    else:
        torch.manual_seed(seed)  # dropout, augmentation and LoRA init draw from the global RNG
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

    wrapped = prepare_model(model, strategy, last_k=last_k, lora_rank=o.lora_rank, lora_alpha=o.lora_alpha)
    wrapped.to(device)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)

    feature_seconds = 0.0
    if cache_features:
        t0 = time.perf_counter()
        train_set = cached_feature_dataset(model, train_set, batch_size, device, bf16)
        val_set = cached_feature_dataset(model, val_set, batch_size, device, bf16)
        feature_seconds = time.perf_counter() - t0
        net: nn.Module = HeadOnly(model)

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

    lr = DEFAULT_LR[strategy] if o.lr is None else o.lr
    optimizer = torch.optim.AdamW(_param_groups(eval_net, o.weight_decay), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(epochs * len(train_loader), o.warmup))
    step = TrainStep(net, optimizer, scheduler, device=device, label_smoothing=o.label_smoothing, bf16=bf16,
                     grad_clip=o.grad_clip, set_mode=set_mode, distributed=distributed)
    writer = None
    if log_dir is not None and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))
    return TrainingRun(base=model, model=wrapped, net=net, eval_net=eval_net, step=step, train_loader=train_loader,
                val_loader=val_loader, sampler=sampler, device=device, strategy=strategy, cached=cache_features,
                trainable=trainable, epochs=epochs, bf16=bf16, distributed=distributed, is_main=rank == 0,
                flags=flags, feature_seconds=feature_seconds, writer=writer)


def finish_run(run: TrainingRun, monitor: Monitor, restore_best: bool) -> FitResult:
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


