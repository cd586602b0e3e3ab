"""Beyond the CLS token: segment and locate objects with the tokens a frozen ViT already computes.

Three ways to get an object mask from a ViT, scored by Jaccard (IoU) against the same masks:

* :func:`train_segmentation_probe`: a per-patch linear head on frozen patch tokens. Each patch's
  target is the fraction of its pixels inside the object; the head is fitted on cached tokens by
  least squares in closed form (under a second) and its predicted fractions are upsampled
  bilinearly to pixels and thresholded at 0.5. The linear-probe protocol of segmentation
  evaluations (DINOv2, Oquab et al. 2023, "linear" setting), on Shapes.
* :func:`pca_masks`: no training at all. The first principal component of each image's patch
  features, thresholded (DINOv2, Fig. 1); from :func:`vitcore.inspect.views.pca_foreground`.
* :func:`attention_masks`: no training either. The last layer's CLS attention to the patches,
  thresholded to keep 60 % of its mass (DINO, Caron et al. 2021, Sec. 4.2.1); from
  :func:`vitcore.inspect.views.dino_attention_masks`, on the mean of the heads.

And a question about the CLS token: does it know *where* the object is? :func:`train_box_head`
fits the same small regression head (linear, D -> 4 box numbers) once on the CLS token and once on
the mean of the patch tokens, trained on boxes derived from the masks (:func:`mask_boxes`), and
:func:`box_iou` scores both.

Scores. :func:`mask_iou` is the per-image Jaccard index; :func:`segmentation_miou` is the
segmentation benchmark's mIoU, the mean over the two classes (object, background) of each
class's IoU accumulated over the whole split.

Tokens come from :func:`extract_tokens`, batched under ``no_grad`` with
:func:`vitcore.capture` (last block's attention only). The model is only read.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BoxHead",
    "DenseSplit",
    "SegmentationProbe",
    "Tokens",
    "attention_masks",
    "box_iou",
    "extract_tokens",
    "fit_ridge",
    "mask_boxes",
    "mask_iou",
    "patch_targets",
    "pca_masks",
    "segmentation_miou",
    "shapes_split",
    "train_box_head",
    "train_segmentation_probe",
]


# --------------------------------------------------------------------------- data
@dataclass
class DenseSplit:
    """Images with their object masks: what the dense heads train and are scored on."""

    images: torch.Tensor  # (n, C, H, W) normalised model input
    masks: torch.Tensor  # (n, H, W) bool, True on the object
    pixels: torch.Tensor  # (n, 3, H, W) uint8, for display
    labels: torch.Tensor  # (n,) class index

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def boxes(self) -> torch.Tensor:
        """(n, 4) object boxes (cx, cy, w, h) in [0, 1], derived from the masks."""
        return mask_boxes(self.masks)


def shapes_split(
    n: int,
    image_size: int | tuple[int, int] = 32,
    *,
    split: str = "train",
    normalization: Any = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    seed: int = 0,
) -> DenseSplit:
    """``n`` Shapes images rendered at the model's input size with their masks.

    ``split="val"`` uses the validation seed of :func:`vitcore.data.shapes.shapes_bundle` (``seed + 10_007``),
    so the images are those the classifier was validated on. ``normalization`` is the model's
    (mean, std), e.g. ``loaded.preprocessing.normalization``.
    """
    from ..data.shapes import ShapesDataset

    if split not in ("train", "val"):
        raise ValueError(f"split={split!r} must be 'train' or 'val'")
    data = ShapesDataset(n, image_size, seed=seed + (10_007 if split == "val" else 0), normalization=normalization)
    return DenseSplit(images=data.tensors, masks=data.masks, pixels=data.images, labels=data.targets)


# --------------------------------------------------------------------------- tokens
@dataclass
class Tokens:
    """What the heads read from a frozen model, for n images."""

    patches: torch.Tensor  # (n, N, D) patch tokens after the final LayerNorm
    cls: torch.Tensor  # (n, D) CLS token after the final LayerNorm
    cls_attention: torch.Tensor | None  # (n, H, T) last block's CLS attention row; None if the mixer has no matrix
    grid: tuple[int, int]  # (gh, gw)
    patch_size: int  # P
    num_prefix_tokens: int

    @property
    def mean_patch(self) -> torch.Tensor:
        """(n, D) the mean of the patch tokens (what ``pool="mean"`` reads)."""
        return self.patches.mean(dim=1)

    def as_trace(self) -> Any:
        """A minimal :class:`vitcore.Trace` holding the last block's CLS rows, for :mod:`vitcore.inspect.views`."""
        from .capture import Trace

        if self.cls_attention is None:
            raise ValueError("this model's token mixer exposes no mixing matrix (the MLP mixer): no CLS attention")
        n, H, T = self.cls_attention.shape
        attention = torch.zeros(1, n, H, T, T)
        attention[0, :, :, 0] = self.cls_attention  # only the CLS query row is kept
        return Trace(logits=None, grid=self.grid, patch_size=self.patch_size, num_prefix_tokens=self.num_prefix_tokens,
                     patches=torch.empty(n, 0), patch_embeddings=torch.empty(n, 0), pos_embedding=torch.empty(0),
                     tokens=[torch.empty(0), torch.empty(0)], attention=attention, layers=(0,), heads=tuple(range(H)))


