"""The pieces every loop shares: devices, the one optimisation step, evaluation, cached backbone features."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..model.vit import VisionTransformer
from .strategies import head_names

__all__ = ["StopTraining", "TrainStep", "evaluate", "resolve_device"]


class StopTraining(Exception):  # noqa: N818  (an instruction, not an error)
    """Raise from a callback to end the run cleanly (the best checkpoint is kept)."""


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


def dist_info() -> tuple[bool, int, int]:
    """(distributed?, rank, world size) of the current process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


# --------------------------------------------------------------------------- cached features
class HeadOnly(nn.Module):
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


def cached_feature_dataset(
    model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device, bf16: bool
) -> Dataset:
    was_training = model.training
    model.eval()
    feats, labels = [], []
    loader = DataLoader(dataset, batch_size=max(batch_size, 64), shuffle=False, num_workers=0,
                        generator=torch.Generator().manual_seed(0))  # a private generator: global RNG untouched
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


