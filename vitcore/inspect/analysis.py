"""Readings of a captured forward pass: attention maps, the paper's Fig. 7 panels, and probes.

Most functions are pure functions of tensors (usually fields of a :class:`vitcore.Trace`); those
that take a model (``gradient_rollout``, ``embedding_filters``, the occlusion probes) leave it as
they found it: they only read it (no mode, flag or hook is changed, no ``.grad`` written).

Conventions: attention is ``(L, B, H, T, T)`` (``(L, H, T, T)`` for one image) with rows = queries
summing to 1, T = prefix + N tokens with the CLS token first, and patch tokens row-major over a
``(gh, gw)`` grid that need not be square. Batched inputs give batched outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from ..explain import perturb

__all__ = [
    "attention_mass_in_mask",
    "attention_rollout",
    "cls_similarity",
    "embedding_filters",
    "gradient_rollout",
    "mean_attention_distance",
    "occlusion_map",
    "occlusion_probe",
    "patch_pca_rgb",
    "position_embedding_similarity",
]


# --------------------------------------------------------------------------- helpers
def _resolve_grid(tokens: int, num_prefix_tokens: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    """The (gh, gw) grid of ``tokens - num_prefix_tokens`` patches; square if not given."""
    n = tokens - num_prefix_tokens
    if grid is None:
        side = math.isqrt(max(n, 0))
        if side * side != n or n == 0:
            raise ValueError(f"{n} patch tokens do not form a square grid; pass grid=(gh, gw) (trace.grid)")
        return side, side
    gh, gw = (int(g) for g in grid)
    if gh * gw != n:
        raise ValueError(
            f"grid {gh}x{gw} has {gh * gw} patches but there are {n} patch tokens "
            f"({tokens} tokens - {num_prefix_tokens} prefix); pass the grid the tokens came from (trace.grid)"
        )
    return gh, gw


def _as_layers(attention: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(L, B, H, T, T) view of attention given batched or as (L, H, T, T); flag says it was unbatched."""
    if (
        not isinstance(attention, torch.Tensor)
        or attention.ndim not in (4, 5)
        or attention.shape[-1] != attention.shape[-2]
    ):
        shape = tuple(attention.shape) if isinstance(attention, torch.Tensor) else type(attention).__name__
        raise ValueError(f"expected attention (L, B, H, T, T) or (L, H, T, T) such as trace.attention, got {shape}")
    if attention.ndim == 4:
        return attention[:, None], True  # (L, 1, H, T, T)
    return attention, False


def _trace_fields(obj: Any) -> tuple[torch.Tensor, tuple[int, int] | None, int | None]:
    """Accept a Trace in place of its attention tensor: (attention, grid, num_prefix_tokens)."""
    if hasattr(obj, "attention") and hasattr(obj, "grid"):
        if obj.attention is None:
            raise ValueError("this trace holds no attention; capture with layers=None (all layers)")
        return obj.attention, obj.grid, obj.num_prefix_tokens
    return obj, None, None


def _sign_fix(components: torch.Tensor) -> torch.Tensor:
    """Flip each row so that its entry of largest magnitude is positive (deterministic SVD signs)."""
    idx = components.abs().argmax(dim=-1, keepdim=True)  # (k, 1)
    signs = torch.sign(components.gather(-1, idx))  # (k, 1)
    signs[signs == 0] = 1
    return components * signs


