"""Few-shot classes on a frozen backbone: cached features, a linear head, one plain model at the end.

A linear probe on a self-supervised ViT (DINOv2, Oquab et al. 2023, Sec. 7) learns new classes
from a handful of photos: the backbone is frozen, so its features are computed once per image
(:func:`extract_features`), and the head is a logistic regression on them
(:func:`train_linear_head`), trained full-batch in well under a second. DINOv2's probe reads the
CLS token concatenated with the mean of the patch tokens, both after the final LayerNorm::

    f(x) = [ LN(z_L)^0 ; mean_i LN(z_L)^i ]        (B, 2D)

:func:`attach_head` turns backbone + head into one :class:`VisionTransformer` with
``pool="cls+mean"`` whose forward gives exactly ``head(f(x))``, so the result is a plain vitcore
checkpoint (``save_checkpoint`` / ``load_checkpoint``) with its preprocessing record.

The backbone passed in may be a model shared by many threads (the app's cached DINOv2): it is
only read (``forward_features`` under ``no_grad``); nothing on it is copied, switched or hooked.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from scipy import optimize
from threadpoolctl import ThreadpoolController
from torch import nn

from ..data.images import Preprocessing
from ..model.vit import VisionTransformer

__all__ = [
    "VIEWS",
    "LinearHeadResult",
    "attach_head",
    "extract_features",
    "lfw_subset",
    "logistic_loss",
    "minimize_lbfgs",
    "pooled_features",
    "train_linear_head",
    "with_views",
]

# Augmented views of a collected photo (deterministic, so a feature cache is reproducible):
# "flip" mirrors it left-right, "crop" keeps the central 80 % (a zoom), "crop_flip" both.
VIEWS = ("flip", "crop", "crop_flip")
CROP_FRACTION = 0.8


def _check_backbone(backbone: nn.Module) -> None:
    if not isinstance(backbone, VisionTransformer):
        raise ValueError(f"expected a vitcore VisionTransformer backbone, got {type(backbone).__name__}")


def pooled_features(backbone: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """[CLS ; mean of patch tokens] of final-LayerNorm tokens (B, T, D) -> (B, 2D)."""
    prefix = backbone.num_prefix_tokens
    return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(dim=1)], dim=-1)  # (B, 2D)


def _view(image: Image.Image, view: str) -> Image.Image:
    if view in ("crop", "crop_flip"):
        w, h = image.size
        cw, ch = max(1, round(w * CROP_FRACTION)), max(1, round(h * CROP_FRACTION))
        left, top = (w - cw) // 2, (h - ch) // 2
        image = image.crop((left, top, left + cw, top + ch))
    if view in ("flip", "crop_flip"):
        image = ImageOps.mirror(image)
    return image


def with_views(images: Sequence[Image.Image], labels: Sequence[int], views: Sequence[str] = ()
               ) -> tuple[list[Image.Image], list[int]]:
    """The images followed by each augmented view of all of them (see :data:`VIEWS`), labels alongside."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ValueError(f"unknown views {unknown}; choose from {list(VIEWS)}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels; give one label per image")
    out_images, out_labels = list(images), list(labels)
    for view in views:
        out_images += [_view(img, view) for img in images]
        out_labels += list(labels)
    return out_images, out_labels


@torch.no_grad()
def extract_features(
    backbone: VisionTransformer,
    images: Sequence[Image.Image],
    preprocessing: Preprocessing,
    batch_size: int = 16,
    progress: Callable[[int, int], Any] | None = None,
) -> torch.Tensor:
    """Frozen-backbone features of PIL images, (B, 2D) = [CLS ; mean patch token] (float32, CPU).

    Images go through ``preprocessing`` (the backbone's record) and the backbone in batches of
    ``batch_size``; ``progress(done, total)`` is called after every batch with counts of images,
    and may raise to stop early (e.g. a job's ``check``). The backbone is only read.
    """
    _check_backbone(backbone)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    images = list(images)
    if not images:
        raise ValueError("no images were given; collect some first")
    param = next(backbone.parameters())
    total = len(images)
    parts = []
    if progress is not None:
        progress(0, total)
    for start in range(0, total, batch_size):
        x = preprocessing.batch(images[start : start + batch_size]).to(param.device, param.dtype)  # (b, C, H, W)
        tokens = backbone.forward_features(x)  # (b, T, D), read-only
        parts.append(pooled_features(backbone, tokens).float().cpu())  # (b, 2D)
        if progress is not None:
            progress(min(start + batch_size, total), total)
    return torch.cat(parts)  # (B, 2D)


