"""Can you trust this map? Faithfulness and sanity checks for patch relevance maps, measured.

A relevance map gives every patch of an image a score for one class. Whether the scores are
*faithful* (the model really relies on the high-scoring patches) is measured here, never assumed:

- **Deletion / insertion** (Petsiuk, Das & Saenko, "RISE", BMVC 2018, Sec. 4.1): remove the patches
  from most to least relevant in ``steps`` steps (deletion) or reveal them in that order on an
  empty canvas (insertion), re-run the model on every step in one batch and track the probability
  of the class. A faithful map makes the deletion curve fall fast (small area) and the insertion
  curve rise fast (large area).
- **Positive / negative perturbation** (Chefer, Gur & Wolf, "Transformer Interpretability Beyond
  Attention Visualization", CVPR 2021, Sec. 5): remove 0, 10, …, 90 % of the patches, most relevant
  first (positive: lower area is better) or least relevant first (negative: higher is better); the
  area under the probability curve or the accuracy curve (``Curve.accuracy_auc``), with the clean
  value at 0 %.
- **The fill** of removed patches is a parameter and travels with every curve: the normalisation
  mean (``"mean"``), a Gaussian ``"blur"`` of the image or black pixels (``"zero"``). Removing
  pixels moves the image off the training distribution and the shape of the hole itself can
  carry class information, so the numbers depend on this choice (Rong et al., "A Consistent and
  Efficient Evaluation Strategy for Attribution Methods", ICML 2022, ROAD, Sec. 3): compare
  methods only under the same fill, and always next to the baselines.
- **Model-parameter randomisation** (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS
  2018, Sec. 3): re-initialise the weights cascading from the head down, block by block, and
  compare each map with the trained model's map (Spearman rank correlation and SSIM, Wang et al.
  2004). A map that stays the same when the weights it claims to explain are random is not
  explaining them.
- **Localisation** against a ground-truth object mask (the Shapes set): the pointing game (Zhang
  et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016: is the maximum on the
  object?) and the share of the map's mass inside the mask.
- **Baselines**, always reported next to the methods: a seeded ``"random"`` map and a
  ``"centre-bias"`` map (a Gaussian around the image centre; Judd et al., ICCV 2009).

Methods (:data:`METHODS`): last-block CLS attention (mean of heads), attention rollout (Abnar &
Zuidema 2020; mean fusion, and Gildenblat's max / min fusion with 90 % discarded), gradient
rollout (Chefer et al., ICCV 2021), occlusion (Zeiler & Fergus 2014) and gradient × input on the
patch embeddings (Shrikumar et al. 2016; summed over the width D).

The model is only read. Nothing here switches a mode or flag, registers a hook on it, writes a
``.grad`` (gradients come from ``torch.autograd.grad`` with respect to inputs only) or copies it:
randomised variants for the sanity check are new modules whose untouched tensors *are* the
model's tensors (shared storage) and whose randomised blocks hold fresh tensors. Perturbed images
run batched under ``torch.no_grad()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..inspect.analysis import gaussian_blur

__all__ = [
    "METHODS",
    "BASELINES",
    "ALL_METHODS",
    "FILLS",
    "KINDS",
    "CHEFER_FRACTIONS",
    "METHOD_NOTES",
    "Curve",
    "RandomizationCheck",
    # maps
    "relevance_map",
    "relevance_maps",
    "random_map",
    "centre_bias_map",
    # curves
    "area_under_curve",
    "faithfulness_curves",
    "deletion_curve",
    "insertion_curve",
    "perturbation_curve",
    # sanity check
    "randomization_stages",
    "randomized_model",
    "randomization_check",
    "randomization_verdict",
    "spearman",
    "ssim",
    # localisation
    "pointing_game",
    "mask_share",
]

METHODS: tuple[str, ...] = (
    "cls-attention",
    "rollout",
    "rollout-max",
    "rollout-min",
    "gradient-rollout",
    "occlusion",
    "grad-x-input",
)
BASELINES: tuple[str, ...] = ("random", "centre-bias")
ALL_METHODS: tuple[str, ...] = METHODS + BASELINES
FILLS: tuple[str, ...] = ("mean", "blur", "zero")
KINDS: tuple[str, ...] = ("deletion", "insertion", "positive", "negative")
CHEFER_FRACTIONS: tuple[float, ...] = tuple(i / 10 for i in range(10))  # 0, 10, ..., 90 % removed

METHOD_NOTES: dict[str, str] = {
    "cls-attention": "attention of the CLS token to each patch in the last block, mean of the heads",
    "rollout": "attention rollout, heads averaged (Abnar & Zuidema 2020); the same map for every class",
    "rollout-max": "attention rollout, max over heads, lowest 90% of weights discarded (Gildenblat 2020)",
    "rollout-min": "attention rollout, min over heads, lowest 90% of weights discarded (Gildenblat 2020)",
    "gradient-rollout": "attention weighted by its gradient for the class, rolled out (Chefer et al. 2021)",
    "occlusion": "drop of the class logit when each patch alone is hidden (Zeiler & Fergus 2014)",
    "grad-x-input": "gradient of the class logit times the patch embedding, summed over D (Shrikumar et al. 2016)",
    "random": "baseline: uniform random scores (seeded)",
    "centre-bias": "baseline: a Gaussian around the image centre (Judd et al. 2009)",
}

_ROLLOUTS = {"rollout": ("mean", 0.0), "rollout-max": ("max", 0.9), "rollout-min": ("min", 0.9)}
_ATTENTION_METHODS = frozenset({"cls-attention", "gradient-rollout", *_ROLLOUTS})


# --------------------------------------------------------------------------- checks
def _check_model(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "patch_embed") or not hasattr(model, "blocks"):
        raise ValueError(
            f"{type(model).__name__} is not a vitcore VisionTransformer; convert it first "
            "(vitcore.from_torchvision / vitcore.from_hf)"
        )
    if config.num_classes == 0:
        raise ValueError(
            "this model has no classification head (num_classes=0): a feature backbone cannot be explained "
            "per class; train a few-shot head first (vitcore.fit(..., strategy='head')) and explain that model"
        )
    if model.training:
        raise ValueError(
            "the model is in training mode (dropout would make every score random); call model.eval() once "
            "after loading it: these functions never switch a shared model's mode"
        )


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _one_image(model: nn.Module, image: Any) -> torch.Tensor:
    """(C, H, W) or (1, C, H, W) -> (1, C, H, W) on the model's device, checked against the model."""
    if isinstance(image, torch.Tensor) and image.ndim == 3:
        image = image[None]
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected one normalised image (C, H, W) or (1, C, H, W), got {shape}; loop over a batch")
    config = model.config
    _, c, h, w = image.shape
    p = config.patch_size
    if c != config.in_channels:
        raise ValueError(f"the model expects {config.in_channels} channels but the image has {c}; convert it to RGB")
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of patch size {p}; resize it to the model's input size")
    return image.detach().to(_device(model), torch.float32)


