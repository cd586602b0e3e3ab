"""Perturbations: what a hidden patch shows (the fill), which pixels are hidden (masks), and occlusion.

One vocabulary for every caller (occlusion maps, deletion / insertion curves, Integrated
Gradients' baseline, the Predict and Teach pages). Images are in the model's *normalised* input
space, ``(x - mean) / std`` per channel, so a fill is a normalised image too:

========== ======================================================================================
fill       what a hidden pixel shows
========== ======================================================================================
``mean``   the data set's mean colour (the normalisation mean): 0 in the normalised space. The
           default everywhere; needs nothing but the image.
``black``  black pixels, ``(0 - mean) / std``; needs the model's ``normalization=(mean, std)``.
``blur``   the image blurred by a Gaussian with sigma = P / 2 (P the patch size), edges
           replicated: the patch loses its detail but keeps its colour.
``noise``  Gaussian noise with the data set's per-channel mean and std: N(0, 1) in the normalised
           space, from a private generator seeded with ``seed`` (same seed, same noise).
``image``  the image's own mean colour, per channel (what a photo "averages" to).
========== ======================================================================================

Removing pixels moves an image off the training distribution, and each fill does it
differently (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution
Methods", ICML 2022), so every curve and map carries the fill it was computed with.

Occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014)
hides one patch, or one box of ``block`` x ``block`` patches, at a time and records how much a
score drops; all occluded copies run in batches under ``torch.no_grad()``. The score is any
function of a batch of images, so a class logit and a similarity to a reference image are
occluded the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

__all__ = [
    "FILLS",
    "FILL_NOTES",
    "fill_image",
    "gaussian_blur",
    "patch_selection",
    "pixel_masks",
    "block_masks",
    "perturb",
    "occlusion",
]

FILLS: tuple[str, ...] = ("mean", "black", "blur", "noise", "image")
OCCLUSION_BATCH = 64  # occluded copies per forward batch
FILL_NOTES: dict[str, str] = {
    "mean": "the data set's mean colour (0 after normalising)",
    "black": "black pixels",
    "blur": "the image blurred (Gaussian, sigma = half a patch)",
    "noise": "seeded Gaussian noise with the data set's mean and spread",
    "image": "the image's own mean colour",
}
_RENAMED = {"zero": "'zero' had two meanings and is gone: use 'mean' (the data set's mean colour) or 'black'"}


def _check_fill(fill: str) -> None:
    if fill in _RENAMED:
        raise ValueError(f"fill={fill!r}: {_RENAMED[fill]}")
    if fill not in FILLS:
        raise ValueError(f"fill={fill!r} is unknown; choose one of {FILLS} (see vitcore.explain.perturb)")


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), radius ceil(3 sigma), edges replicated."""
    if sigma <= 0:
        raise ValueError(f"sigma={sigma} must be positive (pixels)")
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()  # (2r+1,)
    C = image.shape[1]
    x = F.pad(image, (radius, radius, radius, radius), mode="replicate")  # (B, C, H+2r, W+2r)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)  # along W
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)  # along H -> (B, C, H, W)


def fill_image(
    image: torch.Tensor, fill: str = "mean", *, patch_size: int, normalization: Any = None, seed: int = 0
) -> torch.Tensor:
    """What hidden pixels show, as a full normalised image shaped like ``image`` (B, C, H, W).

    ``fill`` is one of :data:`FILLS` (table in the module docstring). ``normalization`` is the
    model's ``(mean, std)`` per channel, needed by ``black`` only; ``seed`` seeds ``noise`` only.
    """
    _check_fill(fill)
    x = image
    if fill == "mean":
        return torch.zeros_like(x)
    if fill == "image":
        return x.mean(dim=(-2, -1), keepdim=True).expand_as(x)  # (B, C, H, W) per-channel mean
    if fill == "blur":
        return gaussian_blur(x, sigma=patch_size / 2)
    if fill == "noise":
        generator = torch.Generator().manual_seed(int(seed))
        return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
    if normalization is None:  # black
        raise ValueError(
            "fill='black' depends on the normalisation; pass normalization=(mean, std) of the model "
            "(e.g. loaded.mean, loaded.std), or use fill='mean'"
        )
    mean, std = (torch.as_tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) for v in normalization)
    if mean.shape[1] != x.shape[1] or std.shape[1] != x.shape[1]:
        raise ValueError(f"normalization has {mean.shape[1]} means / {std.shape[1]} stds for {x.shape[1]} channels")
    return ((0.0 - mean) / std).expand_as(x)  # black, normalised