@dataclass
class LinearHeadResult:
    """A trained head on raw features plus how the optimisation went."""

    head: nn.Linear  # reads raw features (B, 2D); the standardisation is folded into it
    loss: float  # final training objective (cross-entropy + weight decay)
    train_accuracy: float
    iterations: int


def logistic_loss(params: np.ndarray, features: np.ndarray, labels: np.ndarray, num_classes: int,
                  weight_decay: float) -> tuple[float, np.ndarray]:
    """Objective and gradient of multinomial logistic regression (float64 NumPy).

    ``params`` = [W (C, F) row-major ; b (C,)]; loss = mean CE(W f + b, y) + weight_decay / 2 ||W||².
    """
    B, Fdim = features.shape
    C = num_classes
    W, b = params[: C * Fdim].reshape(C, Fdim), params[C * Fdim :]  # (C, F), (C,)
    logits = features @ W.T + b  # (B, C)
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))  # (B, C)
    loss = -log_p[np.arange(B), labels].mean() + 0.5 * weight_decay * float(np.vdot(W, W))
    d_logits = np.exp(log_p)  # (B, C) softmax
    d_logits[np.arange(B), labels] -= 1.0
    d_logits /= B
    grad_W = d_logits.T @ features + weight_decay * W  # (C, F)
    return float(loss), np.concatenate([grad_W.ravel(), d_logits.sum(axis=0)])


@functools.cache
def _blas_threads() -> ThreadpoolController:
    """The process's BLAS thread pools, found once (a fresh search costs ~15 ms; the limit itself ~20 µs)."""
    return ThreadpoolController()


def minimize_lbfgs(fun: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray, *, max_iter: int = 300,
                   history: int = 10, gtol: float = 1e-7, ftol: float = 1e-12) -> tuple[np.ndarray, float, int]:
    """SciPy's L-BFGS-B on ``fun(x) -> (f, grad)`` from ``x0``: (x, f(x), iterations).

    For smooth convex objectives such as :func:`logistic_loss`. ``history`` is the number of
    correction pairs kept (``maxcor``); it stops when the largest gradient entry is <= ``gtol`` or
    the relative decrease of f is <= ``ftol``. BLAS runs on one thread meanwhile
    (``threadpoolctl``): at these sizes a thread pool's wake-ups cost more than the products, and
    on a CPU shared by many sessions they cost far more.
    """
    x0 = np.asarray(x0, dtype=np.float64)
    options = {"maxiter": max_iter, "maxcor": history, "gtol": gtol, "ftol": ftol}
    with _blas_threads().limit(limits=1, user_api="blas"):
        result = optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", options=options)
    return result.x, float(result.fun), int(result.nit)