@torch.no_grad()
def _probabilities(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Softmax probabilities (K, C) of a batch of images, in chunks."""
    return torch.cat([model(chunk).float().softmax(dim=-1) for chunk in images.split(batch_size)])


def _check_target(model: nn.Module, target: int | None) -> None:
    C = model.config.num_classes
    if target is not None and (isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < C):
        raise ValueError(f"target={target!r} is not a class of this model; pick an index in 0..{C - 1} (or None)")


def _resolve_target(model: nn.Module, x: torch.Tensor, target: int | None) -> int:
    """The class to explain: ``target`` checked, or the model's prediction for x when None."""
    _check_target(model, target)
    return int(_probabilities(model, x)[0].argmax()) if target is None else target


def _as_map(relevance: Any, grid: tuple[int, int], name: str = "relevance") -> torch.Tensor:
    """A (gh, gw) or (N,) map (tensor or array) -> (N,) float64 CPU tensor, checked."""
    gh, gw = grid
    t = torch.as_tensor(relevance).detach().cpu()
    if t.shape not in ((gh, gw), (gh * gw,)):
        raise ValueError(
            f"the {name} map has shape {tuple(t.shape)} but this model sees a {gh}x{gw} patch grid for this image; "
            f"pass one score per patch, shape ({gh}, {gw}) or ({gh * gw},)"
        )
    t = t.double().flatten()
    if not torch.isfinite(t).all():
        raise ValueError(f"the {name} map holds NaN or infinite values; compute it again or replace them")
    return t


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer (10 in the issue, 20-50 in RISE)")


# --------------------------------------------------------------------------- fills
def _fill_image(x: torch.Tensor, fill: str, patch_size: int, normalization: Any = None) -> torch.Tensor:
    """What a removed patch shows, as a full (1, C, H, W) image in the model's input space."""
    if fill == "mean":
        return torch.zeros_like(x)  # the normalisation mean is 0 after normalising
    if fill == "blur":
        return gaussian_blur(x, sigma=patch_size / 2)
    if fill == "zero":
        if normalization is None:
            raise ValueError(
                "fill='zero' means black pixels, which depend on the normalisation; pass normalization=(mean, std) "
                "of the model (e.g. loaded.mean, loaded.std), or use fill='mean'"
            )
        mean, std = (torch.as_tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) for v in normalization)
        return ((0.0 - mean) / std).expand_as(x)  # black, normalised
    raise ValueError(f"fill={fill!r} is unknown; choose one of {FILLS}")