def patch_selection(patches: Any, grid: tuple[int, int]) -> torch.Tensor:
    """A (N,) bool patch mask from flat indices, (row, col) pairs, or a bool mask (N,) / (gh, gw)."""
    gh, gw = grid
    n = gh * gw
    if isinstance(patches, torch.Tensor) and patches.dtype == torch.bool:
        if patches.numel() != n:
            raise ValueError(f"a patch mask needs {n} entries ({gh}x{gw} grid), got {tuple(patches.shape)}")
        return patches.flatten().cpu()
    items = patches.tolist() if isinstance(patches, torch.Tensor) else list(patches)
    mask = torch.zeros(n, dtype=torch.bool)
    for item in items:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            r, c = int(item[0]), int(item[1])
            if not (0 <= r < gh and 0 <= c < gw):
                raise ValueError(f"patch {(r, c)} is outside the {gh}x{gw} grid; rows 0..{gh - 1}, cols 0..{gw - 1}")
            index = r * gw + c
        else:
            index = int(item)
            if not 0 <= index < n:
                raise ValueError(f"patch {index} is out of range; the {gh}x{gw} grid has patches 0..{n - 1}")
        mask[index] = True
    return mask


def pixel_masks(patch_masks: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(K, N) bool patch masks (row-major over the grid) -> (K, 1, H, W) bool pixel masks."""
    gh, gw = grid
    m = rearrange(patch_masks, "k (gh gw) -> k 1 gh gw", gh=gh, gw=gw)  # (K, 1, gh, gw)
    return m.repeat_interleave(patch_size, dim=-2).repeat_interleave(patch_size, dim=-1)  # (K, 1, H, W)


def block_masks(grid: tuple[int, int], block: int = 1) -> torch.Tensor:
    """One (N,) mask per box of ``block`` x ``block`` patches, row-major, cut at the edges: (K, N) bool."""
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block={block!r} must be a positive number of patches per side")
    gh, gw = grid
    rows = torch.arange(gh)[:, None] // block  # (gh, 1) box row of each patch
    cols = torch.arange(gw)[None, :] // block  # (1, gw)
    box = (rows * math.ceil(gw / block) + cols).flatten()  # (N,) box index of each patch
    return F.one_hot(box).T.bool()  # (K, N)


def perturb(
    image: torch.Tensor, patch_masks: torch.Tensor, filler: torch.Tensor, grid: tuple[int, int], patch_size: int
) -> torch.Tensor:
    """Copies of one image (1, C, H, W) with the masked patches (K, N) showing ``filler``: (K, C, H, W)."""
    masks = pixel_masks(patch_masks.to(image.device), grid, patch_size)  # (K, 1, H, W)
    return torch.where(masks, filler, image)  # (K, C, H, W)


def occlusion(
    score: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    grid: tuple[int, int],
    patch_size: int,
    *,
    fill: str = "mean",
    block: int = 1,
    normalization: Any = None,
    seed: int = 0,
    batch_size: int = OCCLUSION_BATCH,
    boxes: Iterable[Any] | None = None,
) -> torch.Tensor:
    """Drop of ``score`` when each patch (or box of ``block`` x ``block`` patches) is hidden, (gh, gw).

    ``score(images)`` maps a batch (K, C, H, W) to one number per image (K,), e.g. a class logit
    or a cosine similarity. Entry (r, c) is ``score(image) - score(image with the box of (r, c)
    filled)``: positive where hiding the patch lowers the score. ``block=1`` is Zeiler & Fergus's
    patch-by-patch occlusion (N forward passes); ``block=2`` needs a quarter of them and gives
    each patch its box's value. ``boxes`` (K, N) bool overrides the boxes. The clean image runs
    in the first batch with the occluded copies (no forward pass of its own), every batch under
    ``torch.inference_mode()``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    gh, gw = grid
    x = image if image.ndim == 4 else image[None]  # (1, C, H, W)
    filler = fill_image(x, fill, patch_size=patch_size, normalization=normalization, seed=seed)  # (1, C, H, W)
    masks = block_masks(grid, block) if boxes is None else torch.as_tensor(boxes, dtype=torch.bool)  # (K, N)
    scores = []
    with torch.inference_mode():
        for i, chunk in enumerate(masks.split(batch_size)):
            images = perturb(x, chunk, filler, grid, patch_size)  # (k, C, H, W)
            if i == 0:
                images = torch.cat([x, images])  # the clean image rides in the first batch
            scores.append(score(images).reshape(-1).double().cpu())  # (k,) or (1 + k,)
    scores = torch.cat(scores)  # (1 + K,) the clean score, then one per box
    per_box = scores[0] - scores[1:]  # (K,) the drop when each box is hidden
    per_patch = (masks.double().T @ per_box) / masks.double().sum(dim=0).clamp_min(1)  # (N,) each patch's box
    return per_patch.reshape(gh, gw).float()