def _principal_axes(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (F,) and first k principal axes (k, F) of rows x (S, F), exact SVD in float64."""
    x = x.double()
    mean = x.mean(dim=0)  # (F,)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)  # (min(S, F), F)
    return mean, _sign_fix(vh[:k])


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _one_image(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) or (1, C, H, W) -> (1, C, H, W)."""
    if isinstance(image, torch.Tensor) and image.ndim == 3:
        image = image[None]
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected one image (C, H, W) or (1, C, H, W), got {shape}; loop over a batch")
    return image


# --------------------------------------------------------------------------- rollouts
def attention_rollout(
    attention: torch.Tensor,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    *,
    grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Attention rollout of the CLS token over the patches, (B, gh, gw) or (gh, gw) for one image.

    Abnar & Zuidema, "Quantifying Attention Flow in Transformers" (ACL 2020), Sec. 3: per layer the
    heads are fused (``mean`` as in the paper; ``max``/``min`` as in Gildenblat's "Exploring
    Explainability for Vision Transformers", 2020), the residual connection is modelled by adding
    the identity, rows are renormalised, ``Ã_l = (A_l + I) / rowsum``, and the layers are multiplied,
    ``R = Ã_L ... Ã_1``. The map is row 0 (CLS) of R over the patch columns; it is not rescaled.
    ``discard_ratio`` (Gildenblat) zeroes that fraction of the lowest fused weights of each layer
    before the identity is added, never those in the prefix (CLS) columns. ``attention`` may be a
    :class:`vitcore.Trace`; then its grid and prefix are used. Layers must be consecutive from the
    first block for the result to be the paper's rollout.
    """
    attention, trace_grid, trace_prefix = _trace_fields(attention)
    grid = grid if grid is not None else trace_grid
    num_prefix_tokens = trace_prefix if trace_prefix is not None else num_prefix_tokens
    att, unbatched = _as_layers(attention)  # (L, B, H, T, T)
    if head_fusion not in ("mean", "max", "min"):
        raise ValueError(f"head_fusion={head_fusion!r} must be 'mean', 'max' or 'min'")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio={discard_ratio} must be in [0, 1); 0 keeps every weight")
    L, B, _, T, _ = att.shape
    gh, gw = _resolve_grid(T, num_prefix_tokens, grid)
    fused = reduce(att.double(), "l b h q k -> l b q k", head_fusion)  # (L, B, T, T)
    if discard_ratio > 0:
        body = fused[..., num_prefix_tokens:].reshape(L, B, -1).clone()  # (L, B, T*N), CLS columns left out
        drop = int(body.shape[-1] * discard_ratio)
        if drop:
            lowest = body.topk(drop, dim=-1, largest=False).indices  # (L, B, drop)
            body.scatter_(-1, lowest, 0.0)
            fused = torch.cat([fused[..., :num_prefix_tokens], body.reshape(L, B, T, -1)], dim=-1)  # (L, B, T, T)
    eye = torch.eye(T, dtype=fused.dtype, device=fused.device)  # (T, T)
    layer_flow = fused + eye  # (L, B, T, T)
    layer_flow = layer_flow / layer_flow.sum(dim=-1, keepdim=True)  # rows sum to 1
    rollout = eye.expand(B, T, T)  # (B, T, T)
    for flow in layer_flow:
        rollout = flow @ rollout  # (B, T, T)
    cls_map = rollout[:, 0, num_prefix_tokens:]  # (B, N)
    out = rearrange(cls_map, "b (gh gw) -> b gh gw", gh=gh, gw=gw).float()  # (B, gh, gw)
    return out[0] if unbatched else out


def _targets(target: int | Iterable[int] | torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """(B,) class indices: the given ones (one for all or one per image) or the predicted class."""
    B, C = logits.shape
    if target is None:
        return logits.argmax(dim=-1)  # (B,)
    t = torch.as_tensor(target if not isinstance(target, int) else [target] * B, device=logits.device).long()
    if t.ndim == 0:
        t = t.expand(B)
    if t.shape != (B,):
        raise ValueError(f"target must be one class index or one per image ({B}), got shape {tuple(t.shape)}")
    if bool(((t < 0) | (t >= C)).any()):
        raise ValueError(f"target {t.tolist()} is out of range; the model has classes 0..{C - 1}")
    return t


def gradient_rollout(
    model: nn.Module,
    images: torch.Tensor,
    target: int | Iterable[int] | torch.Tensor | None = None,
    *,
    score: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Class-specific relevance of each patch for ``target``, (B, gh, gw) or (gh, gw) for one image.

    Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and
    Encoder-Decoder Transformers" (ICCV 2021), eqs. (5)-(6) for self-attention: with A_l the
    post-softmax attention of block l and ∇A_l the gradient of the target logit with respect to it,
    ``Ā_l = E_h[(∇A_l ⊙ A_l)^+]`` and ``R ← R + Ā_l R`` from R = I over the blocks in order. The map
    is row 0 (CLS) of R over the patch columns. Runs one explicit-path forward and one backward
    with :meth:`VisionTransformer.forward_intermediates` and gradients from ``torch.autograd.grad``
    with respect to the attention maps only: the model's mode, flags, hooks and ``.grad`` are never
    touched, so a shared model serves many threads. ``target`` is one class, one per image, or None
    for the predicted class; ``score`` (final tokens (B, T, D) -> (B,)) replaces the class logit,
    e.g. :meth:`vitcore.explain.targets.Scorer.from_tokens` for a similarity.
    """
    unbatched = isinstance(images, torch.Tensor) and images.ndim == 3
    x = images[None] if unbatched else images  # (B, C, H, W)
    x = x.detach().to(_model_device(model)).clone().requires_grad_(True)  # leaf, so frozen models work too
    with torch.enable_grad():
        inter = model.forward_intermediates(x, attention=True, head=score is None)  # no flag or hook touched
        maps = inter.attention  # per block (B, H, T, T), still in the graph
        if score is None:
            t = _targets(target, inter.logits)
            total = inter.logits.gather(1, t[:, None]).sum()
        else:
            total = score(inter.features).sum()  # e.g. a similarity read from the final tokens (B, T, D)
        grads = torch.autograd.grad(total, maps)  # per block (B, H, T, T); no parameter .grad is written
    B, _, T, _ = maps[0].shape
    prefix = model.num_prefix_tokens
    gh, gw = model.grid_for(x.shape[-2], x.shape[-1])
    relevance = torch.eye(T, dtype=torch.float64, device=x.device).expand(B, T, T)  # (B, T, T)
    for attn, grad in zip(maps, grads):
        cam = (grad * attn.detach()).clamp(min=0).mean(dim=1).double()  # (B, T, T)  E_h[(∇A ⊙ A)+]
        relevance = relevance + cam @ relevance  # (B, T, T)
    cls_map = relevance[:, 0, prefix:]  # (B, N)
    out = rearrange(cls_map, "b (gh gw) -> b gh gw", gh=gh, gw=gw).float().cpu()  # (B, gh, gw)
    return out[0] if unbatched else out


# --------------------------------------------------------------------------- Fig. 7
def _patch_centres(grid: tuple[int, int], patch_size: int, device: torch.device) -> torch.Tensor:
    """(N, 2) pixel coordinates of patch centres, row-major (the offset P/2 cancels in distances)."""
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")  # (gh, gw) each
    return torch.stack([rows.flatten(), cols.flatten()], dim=-1).to(device, torch.float64) * patch_size  # (N, 2)


def mean_attention_distance(
    attention: torch.Tensor, grid: tuple[int, int], patch_size: int, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Mean attention distance in pixels per layer and head, (L, H).

    Dosovitskiy et al. 2021, Fig. 7 (right) and Appendix D.7: for each head, the distance between
    the query patch and every key patch weighted by attention, averaged over queries and images.
    Distances are between patch centres in pixels (``patch_size`` per grid step, so a non-square
    grid is fine). Choices made here: prefix (CLS) queries are excluded, prefix keys are left out
    and each query's remaining weights renormalised to sum to 1 (a query that attends only to CLS
    counts as distance 0). ``attention`` is (L, B, H, T, T), (L, H, T, T), or a Trace.
    """
    attention, _, _ = _trace_fields(attention)
    att, _ = _as_layers(attention)  # (L, B, H, T, T)
    T = att.shape[-1]
    grid = _resolve_grid(T, num_prefix_tokens, grid)
    if patch_size <= 0:
        raise ValueError(f"patch_size={patch_size} must be a positive number of pixels")
    centres = _patch_centres(grid, patch_size, att.device)  # (N, 2)
    distance = torch.cdist(centres, centres)  # (N, N) pixels
    out = []
    for layer in att:  # (B, H, T, T); one layer at a time bounds the temporary
        a = layer[:, :, num_prefix_tokens:, num_prefix_tokens:].double()  # (B, H, N, N) patch -> patch
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)  # renormalised rows
        per_query = (a * distance).sum(dim=-1)  # (B, H, N)
        out.append(reduce(per_query, "b h n -> h", "mean"))  # (H,)
    return torch.stack(out).float()  # (L, H)


def position_embedding_similarity(
    pos_embedding: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Cosine similarity of each patch's position embedding with every other one, (N, gh, gw).

    Dosovitskiy et al. 2021, Fig. 7 (centre) and Appendix D.4: tile i of the figure is
    ``out[i]``, the similarity of patch i's embedding with all patches laid out on the grid.
    ``pos_embedding`` is (prefix+N, D) as in ``trace.pos_embedding`` or (1, prefix+N, D).
    """
    pos = pos_embedding[0] if pos_embedding.ndim == 3 else pos_embedding  # (prefix+N, D)
    if pos.ndim != 2:
        raise ValueError(f"expected a position embedding (prefix+N, D), got {tuple(pos_embedding.shape)}")
    gh, gw = _resolve_grid(pos.shape[0], num_prefix_tokens, grid)
    patches = F.normalize(pos[num_prefix_tokens:].double(), dim=-1)  # (N, D)
    sim = patches @ patches.T  # (N, N)
    return rearrange(sim, "n (gh gw) -> n gh gw", gh=gh, gw=gw).float()  # (N, gh, gw)


def embedding_filters(model: nn.Module | torch.Tensor, k: int = 28) -> torch.Tensor:
    """First ``k`` principal components of the patch-embedding filters, (k, C, P, P).

    Dosovitskiy et al. 2021, Fig. 7 (left): the D filters of E (rows of the (D, C·P·P) weight)
    are centred and decomposed by an exact SVD (float64); component i is the i-th right singular
    vector, flipped so its largest-magnitude entry is positive, which makes the result identical
    across runs and invariant to the order of the filters. Accepts a model or the conv weight.
    """
    weight = model.patch_embed.proj.weight if isinstance(model, nn.Module) else model  # (D, C, P, P)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        raise ValueError("expected a vitcore model or a patch-embedding weight (D, C, P, P)")
    D, C, P, Q = weight.shape
    limit = min(D, C * P * Q)
    if not 1 <= k <= limit:
        raise ValueError(f"k={k} is out of range; this embedding has 1..{limit} principal components")
    _, axes = _principal_axes(weight.detach().reshape(D, -1).cpu(), k)  # (k, C*P*P)
    return axes.reshape(k, C, P, Q).float()


def _patch_tokens(tokens: torch.Tensor, num_prefix_tokens: int, grid) -> tuple[torch.Tensor, tuple[int, int], bool]:
    if not isinstance(tokens, torch.Tensor) or tokens.ndim not in (2, 3):
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"expected tokens (B, T, D) or (T, D) such as trace.tokens[-1], got {shape}")
    unbatched = tokens.ndim == 2
    tokens = tokens[None] if unbatched else tokens  # (B, T, D)
    return tokens, _resolve_grid(tokens.shape[1], num_prefix_tokens, grid), unbatched


def patch_pca_rgb(tokens: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """First three principal components of the patch tokens as colours in [0, 1], (gh, gw, 3).

    The token-PCA visualisation of Oquab et al., "DINOv2" (2023), Fig. 1 (and Caron et al. 2021):
    patch tokens of all given images are centred jointly and projected on their first three
    principal axes (exact SVD, signs fixed as in :func:`embedding_filters`); each component is
    min-max scaled over all patches to [0, 1] and becomes R, G, B. A batch (B, T, D) gives
    (B, gh, gw, 3) with shared colours; a component with no spread is 0.5.
    """
    tokens, (gh, gw), unbatched = _patch_tokens(tokens, num_prefix_tokens, grid)
    x = tokens[:, num_prefix_tokens:].detach().double()  # (B, N, D)
    flat = rearrange(x, "b n d -> (b n) d")  # (B*N, D)
    mean, axes = _principal_axes(flat, 3)  # (D,), (<=3, D)
    proj = (flat - mean) @ axes.T  # (B*N, <=3)
    low, high = proj.amin(dim=0), proj.amax(dim=0)  # (<=3,)
    spread = high - low
    scaled = torch.where(spread > 1e-12, (proj - low) / spread.clamp_min(1e-12), torch.full_like(proj, 0.5))
    if scaled.shape[1] < 3:  # fewer than three directions (D < 3 or a single patch)
        scaled = torch.cat([scaled, scaled.new_full((scaled.shape[0], 3 - scaled.shape[1]), 0.5)], dim=1)
    out = rearrange(scaled, "(b gh gw) c -> b gh gw c", gh=gh, gw=gw).float()  # (B, gh, gw, 3)
    return out[0] if unbatched else out


def cls_similarity(tokens: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Cosine similarity of each patch token with the CLS token, (gh, gw) or (B, gh, gw).

    A representation-similarity map in the spirit of Raghu et al., "Do Vision Transformers See
    Like Convolutional Neural Networks?" (NeurIPS 2021): high where a patch's token points where
    the class token points, at the layer the tokens come from.
    """
    tokens, (gh, gw), unbatched = _patch_tokens(tokens, num_prefix_tokens, grid)
    t = tokens.detach().double()  # (B, T, D)
    sim = F.cosine_similarity(t[:, num_prefix_tokens:], t[:, :1], dim=-1)  # (B, N)
    out = rearrange(sim, "b (gh gw) -> b gh gw", gh=gh, gw=gw).float()  # (B, gh, gw)
    return out[0] if unbatched else out


# --------------------------------------------------------------------------- occlusion
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)  # (B, C), the model read as it is (shared models are in eval mode)


def occlusion_probe(
    model: nn.Module, image: torch.Tensor, patches: Any, fill: str = "mean", normalization: Any = None
) -> torch.Tensor:
    """Change of every class logit when the given patches are hidden, (C,): masked minus original.

    Occlusion sensitivity of Zeiler & Fergus, "Visualizing and Understanding Convolutional
    Networks" (ECCV 2014), with whole ViT patches as the occluder. ``patches`` are flat indices,
    (row, col) pairs or a bool mask over the grid; ``fill`` is one of
    :data:`vitcore.explain.perturb.FILLS` (``mean``: the data set's mean colour; ``black`` needs
    ``normalization``). Both passes run in one batch.
    """
    x = _one_image(image).to(_model_device(model))  # (1, C, H, W)
    P = model.config.patch_size
    grid = model.grid_for(x.shape[-2], x.shape[-1])
    filler = perturb.fill_image(x, fill, patch_size=P, normalization=normalization)  # (1, C, H, W)
    masked = perturb.perturb(x, perturb.patch_selection(patches, grid)[None], filler, grid, P)  # (1, C, H, W)
    logits = _logits(model, torch.cat([x, masked]))  # (2, C)
    return (logits[1] - logits[0]).cpu()  # (C,)


def occlusion_map(
    model: nn.Module, image: torch.Tensor, target: int | None = None, fill: str = "mean", batch_size: int = 64,
    *, block: int = 1, normalization: Any = None,
) -> torch.Tensor:
    """Drop of the ``target`` logit when each single patch is hidden, (gh, gw); positive = the patch helped.

    Zeiler & Fergus (ECCV 2014) occlusion sensitivity over the patch grid: entry (r, c) is
    ``logit(image) - logit(image with patch (r, c) filled)`` for ``target`` (None: the predicted
    class), i.e. ``-occlusion_probe(model, image, [(r, c)])[target]``; ``block`` > 1 hides boxes of
    block x block patches instead (each patch gets its box's drop). The occluded copies run in
    batches of ``batch_size`` (:func:`vitcore.explain.perturb.occlusion`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    x = _one_image(image).to(_model_device(model))  # (1, C, H, W)
    t = int(_targets(target, _logits(model, x))[0])
    grid = model.grid_for(x.shape[-2], x.shape[-1])

    def score(images: torch.Tensor) -> torch.Tensor:
        return model(images)[:, t]  # (K,)

    return perturb.occlusion(score, x, grid, model.config.patch_size, fill=fill, block=block,
                             normalization=normalization, batch_size=batch_size)


def attention_mass_in_mask(heatmap: torch.Tensor, mask: torch.Tensor) -> float | torch.Tensor:
    """Share of a heat map's (positive) mass that falls inside an object mask, in [0, 1].

    The pointing / mass-inside-the-box measure used to score saliency maps (e.g. Zhang et al.,
    "Top-down Neural Attention by Excitation Backprop", ECCV 2016; Chefer et al. 2021 evaluate
    against segmentation masks the same way). ``heatmap`` is (gh, gw) or (H, W) (or batched with a
    leading B); ``mask`` is bool or [0, 1] at image or grid resolution (or batched). The map is
    resized to the mask (nearest when enlarging, so each patch spreads evenly over its pixels; area
    when shrinking); negative values count as 0; a map with no mass gives 0. One image -> float,
    a batch -> (B,) tensor.
    """
    if not isinstance(heatmap, torch.Tensor) or heatmap.ndim not in (2, 3):
        raise ValueError("heatmap must be a tensor (gh, gw) / (H, W), or (B, ., .) for a batch")
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        raise ValueError("mask must be a tensor (H, W) or (B, H, W), bool or with values in [0, 1]")
    unbatched = heatmap.ndim == 2 and mask.ndim == 2
    h = heatmap.detach().double()
    h = h[None] if h.ndim == 2 else h  # (B, h, w)
    m = mask.detach().to(h.device, torch.float64)
    m = m[None] if m.ndim == 2 else m  # (B or 1, H, W)
    size = tuple(m.shape[-2:])
    if tuple(h.shape[-2:]) != size:
        enlarge = size[0] >= h.shape[-2] and size[1] >= h.shape[-1]
        h = F.interpolate(h[:, None], size=size, mode="nearest-exact" if enlarge else "area")[:, 0]  # (B, H, W)
    h = h.clamp_min(0)
    total = h.sum(dim=(-2, -1))  # (B,)
    inside = (h * m).sum(dim=(-2, -1))  # (B,)
    share = torch.where(total > 0, inside / total.clamp_min(1e-300), torch.zeros_like(total))
    return float(share[0]) if unbatched else share.float()