# --------------------------------------------------------------------------- maps
def random_map(grid: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Baseline: uniform random scores (gh, gw) from a private generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.rand(tuple(grid), generator=generator)


def centre_bias_map(grid: tuple[int, int]) -> torch.Tensor:
    """Baseline: exp(-d^2 / 2 sigma^2), d the distance of a patch centre to the image centre, (gh, gw).

    sigma is a quarter of the shorter grid side (in patches): photographers, and data sets, put
    objects near the middle (Judd et al., "Learning to Predict Where Humans Look", ICCV 2009).
    """
    gh, gw = grid
    rows = torch.arange(gh, dtype=torch.float64) - (gh - 1) / 2  # (gh,)
    cols = torch.arange(gw, dtype=torch.float64) - (gw - 1) / 2  # (gw,)
    d2 = rows[:, None] ** 2 + cols[None, :] ** 2  # (gh, gw)
    sigma = max(min(gh, gw) / 4, 0.5)
    return torch.exp(-d2 / (2 * sigma**2)).float()


def _forward_embedded(model: nn.Module, patch_embeddings: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Logits (B, C) from patch embeddings (B, N, D): the model's own method when it has one."""
    method = getattr(model, "forward_embedded", None)
    if method is not None:
        return method(patch_embeddings, grid)
    B = patch_embeddings.shape[0]  # older models: prefix tokens + position embedding, blocks, head
    prefix = [model.cls_token.expand(B, -1, -1)]  # (B, 1, D)
    if getattr(model, "dist_token", None) is not None:
        prefix.append(model.dist_token.expand(B, -1, -1))
    x = torch.cat([*prefix, patch_embeddings], dim=1) + model.pos_embedding_for(grid)  # (B, p+N, D)
    for block in model.blocks:
        x = block(x)  # (B, T, D)
    return model.forward_head(model.norm(x))  # (B, C)


def _grad_x_input(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """sum_D (d logit_target / d e_i) * e_i over the patch embeddings e_i = x_p^i E, (N,)."""
    grid = model.grid_for(x.shape[-2], x.shape[-1])
    with torch.no_grad():
        emb = model.patch_embed(x)  # (1, N, D)
    emb = emb.detach().requires_grad_(True)  # a leaf of our own: the model's parameters get no .grad
    with torch.enable_grad():
        logits = _forward_embedded(model, emb, grid)  # (1, C)
        (grad,) = torch.autograd.grad(logits[0, target], emb)  # (1, N, D)
    return (grad * emb.detach()).sum(dim=-1)[0]  # (N,)


def _attention_trace(model: nn.Module, x: torch.Tensor, method: str):
    from ..inspect.capture import capture

    trace = capture(model, x)
    if trace.attention is None or trace.attention.shape[0] != len(model.blocks):
        mixer = getattr(model.config, "token_mixer", "attention")
        raise ValueError(
            f"method {method!r} needs the attention maps of every block, but this model mixes tokens with "
            f"{mixer!r}; use 'occlusion' or 'grad-x-input'"
        )
    return trace


def relevance_maps(
    model: nn.Module,
    image: torch.Tensor,
    target: int | None = None,
    methods: Iterable[str] = ALL_METHODS,
    *,
    seed: int = 0,
    occlusion_fill: str = "mean",
) -> dict[str, torch.Tensor]:
    """Relevance of every patch for class ``target`` (None: predicted), one (gh, gw) CPU map per method.

    ``methods`` from :data:`ALL_METHODS` (see :data:`METHOD_NOTES`); the attention methods share
    one capture. ``seed`` seeds the ``random`` baseline; ``occlusion_fill`` is the fill of
    :func:`vitcore.inspect.analysis.occlusion_map` (its ``mean`` is the image's own mean colour).
    Larger = more relevant for every method; ``grad-x-input`` and ``occlusion`` may be negative.
    """
    from ..inspect import analysis

    _check_model(model)
    methods = list(methods)
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(ALL_METHODS)}")
    x = _one_image(model, image)
    grid = model.grid_for(x.shape[-2], x.shape[-1])
    t = _resolve_target(model, x, target)
    needs_attention = [m for m in methods if m in _ATTENTION_METHODS]
    trace = _attention_trace(model, x, needs_attention[0]) if needs_attention else None  # one capture for all
    out: dict[str, torch.Tensor] = {}
    for method in methods:
        if method == "cls-attention":
            p = trace.num_prefix_tokens
            row = trace.attention[-1, 0].double().mean(dim=0)[0, p:]  # (N,) CLS row of the last block, heads averaged
            out[method] = row.reshape(grid).float()
        elif method in _ROLLOUTS:
            fusion, discard = _ROLLOUTS[method]
            out[method] = analysis.attention_rollout(trace, head_fusion=fusion, discard_ratio=discard)[0]
        elif method == "gradient-rollout":
            out[method] = analysis.gradient_rollout(model, x, t)[0]
        elif method == "occlusion":
            out[method] = analysis.occlusion_map(model, x, t, fill=occlusion_fill).float()
        elif method == "grad-x-input":
            out[method] = _grad_x_input(model, x, t).reshape(grid).float().cpu()
        elif method == "random":
            out[method] = random_map(grid, seed)
        else:  # centre-bias
            out[method] = centre_bias_map(grid)
    return {name: m.detach().cpu().reshape(grid) for name, m in out.items()}


def relevance_map(
    model: nn.Module, image: torch.Tensor, target: int | None = None, method: str = "gradient-rollout", **options: Any
) -> torch.Tensor:
    """One method's (gh, gw) map; see :func:`relevance_maps`."""
    return relevance_maps(model, image, target, [method], **options)[method]


# --------------------------------------------------------------------------- curves
def area_under_curve(x: Any, y: Any) -> float:
    """Trapezoidal area under y(x); x must be non-decreasing (e.g. the share of patches removed)."""
    xs = torch.as_tensor(x, dtype=torch.float64).flatten()
    ys = torch.as_tensor(y, dtype=torch.float64).flatten()
    if xs.numel() != ys.numel() or xs.numel() < 2:
        raise ValueError(f"need at least two points and as many x as y values, got {xs.numel()} and {ys.numel()}")
    if (xs.diff() < 0).any():
        raise ValueError("x must be non-decreasing (sort the points by the share of patches removed)")
    return float(torch.trapezoid(ys, xs))


@dataclass(frozen=True)
class Curve:
    """One perturbation curve of one map: the class probability as patches are removed or revealed."""

    kind: str  # "deletion" | "insertion" (Petsiuk et al.) | "positive" | "negative" (Chefer et al.)
    method: str  # name of the map
    fractions: torch.Tensor  # (K,) share of patches removed (insertion: revealed), from 0
    probabilities: torch.Tensor  # (K,) softmax probability of the target class at each point
    correct: torch.Tensor  # (K,) bool: the model's top class is still the target
    target: int  # class index
    fill: str  # what removed patches show: "mean", "blur" or "zero"

    @property
    def auc(self) -> float:
        """Area under the probability curve (deletion, positive: lower is better; others: higher)."""
        return area_under_curve(self.fractions, self.probabilities)

    @property
    def accuracy_auc(self) -> float:
        """Area under the top-1 accuracy curve (Chefer et al.'s reading), same direction as :attr:`auc`."""
        return area_under_curve(self.fractions, self.correct.double())

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger area means a more faithful map for this kind of curve."""
        return self.kind in ("insertion", "negative")


def _counts(n: int, steps: int) -> list[int]:
    """Patches removed at each of the steps + 1 points: round(k N / steps), half up, k = 0..steps."""
    return [(2 * k * n + steps) // (2 * steps) for k in range(steps + 1)]


def _fraction_counts(n: int, fractions: Iterable[float]) -> list[int]:
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0.0 <= f <= 1.0 for f in fractions) or fractions != sorted(fractions):
        raise ValueError(f"fractions={fractions} must be increasing shares in [0, 1], e.g. 0, 0.1, ..., 0.9")
    return [math.floor(f * n + 0.5) for f in fractions]


def _pixel_masks(patch_masks: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(K, N) bool -> (K, 1, H, W) bool."""
    gh, gw = grid
    m = patch_masks.view(-1, 1, gh, gw)  # (K, 1, gh, gw)
    return m.repeat_interleave(patch_size, dim=-2).repeat_interleave(patch_size, dim=-1)  # (K, 1, H, W)


def faithfulness_curves(
    model: nn.Module,
    image: torch.Tensor,
    maps: Mapping[str, Any],
    target: int | None = None,
    *,
    kinds: Iterable[str] = ("deletion", "insertion"),
    steps: int = 10,
    fractions: Iterable[float] = CHEFER_FRACTIONS,
    fill: str = "mean",
    normalization: Any = None,
    batch_size: int = 64,
) -> dict[str, dict[str, Curve]]:
    """Perturbation curves of many maps of one image, all perturbed copies in shared batches.

    ``kinds``: ``deletion`` / ``insertion`` use ``steps`` + 1 points (k N / steps patches, rounded,
    removed or revealed, most relevant first); ``positive`` / ``negative`` remove the given
    ``fractions`` (Chefer et al.: 0, 10, ..., 90 %) most / least relevant first. Deletion curves
    start, and insertion curves end, at the clean image's probability. Ties keep the patch order
    (row-major). The clean and the fully filled image run once for all maps; the rest run in
    chunks of ``batch_size`` under ``torch.no_grad()``. Returns ``{kind: {method: Curve}}``.
    """
    _check_model(model)
    kinds = list(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds={kinds} must be some of {KINDS}")
    if fill not in FILLS:
        raise ValueError(f"fill={fill!r} is unknown; choose one of {FILLS}")
    _check_steps(steps)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    if not maps:
        raise ValueError("no maps were given; pass {method name: (gh, gw) map}, e.g. from relevance_maps()")
    x = _one_image(model, image)
    P = model.config.patch_size
    grid = model.grid_for(x.shape[-2], x.shape[-1])
    n = grid[0] * grid[1]
    flat = {name: _as_map(m, grid, name) for name, m in maps.items()}
    _check_target(model, target)
    filler = _fill_image(x, fill, P, normalization)  # (1, C, H, W)
    ends = _probabilities(model, torch.cat([x, filler]), batch_size)  # (2, C): clean, everything filled
    t = int(ends[0].argmax()) if target is None else target

    # every (kind, method, point) as a bool mask of filled patches; all-clear / all-filled reuse `ends`
    jobs: list[tuple[str, str, int]] = []
    masks: list[torch.Tensor] = []
    plan: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for kind in kinds:
        counts = _counts(n, steps) if kind in ("deletion", "insertion") else _fraction_counts(n, fractions)
        for name, scores in flat.items():
            order = torch.sort(scores, descending=kind != "negative", stable=True).indices  # (N,)
            rank = torch.empty(n, dtype=torch.long)
            rank[order] = torch.arange(n)  # rank[i] = position of patch i in the order
            plan[kind, name] = (counts, [c / n for c in counts])
            for k, c in enumerate(counts):
                chosen = rank < c  # (N,) the c first patches of the order
                filled = ~chosen if kind == "insertion" else chosen
                if 0 < int(filled.sum()) < n:
                    jobs.append((kind, name, k))
                    masks.append(filled)
    probs: dict[tuple[str, str, int], torch.Tensor] = {}
    for start in range(0, len(masks), batch_size):
        chunk = torch.stack(masks[start : start + batch_size]).to(x.device)  # (K, N)
        images = torch.where(_pixel_masks(chunk, grid, P), filler, x)  # (K, C, H, W)
        for job, p in zip(jobs[start : start + batch_size], _probabilities(model, images, batch_size)):
            probs[job] = p

    out: dict[str, dict[str, Curve]] = {}
    for kind in kinds:
        out[kind] = {}
        for name in flat:
            counts, xs = plan[kind, name]
            rows = []
            for k, c in enumerate(counts):
                filled_count = n - c if kind == "insertion" else c
                if filled_count == 0:
                    rows.append(ends[0])
                elif filled_count == n:
                    rows.append(ends[1])
                else:
                    rows.append(probs[kind, name, k])
            p = torch.stack(rows).cpu()  # (K, C)
            out[kind][name] = Curve(kind, name, torch.tensor(xs, dtype=torch.float64), p[:, t].double(),
                                    p.argmax(dim=-1) == t, t, fill)
    return out


def deletion_curve(
    model: nn.Module, image: torch.Tensor, relevance: Any, target: int | None = None, *, steps: int = 10,
    fill: str = "mean", normalization: Any = None, batch_size: int = 64,
) -> Curve:
    """Deletion (Petsiuk et al. 2018): remove patches most relevant first; ``steps`` + 1 points from the clean image."""
    return faithfulness_curves(model, image, {"map": relevance}, target, kinds=["deletion"], steps=steps, fill=fill,
                               normalization=normalization, batch_size=batch_size)["deletion"]["map"]


def insertion_curve(
    model: nn.Module, image: torch.Tensor, relevance: Any, target: int | None = None, *, steps: int = 10,
    fill: str = "mean", normalization: Any = None, batch_size: int = 64,
) -> Curve:
    """Insertion (Petsiuk et al. 2018): reveal patches most relevant first on the filled canvas; ends clean."""
    return faithfulness_curves(model, image, {"map": relevance}, target, kinds=["insertion"], steps=steps, fill=fill,
                               normalization=normalization, batch_size=batch_size)["insertion"]["map"]


def perturbation_curve(
    model: nn.Module, image: torch.Tensor, relevance: Any, target: int | None = None, *, order: str = "positive",
    fractions: Iterable[float] = CHEFER_FRACTIONS, fill: str = "mean", normalization: Any = None,
    batch_size: int = 64,
) -> Curve:
    """Chefer et al. 2021: remove ``fractions`` of the patches, most (positive) or least (negative) relevant first."""
    if order not in ("positive", "negative"):
        raise ValueError(f"order={order!r} must be 'positive' (most relevant first) or 'negative' (least first)")
    return faithfulness_curves(model, image, {"map": relevance}, target, kinds=[order], fractions=fractions,
                               fill=fill, normalization=normalization, batch_size=batch_size)[order]["map"]


# --------------------------------------------------------------------------- similarity of maps
def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, ties given their average rank."""
    order = torch.sort(v, stable=True).indices
    _, inverse, counts = torch.unique_consecutive(v[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0)  # last position (1-based) of each group of equal values
    average = (ends - counts + 1 + ends).double() / 2  # (groups,)
    ranks = torch.empty(v.numel(), dtype=torch.float64)
    ranks[order] = average[inverse]
    return ranks


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of two maps of the same shape (ties: average ranks), in [-1, 1].

    Identical maps give exactly 1; a constant map against a different one gives 0 (no ranking to compare).
    """
    x = torch.as_tensor(a).detach().cpu().double().flatten()
    y = torch.as_tensor(b).detach().cpu().double().flatten()
    if x.shape != y.shape:
        raise ValueError(f"maps of shapes {tuple(torch.as_tensor(a).shape)} and {tuple(torch.as_tensor(b).shape)} "
                         "cannot be compared; compute both on the same image")
    if torch.equal(x, y):
        return 1.0
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(rx.norm() * ry.norm())
    return float(rx @ ry) / denominator if denominator > 0 else 0.0


def _unit_range(m: torch.Tensor) -> torch.Tensor:
    low, high = m.min(), m.max()
    return (m - low) / (high - low) if high > low else torch.zeros_like(m)


def ssim(a: Any, b: Any, window: int = 7) -> float:
    """Structural similarity (Wang et al. 2004) of two (gh, gw) maps, each min-max scaled to [0, 1] first.

    Uniform ``window`` x ``window`` windows (shrunk to the grid when it is smaller), no padding,
    C1 = 0.01^2 and C2 = 0.03^2 for a data range of 1; the mean over windows. Identical maps give 1.
    """
    x = torch.as_tensor(a).detach().cpu().double()
    y = torch.as_tensor(b).detach().cpu().double()
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"ssim compares two (gh, gw) maps of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = _unit_range(x)[None, None], _unit_range(y)[None, None]  # (1, 1, gh, gw)
    w = max(1, min(window, x.shape[-2], x.shape[-1]))
    mx, my = F.avg_pool2d(x, w, stride=1), F.avg_pool2d(y, w, stride=1)
    vx = F.avg_pool2d(x * x, w, stride=1) - mx**2
    vy = F.avg_pool2d(y * y, w, stride=1) - my**2
    cxy = F.avg_pool2d(x * y, w, stride=1) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


# --------------------------------------------------------------------------- randomisation
def randomization_stages(model: nn.Module) -> list[str]:
    """Stage names of the cascading check: "trained", "head", "block L-1", ..., "block 0", "embedding"."""
    return ["trained", "head", *(f"block {i}" for i in reversed(range(len(model.blocks)))), "embedding"]


def _stage_of(name: str) -> str:
    """Which stage a parameter / buffer name belongs to."""
    first = name.split(".", 1)[0]
    if first in ("head", "head_dist", "norm"):
        return "head"
    if first == "blocks":
        return f"block {name.split('.')[1]}"
    return "embedding"  # patch embedding, CLS / distillation / register tokens, position embedding


def _fresh_parameter(owner: nn.Module, pname: str, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A new tensor shaped like ``like``, initialised as VisionTransformer.reset_parameters would."""
    t = torch.empty(like.shape, dtype=torch.float32)

    def trunc(std: float) -> None:
        nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std, generator=generator)

    if isinstance(owner, nn.LayerNorm):
        t.fill_(1.0 if pname == "weight" else 0.0)
    elif pname == "bias":
        t.zero_()
    elif isinstance(owner, nn.Conv2d):  # the patch embedding: LeCun normal
        trunc(math.sqrt(1.0 / (owner.in_channels * owner.kernel_size[0] * owner.kernel_size[1])))
    else:  # linears, CLS / distillation / register tokens, position embedding, other mixers' weights
        trunc(0.02)
    return t.to(like.device, like.dtype)


class _Randomizer:
    """Fresh tensors per stage, drawn once from a seeded private generator and reused by later stages."""

    def __init__(self, model: nn.Module, seed: int) -> None:
        self.model, self.seed = model, int(seed)
        self.stages = randomization_stages(model)
        self.fresh: dict[str, dict[str, torch.Tensor]] = {}

    def tensors_for(self, stage: str) -> dict[str, torch.Tensor]:
        if stage not in self.fresh:
            index = self.stages.index(stage)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            out = {}
            for mname, module in self.model.named_modules():
                for pname, param in module.named_parameters(recurse=False):
                    full = f"{mname}.{pname}" if mname else pname
                    if _stage_of(full) == stage:
                        out[full] = _fresh_parameter(module, pname, param, generator)
            self.fresh[stage] = out
        return self.fresh[stage]

    def model_up_to(self, stage: str) -> nn.Module:
        """The model with every stage from "head" down to ``stage`` (inclusive) re-initialised."""
        if stage not in self.stages:
            raise ValueError(f"unknown stage {stage!r}; this model has {self.stages}")
        state = dict(self.model.state_dict())  # detached references to the model's tensors, no copy
        for s in self.stages[1 : self.stages.index(stage) + 1]:
            state.update(self.tensors_for(s))
        with torch.device("meta"):  # a module skeleton: no memory, no random numbers drawn
            variant = type(self.model)(self.model.config)
        variant.load_state_dict(state, assign=True)  # parameters now share the model's storage, or are fresh
        for name, buffer in self.model.named_buffers():  # non-persistent buffers are not in the state dict
            owner_name, _, bname = name.rpartition(".")
            owner = variant.get_submodule(owner_name) if owner_name else variant
            if getattr(owner, bname).is_meta:
                setattr(owner, bname, buffer)
        for mine, theirs in zip(variant.blocks, self.model.blocks):
            if hasattr(theirs.attn, "fused"):
                mine.attn.fused = theirs.attn.fused
        return variant.eval()


def randomized_model(model: nn.Module, stage: str, seed: int = 0) -> nn.Module:
    """A new module: ``model`` with its weights re-initialised from the head down to ``stage`` (cascading).

    Adebayo et al. 2018's cascading randomisation. ``stage`` is one of :func:`randomization_stages`
    ("trained" re-initialises nothing). The untouched parameters are the model's own tensors
    (shared storage, never written); the randomised ones are drawn as in
    ``VisionTransformer.reset_parameters`` (truncated normal, LayerNorm to 1/0, biases 0) from a
    private ``torch.Generator`` seeded per stage, so the same seed gives the same weights and the
    global random state is never touched.
    """
    _check_model(model)
    return _Randomizer(model, seed).model_up_to(stage)


@dataclass
class RandomizationCheck:
    """Maps of a model re-initialised stage by stage, and how similar each is to the trained map."""

    stages: list[str]  # "trained", "head", "block L-1", ..., "embedding"
    target: int
    maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # method -> one (gh, gw) map per stage
    spearman: dict[str, list[float]] = field(default_factory=dict)  # method -> rho(trained map, stage map)
    ssim: dict[str, list[float]] = field(default_factory=dict)  # method -> SSIM(trained map, stage map)

    def verdict(self, method: str, threshold: float = 0.5) -> str:
        """"passes" or "fails: ..." for one method; see :func:`randomization_verdict`."""
        return randomization_verdict(self.stages, self.spearman[method], threshold)


def randomization_verdict(stages: list[str], rhos: Iterable[float], threshold: float = 0.5) -> str:
    """Summary of a cascading check: a map fails when it stays similar while the weights go random.

    ``rhos`` are Spearman correlations with the trained map, one per stage (from "trained"),
    e.g. averaged over images. Fails when their mean over the randomised stages is at least
    ``threshold``; adds "class-agnostic" when the map does not change at all with a random head
    (rollout and raw attention never read the head).
    """
    rhos = [float(r) for r in rhos]
    stages = list(stages)
    if len(rhos) != len(stages) or len(stages) < 2 or stages[0] != "trained":
        raise ValueError("pass one correlation per stage, starting with 'trained' and at least one randomised stage")
    mean = sum(rhos[1:]) / (len(rhos) - 1)
    text = f"fails (mean rho {mean:.2f} >= {threshold})" if mean >= threshold else f"passes (mean rho {mean:.2f})"
    if "head" in stages and rhos[stages.index("head")] > 0.99:
        text += "; class-agnostic: unchanged by a random head"
    return text


def randomization_check(
    model: nn.Module,
    image: torch.Tensor,
    target: int | None = None,
    methods: Iterable[str] = ALL_METHODS,
    *,
    seed: int = 0,
    stages: Iterable[str] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> RandomizationCheck:
    """Adebayo et al. 2018's cascading model-parameter randomisation test for each method.

    For every stage (default all of :func:`randomization_stages`) the maps are recomputed on
    :func:`randomized_model` for the same image and class (the trained model's prediction when
    ``target`` is None) and compared with the "trained" stage's maps, which are computed the same
    way on an unrandomised variant (so an unchanged model gives rho = SSIM = 1 exactly). The
    baselines do not depend on the model: they show what failing looks like. ``progress(share,
    message)`` is called after each stage.
    """
    _check_model(model)
    x = _one_image(model, image)
    methods = list(methods)
    t = _resolve_target(model, x, target)
    randomizer = _Randomizer(model, seed)
    chosen = list(randomizer.stages) if stages is None else list(stages)
    unknown = [s for s in chosen if s not in randomizer.stages]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; this model has {randomizer.stages}")
    if "trained" not in chosen:
        chosen.insert(0, "trained")
    chosen.sort(key=randomizer.stages.index)
    check = RandomizationCheck(stages=chosen, target=t)
    for i, stage in enumerate(chosen):
        variant = randomizer.model_up_to(stage)
        maps = relevance_maps(variant, x, t, methods, seed=seed)
        del variant
        for name, m in maps.items():
            check.maps.setdefault(name, []).append(m)
            reference = check.maps[name][0]
            check.spearman.setdefault(name, []).append(spearman(reference, m))
            check.ssim.setdefault(name, []).append(ssim(reference, m))
        if progress is not None:
            progress((i + 1) / len(chosen), stage)
    return check


# --------------------------------------------------------------------------- localisation
def _patch_coverage(mask: Any, grid: tuple[int, int]) -> torch.Tensor:
    """Share of each patch's pixels inside the mask, (gh, gw) in [0, 1]."""
    m = torch.as_tensor(mask).detach().cpu()
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W) or (gh, gw), got shape {tuple(m.shape)}")
    m = m.double()
    if tuple(m.shape) == tuple(grid):
        return m
    return F.adaptive_avg_pool2d(m[None, None], tuple(grid))[0, 0]  # (gh, gw)


def pointing_game(relevance: Any, mask: Any, min_overlap: float = 0.5) -> bool:
    """Zhang et al. 2016's pointing game on patches: is the map's maximum on the object?

    A hit when at least ``min_overlap`` of the arg-max patch's pixels lie inside the mask (ties:
    the first patch, row-major). ``relevance`` is (gh, gw); ``mask`` is bool or [0, 1], (H, W) or (gh, gw).
    """
    r = torch.as_tensor(relevance).detach().cpu().double()
    if r.ndim != 2:
        raise ValueError(f"relevance must be a (gh, gw) map, got shape {tuple(r.shape)}")
    coverage = _patch_coverage(mask, tuple(r.shape)).flatten()
    return bool(coverage[int(r.flatten().argmax())] >= min_overlap)


def mask_share(relevance: Any, mask: Any) -> float:
    """Share of the map's positive mass inside the object mask (as ``analysis.attention_mass_in_mask``)."""
    from ..inspect.analysis import attention_mass_in_mask

    r = torch.as_tensor(relevance).detach().cpu().float()
    m = torch.as_tensor(mask).detach().cpu()
    if r.ndim != 2 or m.ndim != 2:
        raise ValueError(f"need a (gh, gw) map and an (H, W) mask, got {tuple(r.shape)} and {tuple(m.shape)}")
    return float(attention_mass_in_mask(r, m))
