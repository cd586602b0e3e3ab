"""Can you trust this map? Faithfulness and sanity checks for patch relevance maps, measured.

A relevance map (:mod:`vitcore.explain.maps`) gives every patch of an image a score for one
target. Whether the scores are *faithful* (the model really relies on the high-scoring patches)
is measured here, never assumed:

- **Deletion / insertion** (Petsiuk, Das & Saenko, "RISE", BMVC 2018, Sec. 4.1): remove the patches
  from most to least relevant in ``steps`` steps (deletion) or reveal them in that order on an
  empty canvas (insertion), re-run the model on every step in one batch and track the probability
  of the class (the cosine similarity for a similarity target). A faithful map makes the deletion
  curve fall fast (small area) and the insertion curve rise fast (large area).
- **Positive / negative perturbation** (Chefer, Gur & Wolf, "Transformer Interpretability Beyond
  Attention Visualization", CVPR 2021, Sec. 5): remove 0, 10, …, 90 % of the patches, most relevant
  first (positive: lower area is better) or least relevant first (negative: higher is better); the
  area under the probability curve or the accuracy curve (``Curve.accuracy_auc``), with the clean
  value at 0 %.
- **The fill** of removed patches (:data:`vitcore.explain.perturb.FILLS`: the data set's mean
  colour ``"mean"``, ``"black"``, ``"blur"``, ``"noise"``, the image's own mean ``"image"``) is a
  parameter and travels with every curve. Removing pixels moves images off the training
  distribution and the shape of the hole itself can carry class information, so the numbers
  depend on this choice (Rong et al., "A Consistent and Efficient Evaluation Strategy for
  Attribution Methods", ICML 2022, ROAD, Sec. 3): compare methods only under the same fill, and
  always next to the baselines.
- **Model-parameter randomisation**: :mod:`vitcore.explain.randomization` (re-exported here).
- **Localisation** against a ground-truth object mask (the Shapes set): the pointing game (Zhang
  et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016: is the maximum on the
  object?) and the share of the map's mass inside the mask.

The model is only read. Perturbed images run batched under ``torch.no_grad()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import perturb
from .maps import (
    ALL_METHODS,
    BASELINES,
    METHOD_NOTES,
    METHODS,
    as_map,
    centre_bias_map,
    check_model,
    one_image,
    random_map,
    relevance_map,
    relevance_maps,
)
from .randomization import (
    RandomizationCheck,
    randomization_check,
    randomization_stages,
    randomization_verdict,
    randomized_model,
    spearman,
    ssim,
)
from .targets import Scorer, as_target, scorer

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

FILLS: tuple[str, ...] = perturb.FILLS
KINDS: tuple[str, ...] = ("deletion", "insertion", "positive", "negative")
CHEFER_FRACTIONS: tuple[float, ...] = tuple(i / 10 for i in range(10))  # 0, 10, ..., 90 % removed
CURVE_BATCH = 16  # perturbed images per forward batch (16, 32, 64 measured on DINOv2 at 224 px: 16 no slower)


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer (10 in the issue, 20-50 in RISE)")


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
    """One perturbation curve of one map: the class probability (or similarity) as patches are removed or revealed."""

    kind: str  # "deletion" | "insertion" (Petsiuk et al.) | "positive" | "negative" (Chefer et al.)
    method: str  # name of the map
    fractions: torch.Tensor  # (K,) share of patches removed (insertion: revealed), from 0
    probabilities: torch.Tensor  # (K,) softmax probability of the target class (similarity: the cosine) per point
    correct: torch.Tensor  # (K,) bool: the top class is still the target (similarity: cosine >= 0.5)
    target: int | str  # class index, or "similarity"
    fill: str  # what removed patches show, one of vitcore.explain.perturb.FILLS

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


def faithfulness_curves(
    model: nn.Module,
    image: torch.Tensor,
    maps: Mapping[str, Any],
    target: Any = None,
    *,
    kinds: Iterable[str] = ("deletion", "insertion"),
    steps: int = 10,
    fractions: Iterable[float] = CHEFER_FRACTIONS,
    fill: str = "mean",
    normalization: Any = None,
    batch_size: int = CURVE_BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, Curve]]:
    """Perturbation curves of many maps of one image, all perturbed copies in shared batches.

    ``kinds``: ``deletion`` / ``insertion`` use ``steps`` + 1 points (k N / steps patches, rounded,
    removed or revealed, most relevant first); ``positive`` / ``negative`` remove the given
    ``fractions`` (Chefer et al.: 0, 10, ..., 90 %) most / least relevant first. Deletion curves
    start, and insertion curves end, at the clean image's probability. Ties keep the patch order
    (row-major). Every distinct perturbed image runs once (the clean and the fully filled image
    are shared by all maps, and two maps that fill the same patches at a point share that
    image), in chunks of ``batch_size`` under ``torch.inference_mode()``. ``target`` as in
    :func:`~vitcore.explain.maps.relevance_maps` (a similarity target tracks the cosine
    similarity). ``progress(done, total)`` is called after every batch with the number of
    perturbed images run so far. Returns ``{kind: {method: Curve}}``.
    """
    check_model(model)
    kinds = list(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds={kinds} must be some of {KINDS}")
    _check_steps(steps)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    if not maps:
        raise ValueError("no maps were given; pass {method name: (gh, gw) map}, e.g. from relevance_maps()")
    x = one_image(model, image)
    P = model.config.patch_size
    grid = model.grid_for(x.shape[-2], x.shape[-1])
    n = grid[0] * grid[1]
    flat = {name: as_map(m, grid, name) for name, m in maps.items()}
    score = target if isinstance(target, Scorer) else scorer(model, x, as_target(target))
    t = score.index if score.index is not None else "similarity"
    filler = perturb.fill_image(x, fill, patch_size=P, normalization=normalization)  # (1, C, H, W)

    # every (kind, method, point) as a bool mask of filled patches; each distinct mask runs once
    # (the clean and the all-filled image first, shared by every curve)
    jobs: dict[tuple[str, str, int], int] = {}  # (kind, method, point) -> index into masks
    masks: list[torch.Tensor] = [torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]
    seen: dict[bytes, int] = {m.numpy().tobytes(): i for i, m in enumerate(masks)}
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
                key = filled.numpy().tobytes()
                if key not in seen:
                    seen[key] = len(masks)
                    masks.append(filled)
                jobs[kind, name, k] = seen[key]
    results: list[tuple[float, bool]] = []
    for start in range(0, len(masks), batch_size):
        chunk = torch.stack(masks[start : start + batch_size])  # (K, N)
        images = perturb.perturb(x, chunk, filler, grid, P)  # (K, C, H, W)
        v, kept = score.curve_value(images, batch_size)  # (K,), (K,)
        results += zip(v.tolist(), kept.tolist())
        if progress is not None:
            progress(len(results), len(masks))

    out: dict[str, dict[str, Curve]] = {}
    for kind in kinds:
        out[kind] = {}
        for name in flat:
            counts, xs = plan[kind, name]
            rows = [results[jobs[kind, name, k]] for k in range(len(counts))]
            out[kind][name] = Curve(kind, name, torch.tensor(xs, dtype=torch.float64),
                                    torch.tensor([v for v, _ in rows], dtype=torch.float64),
                                    torch.tensor([keep for _, keep in rows]), t, fill)
    return out


def deletion_curve(
    model: nn.Module, image: torch.Tensor, relevance: Any, target: Any = None, *, steps: int = 10,
    fill: str = "mean", normalization: Any = None, batch_size: int = CURVE_BATCH,
) -> Curve:
    """Deletion (Petsiuk et al. 2018): remove patches most relevant first; ``steps`` + 1 points from the clean image."""
    return faithfulness_curves(model, image, {"map": relevance}, target, kinds=["deletion"], steps=steps, fill=fill,
                               normalization=normalization, batch_size=batch_size)["deletion"]["map"]


def insertion_curve(
    model: nn.Module, image: torch.Tensor, relevance: Any, target: Any = None, *, steps: int = 10,
    fill: str = "mean", normalization: Any = None, batch_size: int = CURVE_BATCH,
) -> Curve:
    """Insertion (Petsiuk et al. 2018): reveal patches most relevant first on the filled canvas; ends clean."""
    return faithfulness_curves(model, image, {"map": relevance}, target, kinds=["insertion"], steps=steps, fill=fill,
                               normalization=normalization, batch_size=batch_size)["insertion"]["map"]


def perturbation_curve(
    model: nn.Module, image: torch.Tensor, relevance: Any, target: Any = None, *, order: str = "positive",
    fractions: Iterable[float] = CHEFER_FRACTIONS, fill: str = "mean", normalization: Any = None,
    batch_size: int = CURVE_BATCH,
) -> Curve:
    """Chefer et al. 2021: remove ``fractions`` of the patches, most (positive) or least (negative) relevant first."""
    if order not in ("positive", "negative"):
        raise ValueError(f"order={order!r} must be 'positive' (most relevant first) or 'negative' (least first)")
    return faithfulness_curves(model, image, {"map": relevance}, target, kinds=[order], fractions=fractions,
                               fill=fill, normalization=normalization, batch_size=batch_size)[order]["map"]


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