@torch.no_grad()
def extract_tokens(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> Tokens:
    """Final patch and CLS tokens and the last block's CLS attention of ``images`` (n, C, H, W).

    Uses :func:`vitcore.capture` batch by batch (the model is only read; the full T x T attention
    of one batch is dropped once its CLS row is kept, and batches shrink so that it stays under
    256 MiB, e.g. 10 images for DINOv2 ViT-S at 448 px).
    """
    from .capture import capture

    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"expected a non-empty image batch (n, C, H, W), got {tuple(images.shape)}")
    depth = len(model.blocks)
    cfg = model.config
    T = cfg.num_prefix_tokens + (images.shape[-2] // cfg.patch_size) * (images.shape[-1] // cfg.patch_size)
    batch_size = max(1, min(batch_size, int(2**28 // (cfg.heads * T * T * 4))))  # one batch's T x T maps <= 256 MiB
    patches, cls, rows = [], [], []
    trace = None
    for start in range(0, len(images), batch_size):
        trace = capture(model, images[start : start + batch_size], layers=[depth - 1])
        features = model.norm(trace.tokens[-1].to(next(model.parameters()).device)).float().cpu()  # (b, T, D)
        p = trace.num_prefix_tokens
        patches.append(features[:, p:])
        cls.append(features[:, 0])
        if trace.attention is not None:
            rows.append(trace.attention[0, :, :, 0].float())  # (b, H, T) CLS query row
    return Tokens(
        patches=torch.cat(patches), cls=torch.cat(cls), cls_attention=torch.cat(rows) if rows else None,
        grid=tuple(trace.grid), patch_size=trace.patch_size, num_prefix_tokens=trace.num_prefix_tokens,
    )


# --------------------------------------------------------------------------- scores
def mask_iou(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Jaccard index |A & B| / |A | B| of each pair of bool masks (n, H, W) -> (n,); 1 when both are empty."""
    pred, truth = pred.bool().flatten(1), truth.bool().flatten(1)
    inter = (pred & truth).sum(1).float()
    union = (pred | truth).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def segmentation_miou(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """mIoU over the classes object and background, each IoU accumulated over all pixels of the split."""
    pred, truth = pred.bool(), truth.bool()
    obj = float((pred & truth).sum()) / max(float((pred | truth).sum()), 1.0)
    bg = float((~pred & ~truth).sum()) / max(float((~pred | ~truth).sum()), 1.0)
    return {"object": obj, "background": bg, "miou": (obj + bg) / 2}


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes (cx, cy, w, h) of bool masks (n, H, W), in [0, 1] of the image; empty masks give zeros."""
    n, H, W = masks.shape
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # (n, H), (n, W)
    ys, xs = torch.arange(H).expand(n, H), torch.arange(W).expand(n, W)
    top = torch.where(rows, ys, H).amin(1).float()
    bottom = torch.where(rows, ys, -1).amax(1).float() + 1
    left = torch.where(cols, xs, W).amin(1).float()
    right = torch.where(cols, xs, -1).amax(1).float() + 1
    boxes = torch.stack([(left + right) / 2 / W, (top + bottom) / 2 / H, (right - left) / W, (bottom - top) / H], 1)
    return torch.where(rows.any(1, keepdim=True), boxes, torch.zeros_like(boxes))


def _corners(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching (cx, cy, w, h) boxes (n, 4), (n, 4) -> (n,)."""
    ca, cb = _corners(a.float()), _corners(b.float())
    wh = (torch.minimum(ca[:, 2:], cb[:, 2:]) - torch.maximum(ca[:, :2], cb[:, :2])).clamp_min(0)
    inter = wh[:, 0] * wh[:, 1]
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return inter / union.clamp_min(1e-12)


# --------------------------------------------------------------------------- linear heads
PENALTIES = (0.1, 1.0, 10.0, 100.0, 1000.0)


def fit_ridge(
    x: torch.Tensor, y: torch.Tensor, penalties: tuple[float, ...] = PENALTIES, holdout: float = 0.2, seed: int = 0
) -> tuple[nn.Linear, float]:
    """Least squares with an L2 penalty, in closed form: ``x`` (n, k, D) -> ``y`` (n, k, O).

    Each of the n images brings k rows (k = N patches for the segmentation probe, 1 for a box).
    Features are standardised with the training statistics; the penalty is picked from
    ``penalties`` by the squared error on a held-out ``holdout`` share of the *images* (rows of one
    image are never split), then the head is refitted on all of them. The standardisation is
    folded into the returned ``nn.Linear(D, O)``, so it applies to raw tokens. Deterministic.
    """
    n, k, D = x.shape
    rows_x, rows_y = x.reshape(n * k, D).double(), y.reshape(n * k, -1).double()

    def solve(xs: torch.Tensor, ys: torch.Tensor, penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = xs.mean(0), xs.std(0).clamp_min(1e-6)
        z = (xs - mean) / std  # (M, D)
        gram = z.T @ z + penalty * torch.eye(D, dtype=z.dtype)  # (D, D)
        y_mean = ys.mean(0)
        w = torch.linalg.solve(gram, z.T @ (ys - y_mean))  # (D, O) on standardised features
        weight = (w / std[:, None]).T  # (O, D) on raw features
        bias = y_mean - (mean / std) @ w  # (O,)
        return weight, bias

    best = penalties[0]
    if len(penalties) > 1 and n >= 5:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        cut = max(1, round(n * holdout))
        held, kept = order[:cut], order[cut:]
        xv, yv = x[held].reshape(-1, D).double(), y[held].reshape(len(held) * k, -1).double()
        errors = []
        for penalty in penalties:
            weight, bias = solve(x[kept].reshape(-1, D).double(), y[kept].reshape(len(kept) * k, -1).double(), penalty)
            errors.append(float(((xv @ weight.T + bias - yv) ** 2).mean()))
        best = penalties[min(range(len(penalties)), key=errors.__getitem__)]
    weight, bias = solve(rows_x, rows_y, best)
    head = nn.Linear(D, weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight.float())
        head.bias.copy_(bias.float())
    return head.requires_grad_(False), best


# --------------------------------------------------------------------------- segmentation probe
def patch_targets(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Object fraction of each patch's pixels, (n, gh, gw) in [0, 1]."""
    h, w = masks.shape[-2:]
    if h % grid[0] or w % grid[1]:
        raise ValueError(f"masks of {h}x{w} pixels do not tile a {grid[0]}x{grid[1]} patch grid")
    return F.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0]


@dataclass
class SegmentationProbe:
    """A linear map D -> 1 applied to every patch token: its predicted object fraction, upsampled to pixels."""

    head: nn.Linear
    grid: tuple[int, int]
    patch_size: int
    penalty: float = 0.0  # the L2 penalty the held-out images chose
    seconds: float = 0.0  # training time

    @torch.no_grad()
    def fractions(self, patches: torch.Tensor) -> torch.Tensor:
        """Predicted object fraction of each patch (n, gh, gw) from patch tokens (n, N, D)."""
        return self.head(patches.float())[..., 0].reshape(-1, *self.grid)

    @torch.no_grad()
    def pixel_fractions(self, patches: torch.Tensor) -> torch.Tensor:
        """The fractions upsampled bilinearly to the input's pixels, (n, gh*P, gw*P)."""
        from .views import upsample

        return upsample(self.fractions(patches), self.patch_size, mode="bilinear")

    def predict(self, patches: torch.Tensor) -> torch.Tensor:
        """Pixel masks (n, H, W) bool: upsampled fraction > 0.5."""
        return self.pixel_fractions(patches) > 0.5


def train_segmentation_probe(tokens: Tokens, masks: torch.Tensor, *, seed: int = 0) -> SegmentationProbe:
    """Fit the per-patch linear head on frozen ``tokens.patches`` to the masks' object fractions.

    Squared error against the soft targets (a patch half inside the object has target 0.5),
    solved in closed form (:func:`fit_ridge`): well under a second for a thousand images.
    """
    import time

    start = time.perf_counter()
    targets = patch_targets(masks, tokens.grid).flatten(1)[..., None]  # (n, N, 1)
    head, penalty = fit_ridge(tokens.patches.float(), targets, seed=seed)
    return SegmentationProbe(head, tokens.grid, tokens.patch_size, penalty, time.perf_counter() - start)


# --------------------------------------------------------------------------- unsupervised masks
def pca_masks(tokens: Tokens, threshold: float = 0.0, upsampling: str = "bilinear") -> torch.Tensor:
    """DINOv2's mask: each image's first principal component of its patch tokens > threshold, at pixels.

    :func:`vitcore.inspect.views.pca_foreground` fits the PCA per image and signs the component so the
    border patches lean negative; the component is upsampled (``"bilinear"``, or ``"nearest"``:
    whole patches), then thresholded.
    """
    from .views import pca_foreground, upsample

    features = torch.cat([tokens.cls[:, None], tokens.patches], dim=1)  # (n, 1 + N, D)
    views = pca_foreground(features, tokens.grid, 1, threshold=threshold)
    first = torch.stack([v.first for v in views])  # (n, gh, gw)
    return upsample(first, tokens.patch_size, mode=upsampling) > threshold


def attention_masks(tokens: Tokens, keep: float = 0.6, upsampling: str = "bilinear") -> torch.Tensor:
    """DINO's mask: the patches holding ``keep`` of the last layer's CLS attention (mean of heads), at pixels.

    :func:`vitcore.inspect.views.dino_attention_masks` finds, on the head-averaged CLS row renormalised over
    the patches, the smallest set of patches with ``keep`` of the mass. With ``"bilinear"`` the
    attention map is upsampled and thresholded at the smallest kept patch's weight, so the mask has
    the same smooth edges as the other two; ``"nearest"`` gives exactly the kept patches.
    """
    from .views import dino_attention_masks, upsample

    trace = tokens.as_trace()
    averaged = dataclasses.replace(trace, attention=trace.attention.mean(dim=2, keepdim=True), heads=(0,))
    dino = dino_attention_masks(averaged, keep=keep, layer=0)
    attention, masks = dino.attention[:, 0], dino.masks[:, 0]  # (n, gh, gw)
    cutoff = torch.where(masks, attention, torch.full_like(attention, math.inf)).flatten(1).amin(1)  # (n,)
    if upsampling == "nearest":
        return upsample(masks, tokens.patch_size)
    return upsample(attention, tokens.patch_size, mode=upsampling) >= cutoff[:, None, None]


# --------------------------------------------------------------------------- box heads
@dataclass
class BoxHead:
    """A linear map D -> 4 from one vector per image to its box (cx, cy, w, h), clamped to [0, 1]."""

    head: nn.Linear
    penalty: float = 0.0
    seconds: float = 0.0

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Boxes (n, 4) for features (n, D)."""
        return self.head(features.float()).clamp(0.0, 1.0)


def train_box_head(features: torch.Tensor, boxes: torch.Tensor, *, seed: int = 0) -> BoxHead:
    """Fit a box head on frozen features (n, D) to boxes (n, 4): ridge regression (:func:`fit_ridge`)."""
    import time

    start = time.perf_counter()
    head, penalty = fit_ridge(features.float()[:, None], boxes.float()[:, None], seed=seed)
    return BoxHead(head, penalty, time.perf_counter() - start)