def train_linear_head(
    features: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    num_classes: int | None = None,
    *,
    weight_decay: float = 1e-3,
    max_iter: int = 300,
    standardize: bool = True,
) -> LinearHeadResult:
    """Multinomial logistic regression on features (B, F), full batch with L-BFGS (SciPy); deterministic.

    Minimises :func:`logistic_loss` with :func:`minimize_lbfgs` on the features standardised with
    their own mean and std (``standardize=True``), from W = 0, b = 0: the problem is convex, so
    the start needs no random generator and equal inputs give equal heads. The standardisation is
    then folded into the returned ``nn.Linear``, which reads raw features: ``W' = W / σ``,
    ``b' = b - W' μ``. A few hundred photos take well under a second.
    """
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        raise ValueError(f"features must be a (B, F) tensor, got {getattr(features, 'shape', type(features))}")
    y = torch.as_tensor(labels, dtype=torch.long)
    if y.shape != (features.shape[0],):
        raise ValueError(f"labels have shape {tuple(y.shape)}; expected one per feature row ({features.shape[0]})")
    C = int(num_classes if num_classes is not None else int(y.max()) + 1)
    if C < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {C}")
    if bool((y < 0).any() or (y >= C).any()):
        raise ValueError(f"labels must be in 0..{C - 1}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay} must be >= 0")
    f = features.detach().double().cpu().numpy()  # (B, F)
    Fdim = f.shape[1]
    mu = f.mean(axis=0) if standardize else np.zeros(Fdim)  # (F,)
    sd = np.maximum(f.std(axis=0), 1e-6) if standardize else np.ones(Fdim)  # (F,)
    z = (f - mu) / sd  # (B, F)
    y_np = y.numpy()
    params, loss, iterations = minimize_lbfgs(lambda p: logistic_loss(p, z, y_np, C, weight_decay),
                                              np.zeros(C * Fdim + C), max_iter=max_iter)
    W, b = params[: C * Fdim].reshape(C, Fdim), params[C * Fdim :]
    weight = W / sd  # (C, F)
    bias = b - np.einsum("cf,f->c", weight, mu)  # (C,)
    head = nn.Linear(Fdim, C)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
        accuracy = float((head(features.float()).argmax(-1) == y).float().mean())
    return LinearHeadResult(head=head, loss=loss, train_accuracy=accuracy, iterations=iterations)


def attach_head(backbone: VisionTransformer, head: nn.Linear, class_names: Sequence[str] | None = None
                ) -> VisionTransformer:
    """A new model = a copy of ``backbone`` + ``head`` reading [CLS ; mean patch], ``pool="cls+mean"``.

    Its forward equals ``head(pooled_features(backbone, backbone.forward_features(x)))``. The
    backbone is copied (the new model is the user's own, e.g. to fine-tune further or save); the
    original is not changed. ``class_names``, when given, must have one name per head output.
    """
    _check_backbone(backbone)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"head must be an nn.Linear, got {type(head).__name__}")
    D = backbone.config.dim
    if head.in_features != 2 * D:
        raise ValueError(f"the head reads {head.in_features} features; [CLS ; mean patch] of this backbone has {2 * D}")
    if class_names is not None and len(class_names) != head.out_features:
        raise ValueError(f"{len(class_names)} class names for a head with {head.out_features} outputs")
    config = backbone.config.replace(num_classes=head.out_features, pool="cls+mean", distilled_head=False)
    with torch.device("meta"):  # shapes only: no random initialisation of weights that are overwritten anyway
        model = VisionTransformer(config)
    param = next(backbone.parameters())
    state = {k: v.detach().clone() for k, v in backbone.state_dict().items()
             if not k.startswith(("head.", "head_dist."))}
    state["head.weight"] = head.weight.detach().to(param.device, param.dtype).clone()
    state["head.bias"] = head.bias.detach().to(param.device, param.dtype).clone()
    model.load_state_dict(state, assign=True)  # the copies become the new model's parameters
    return model.eval()


def lfw_subset(size: int = 64) -> tuple[list[Image.Image], list[int], list[str]]:
    """scikit-image's bundled LFW subset: 100 faces then 100 non-faces, 25×25 grey.

    Returns RGB PIL images upsampled (bicubic) to ``size`` px, labels (0 face, 1 not a face) and
    the class names.
    """
    from skimage import data

    arrays = data.lfw_subset()  # (200, 25, 25) floats in [0, 1]
    images = []
    for a in arrays:
        grey = Image.fromarray(np.clip(np.asarray(a) * 255.0, 0, 255).round().astype(np.uint8))
        images.append(grey.resize((size, size), Image.Resampling.BICUBIC).convert("RGB"))
    labels = [0] * 100 + [1] * 100
    return images, labels, ["face", "not a face"]
