"""The views self-supervised ViTs are famous for, as pure functions of a :class:`vitcore.Trace` or of tokens.

* :func:`dino_attention_masks`: the last layer's CLS self-attention per head, each thresholded to
  keep 60 % of its mass (DINO: Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
  Transformers", Fig. 3 and Sec. 4.2.1).
* :func:`pca_foreground` / :func:`pca_foreground_pair`: the first principal component of the patch
  features, thresholded, separates the object from the background; a second PCA on the foreground
  patches, shown as RGB, colours matching parts alike, also across images (DINOv2: Oquab et al.
  2023, "DINOv2: Learning Robust Visual Features without Supervision", Fig. 1 and the "PCA of
  patch features" part of its qualitative results).
* :func:`token_norms` / :func:`artifact_tokens`: per-layer token norms and the high-norm outlier
  tokens of Darcet et al. 2023 ("Vision Transformers Need Registers"), with their share of the CLS
  token's attention and what the prefix tokens (CLS, registers) take.
* :func:`upsample` and :func:`mask_share`: patch maps to pixels, and how much of a map lies in a mask.

Nothing here needs Streamlit or a model: a trace (detached CPU tensors from ``vitcore.capture``)
or a (B, T, D) token tensor is enough. Token layout everywhere: ``T = prefix + N`` with the
``num_prefix_tokens`` prefix tokens first (CLS, then a distillation token and registers if the
model has them) and the N = gh * gw patch tokens in row-major grid order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "ArtifactTokens",
    "DinoAttention",
    "PCAView",
    "artifact_tokens",
    "cls_attention",
    "dino_attention_masks",
    "mask_share",
    "pca_foreground",
    "pca_foreground_pair",
    "token_norms",
    "upsample",
]


# --------------------------------------------------------------------------- helpers
def _check_trace(trace, what: str, need_attention: bool = True) -> None:
    for name in ("tokens", "grid", "num_prefix_tokens", "attention", "layers"):
        if not hasattr(trace, name):
            raise ValueError(f"{what} needs a vitcore.Trace (vitcore.capture(model, x)), got {type(trace).__name__}")
    if need_attention and trace.attention is None:
        raise ValueError(f"{what} needs attention in the trace; capture with layers=None (all) or including the layer")


def _layer_slot(trace, layer: int) -> tuple[int, int]:
    """(model block index, position along trace.attention's L axis) of ``layer`` (negative: from the end)."""
    depth = len(trace.tokens) - 1
    if not -depth <= layer < depth:
        raise ValueError(f"layer {layer} is out of range for a {depth}-block model (use 0..{depth - 1} or -1)")
    block = layer % depth
    return block, trace.layer_slot(block)


def cls_attention(trace, layer: int = -1) -> torch.Tensor:
    """Attention of the CLS token (query 0) to every token in one layer, (B, H, T); each row sums to 1.

    Heads are those the trace kept (``trace.heads``).
    """
    _check_trace(trace, "cls_attention")
    _, slot = _layer_slot(trace, layer)
    return trace.attention[slot, :, :, 0, :].float()  # (B, H, T)


def upsample(maps: torch.Tensor, patch_size: int, mode: str = "nearest") -> torch.Tensor:
    """Patch maps (..., gh, gw) to pixel maps (..., gh*P, gw*P), for overlays on the input image.

    ``mode="nearest"`` shows each patch as the square it is; "bilinear" smooths (floats only).
    Boolean maps stay boolean (nearest).
    """
    lead, (gh, gw) = maps.shape[:-2], maps.shape[-2:]
    is_bool = maps.dtype == torch.bool
    x = maps.reshape(-1, 1, gh, gw).float()  # (K, 1, gh, gw)
    if mode == "nearest" or is_bool:
        x = x.repeat_interleave(patch_size, dim=-2).repeat_interleave(patch_size, dim=-1)  # (K, 1, gh*P, gw*P)
    elif mode == "bilinear":
        x = F.interpolate(x, scale_factor=patch_size, mode="bilinear", align_corners=False)
    else:
        raise ValueError(f"mode={mode!r} must be 'nearest' or 'bilinear'")
    x = x.reshape(*lead, gh * patch_size, gw * patch_size)
    return x > 0.5 if is_bool else x


def _patch_cover(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Fraction of each patch that a pixel mask (B, H, W) covers, (B, gh, gw) in [0, 1]."""
    gh, gw = grid
    masks = torch.as_tensor(masks)
    if masks.ndim == 2:
        masks = masks[None]
    h, w = masks.shape[-2:]
    if h % gh or w % gw:
        raise ValueError(f"a {h}x{w} mask does not tile the {gh}x{gw} patch grid; give the mask of the model's input")
    return F.adaptive_avg_pool2d(masks[:, None].float(), (gh, gw))[:, 0]  # (B, gh, gw)


def mask_share(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How much of a non-negative patch map lies inside a pixel mask, and how much of the image the mask is.

    ``maps`` (B, gh, gw) (e.g. CLS attention to the patches), ``masks`` (B, H, W) bool at the
    model's input size. Each patch counts with the fraction of its pixels inside the mask. Returns
    ``(share of the map's mass inside the mask (B,), share of the image inside the mask (B,))``;
    a map that ignores the object has the first equal to the second on average.
    """
    cover = _patch_cover(masks, tuple(maps.shape[-2:]))  # (B, gh, gw)
    maps = maps.float().clamp_min(0)
    inside = (maps * cover).flatten(1).sum(1) / maps.flatten(1).sum(1).clamp_min(1e-12)  # (B,)
    return inside, cover.flatten(1).mean(1)  # (B,), (B,)


# --------------------------------------------------------------------------- DINO attention masks
@dataclass
class DinoAttention:
    """Per-head CLS attention of one layer over the patch grid, and the masks keeping ``keep`` of its mass."""

    layer: int  # model block index
    heads: tuple[int, ...]  # head index of each entry along H
    attention: torch.Tensor  # (B, H, gh, gw) CLS -> patch attention, renormalised to sum to 1 over the patches
    masks: torch.Tensor  # (B, H, gh, gw) bool: the fewest patches that hold >= keep of the attention
    kept_mass: torch.Tensor  # (B, H) attention mass inside each mask (>= keep)
    prefix_mass: torch.Tensor  # (B, H) share of the raw CLS row spent on prefix tokens (CLS itself, registers)
    keep: float


def dino_attention_masks(trace, keep: float = 0.6, layer: int = -1) -> DinoAttention:
    """DINO's attention masks: per head, the smallest set of patches holding ``keep`` of the CLS attention.

    Caron et al. 2021 (Sec. 4.2.1, Fig. 3) take the last layer's attention of the CLS query to the
    patches, per head, and keep the patches with the largest weights until their sum reaches 60 %
    of the total (they visualise ``keep=0.6``). Here the CLS row is first restricted to the patch
    tokens and renormalised to sum to 1 (with registers, the CLS row also attends to them; their
    share is returned as ``prefix_mass``). Ties at the threshold are all kept.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep={keep} must be in (0, 1]; DINO uses 0.6")
    _check_trace(trace, "dino_attention_masks")
    block, _ = _layer_slot(trace, layer)
    row = cls_attention(trace, layer)  # (B, H, T)
    p, (gh, gw) = trace.num_prefix_tokens, trace.grid
    patches = row[..., p:]  # (B, H, N)
    total = patches.sum(-1, keepdim=True)  # (B, H, 1)
    attn = patches / total.clamp_min(1e-12)  # (B, H, N), sums to 1
    values = attn.sort(dim=-1, descending=True).values  # (B, H, N)
    before = values.cumsum(-1) - values  # mass of the patches ranked above each one
    keep_sorted = before < keep - 1e-7  # a patch is needed while the mass above it is still short of `keep`
    cutoff = torch.where(keep_sorted, values, torch.full_like(values, float("inf"))).amin(-1, keepdim=True)  # (B,H,1)
    masks = attn >= cutoff  # (B, H, N) bool; ties at the cutoff are kept
    kept = (attn * masks).sum(-1)  # (B, H)
    B, H = attn.shape[:2]
    return DinoAttention(
        layer=block,
        heads=tuple(trace.heads),
        attention=attn.reshape(B, H, gh, gw),
        masks=masks.reshape(B, H, gh, gw),
        kept_mass=kept,
        prefix_mass=1.0 - total[..., 0],
        keep=keep,
    )


# --------------------------------------------------------------------------- PCA of patch features
@dataclass
class PCAView:
    """DINOv2's PCA view of one image's patch features."""

    grid: tuple[int, int]  # (gh, gw)
    first: torch.Tensor  # (gh, gw) first principal component, signed so the foreground is positive
    foreground: torch.Tensor  # (gh, gw) bool: first > threshold
    rgb: torch.Tensor  # (gh, gw, 3) in [0, 1]: the second PCA's three components on the foreground, 0 elsewhere
    threshold: float  # on ``first``
    explained: torch.Tensor  # (4,) variance share of the first component and of the three RGB components

    def rgb_image(self, patch_size: int) -> torch.Tensor:
        """``rgb`` at pixel resolution, (gh*P, gw*P, 3), for display next to the image."""
        return upsample(self.rgb.permute(2, 0, 1), patch_size).permute(1, 2, 0)


def _principal_axes(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean (D,), top-k principal axes (D, k), explained variance share (k,)) of the rows of x (M, D).

    Subspace iteration with a block of k + 8 vectors and a deterministic start, on the 8th power of
    the trace-normalised covariance (so 5 steps act like 40), then Rayleigh-Ritz: the top axes
    to ~1e-6 in about twenty matrix operations, with no random state and no full
    eigendecomposition (slow and erratic on a loaded 2-core machine).
    """
    x = x.double()
    mean = x.mean(0)
    xc = x - mean  # (M, D)
    cov = xc.T @ xc  # (D, D)
    cov = cov / cov.trace().clamp_min(1e-30)  # eigenvalues are now variance shares, summing to 1
    power = cov
    for _ in range(3):
        power = power @ power  # cov^2, cov^4, cov^8
    b = min(k + 8, cov.shape[0])
    q = cov[:, cov.diagonal().topk(b).indices]  # (D, b) start: the coordinates with the most variance
    for _ in range(5):
        q = torch.linalg.qr(power @ q).Q  # (D, b)
    values, vectors = torch.linalg.eigh(q.T @ cov @ q)  # (b,), (b, b) ascending
    axes = (q @ vectors).flip(1)  # (D, b) descending
    k = min(k, b)
    return mean, axes[:, :k], values.flip(0)[:k].clamp_min(0)


def _split_patches(tokens: torch.Tensor, num_prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    if tokens.ndim != 3:
        raise ValueError(f"expected tokens (B, T, D), got shape {tuple(tokens.shape)}")
    n = grid[0] * grid[1]
    if tokens.shape[1] != num_prefix_tokens + n:
        raise ValueError(
            f"tokens have T={tokens.shape[1]}, but a {grid[0]}x{grid[1]} grid with {num_prefix_tokens} prefix "
            f"token(s) needs T={num_prefix_tokens + n}; pass the trace's grid and num_prefix_tokens"
        )
    return tokens[:, num_prefix_tokens:].detach().float().cpu()  # (B, N, D)


def _first_component(x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """First principal component of one image's patch features (N, D), signed so the object is positive."""
    mean, axes, explained = _principal_axes(x, 1)
    first = ((x.double() - mean) @ axes[:, 0]).float()  # (N,)
    # The sign of a principal axis is arbitrary. The object rarely touches every border, so the
    # side the border patches lean to is called background (DINOv2 keeps "positive" patches).
    border = _border(grid)  # (N,) bool
    inner = first[~border].mean() if bool((~border).any()) else torch.tensor(0.0)
    if first[border].mean() > inner:
        first = -first
    return first, explained


def _pca_views(patches: list[torch.Tensor], grids: list[tuple[int, int]], threshold: float) -> list[PCAView]:
    """PCA views of several images: foreground per image, the RGB parts fitted on all foregrounds together.

    Each image's own first component separates its object from its background (fitted jointly on
    two different photos, the first component would separate the photos instead); the second PCA
    runs on the union of the foregrounds, so the same part gets the same colour in every image.
    """
    firsts, explained_first = zip(*(_first_component(p, g) for p, g in zip(patches, grids)))
    first = torch.cat(firsts)  # (sum N_i,)
    x = torch.cat(patches)  # (sum N_i, D)
    fg = first > threshold  # (sum N_i,)
    rgb = torch.zeros(len(first), 3)
    explained_rgb = torch.zeros(3, dtype=torch.float64)
    if int(fg.sum()) >= 2:
        fmean, faxes, explained_rgb = _principal_axes(x[fg], 3)  # the second PCA, on the foreground only
        comp = ((x[fg].double() - fmean) @ faxes).float()  # (F, k<=3)
        lo, hi = comp.amin(0), comp.amax(0)
        rgb[fg, : comp.shape[1]] = (comp - lo) / (hi - lo).clamp_min(1e-12)  # each component to [0, 1]
        explained_rgb = torch.cat([explained_rgb, explained_rgb.new_zeros(3 - len(explained_rgb))])
    views, start = [], 0
    for g, explained in zip(grids, explained_first):
        n = g[0] * g[1]
        sl = slice(start, start + n)
        views.append(PCAView(
            grid=g,
            first=first[sl].reshape(g),
            foreground=fg[sl].reshape(g),
            rgb=rgb[sl].reshape(*g, 3),
            threshold=float(threshold),
            explained=torch.cat([explained, explained_rgb]).float(),
        ))
        start += n
    return views


def _border(grid: tuple[int, int]) -> torch.Tensor:
    """(N,) bool: patches on the outer ring of the grid."""
    gh, gw = grid
    ring = torch.zeros(gh, gw, dtype=torch.bool)
    ring[0], ring[-1], ring[:, 0], ring[:, -1] = True, True, True, True
    return ring.flatten()


def pca_foreground(
    tokens: torch.Tensor,
    grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    *,
    threshold: float = 0.0,
    joint: bool = False,
) -> list[PCAView]:
    """DINOv2's PCA of patch features: foreground from the first component, parts as RGB.

    Oquab et al. 2023 (Fig. 1, "PCA of patch features"): a PCA over the patch features; patches
    whose first component is above a threshold (0, "positive") form the foreground; a second PCA
    on the foreground patches alone gives three components shown as R, G and B, so parts with
    similar features get similar colours. ``tokens`` (B, T, D) are the patch features with
    ``num_prefix_tokens`` prefix tokens first (CLS, registers), e.g. ``model.forward_features(x)``
    (the final LayerNorm output, what DINOv2 shows) or ``trace.tokens[-1]``.

    The foreground always comes from each image's own first component. ``joint=False`` fits the
    RGB PCA per image; ``joint=True`` fits it on all B images' foreground patches together, so the
    same part gets the same colour in every image (DINOv2's cross-image matching).
    The sign of the first component is chosen so that border patches lean negative (background).
    Returns one :class:`PCAView` per image; RGB components are scaled to [0, 1] over the fitted
    foreground (all images' when joint).
    """
    patches = _split_patches(tokens, num_prefix_tokens, grid)  # (B, N, D)
    if joint:
        return _pca_views(list(patches), [tuple(grid)] * len(patches), threshold)
    return [_pca_views([p], [tuple(grid)], threshold)[0] for p in patches]


def pca_foreground_pair(
    tokens_a: torch.Tensor,
    grid_a: tuple[int, int],
    tokens_b: torch.Tensor,
    grid_b: tuple[int, int],
    num_prefix_tokens: int = 1,
    *,
    threshold: float = 0.0,
) -> tuple[PCAView, PCAView]:
    """The joint PCA view of two images of possibly different sizes: matching parts share colours.

    ``tokens_a`` (1, T_a, D) and ``tokens_b`` (1, T_b, D) as in :func:`pca_foreground`.
    """
    pa = _split_patches(tokens_a, num_prefix_tokens, grid_a)
    pb = _split_patches(tokens_b, num_prefix_tokens, grid_b)
    if pa.shape[0] != 1 or pb.shape[0] != 1:
        raise ValueError("pca_foreground_pair takes one image per side, tokens of shape (1, T, D)")
    a, b = _pca_views([pa[0], pb[0]], [tuple(grid_a), tuple(grid_b)], threshold)
    return a, b


# --------------------------------------------------------------------------- artifact tokens
def token_norms(trace) -> torch.Tensor:
    """L2 norm of every token in every residual stream state, (L+1, B, T).

    Entry ``l`` is the input of block ``l`` (``l = L``: the last block's output, before the final
    LayerNorm), as in ``trace.tokens``. Darcet et al. 2023 (Fig. 3, 4) show these norms: in large,
    long-trained ViTs a few patch tokens in the later layers have norms several times the rest.
    """
    _check_trace(trace, "token_norms", need_attention=False)
    return torch.stack([t.float().norm(dim=-1) for t in trace.tokens])  # (L+1, B, T)


@dataclass
class ArtifactTokens:
    """High-norm outlier patch tokens of one layer and the CLS attention they draw."""

    layer: int  # index into trace.tokens (0 = embeddings, L = last block's output)
    attention_layer: int  # model block whose CLS attention is measured
    norms: torch.Tensor  # (B, N) patch token norms at ``layer``
    median: torch.Tensor  # (B,) median patch norm
    mad: torch.Tensor  # (B,) median absolute deviation of the patch norms
    threshold: torch.Tensor  # (B,) norms above this are outliers: max(median + k * 1.4826 * MAD, ratio * median)
    outliers: torch.Tensor  # (B, gh, gw) bool
    count: torch.Tensor  # (B,) number of outlier patches
    area_share: torch.Tensor  # (B,) outliers / N
    cls_share: torch.Tensor  # (B,) share of the CLS attention (mean of heads) on the outlier patches
    cls_attention: torch.Tensor  # (B, gh, gw) CLS attention (mean of heads) to each patch, as in the layer
    prefix_share: torch.Tensor  # (B, prefix) CLS attention on each prefix token (CLS itself, then registers)
    prefix_norms: torch.Tensor  # (B, prefix) norms of the prefix tokens at ``layer``
    max_ratio: torch.Tensor  # (B,) largest patch norm / median


def artifact_tokens(
    trace,
    layer: int = -1,
    *,
    k: float = 6.0,
    ratio: float = 2.0,
    attention_layer: int = -1,
) -> ArtifactTokens:
    """Darcet et al.'s high-norm "artifact" tokens, found by a robust rule, and their share of CLS attention.

    Darcet et al. 2023 ("Vision Transformers Need Registers", Sec. 2) find, in large ViTs such as
    DINOv2 ViT-L/g, about 2 % of patch tokens whose output norm is several times the others'
    (a bimodal histogram, Fig. 3), in low-information background patches, holding global
    information, and drawing much of the CLS token's attention; extra "register" tokens take that
    role over. This function measures it rather than assuming it.

    Rule: with the patch token norms ``n`` at ``layer`` (index into ``trace.tokens``; -1 is the last
    block's output), their median ``m`` and median absolute deviation ``MAD``, a patch is an outlier
    when ``n > m + k * 1.4826 * MAD`` (a robust z-score above ``k``; 1.4826 * MAD estimates the
    standard deviation of normal data) **and** ``n > ratio * m``. The z-score alone flags the
    ordinary tail of a few hundred norms; the ratio asks for the jump the paper reports (outliers
    several times the typical norm). Defaults: ``k=6``, ``ratio=2``.

    ``cls_share`` is the CLS token's attention (mean over the heads the trace kept) in block
    ``attention_layer`` (default last) on the outliers; compare it with ``area_share``.
    ``prefix_share`` shows what the CLS row spends on CLS itself and on registers (if any).

    At ``layer=0`` (the embeddings, before any block) the rule can fire on patches with extreme
    pixels (flat bright areas); those are not the paper's artifacts. Measured on
    ``vitcore.dinov2_small()`` (ViT-S/14) with skimage's photos at 224 to 518 px: no outliers at
    the output, largest patch norm at most 1.5x the median, and the 1 % highest-norm patches draw
    about 1 % of the CLS attention; the paper reports the artifacts for large models (ViT-L and up).
    """
    _check_trace(trace, "artifact_tokens")
    norms_all = token_norms(trace)  # (L+1, B, T)
    depth = norms_all.shape[0] - 1
    if not -(depth + 1) <= layer <= depth:
        raise ValueError(f"layer {layer} is out of range: trace.tokens has {depth + 1} entries (0..{depth} or -1)")
    layer = layer % (depth + 1)
    p, (gh, gw) = trace.num_prefix_tokens, trace.grid
    norms = norms_all[layer, :, p:]  # (B, N)
    median = norms.median(dim=1).values  # (B,)
    mad = (norms - median[:, None]).abs().median(dim=1).values  # (B,)
    threshold = torch.maximum(median + k * 1.4826 * mad, ratio * median)  # (B,)
    outliers = norms > threshold[:, None]  # (B, N)
    block, _ = _layer_slot(trace, attention_layer)
    row = cls_attention(trace, attention_layer).mean(1)  # (B, T) mean of heads; sums to 1
    patch_row = row[:, p:]  # (B, N)
    B = norms.shape[0]
    return ArtifactTokens(
        layer=layer,
        attention_layer=block,
        norms=norms,
        median=median,
        mad=mad,
        threshold=threshold,
        outliers=outliers.reshape(B, gh, gw),
        count=outliers.sum(1),
        area_share=outliers.float().mean(1),
        cls_share=(patch_row * outliers).sum(1),
        cls_attention=patch_row.reshape(B, gh, gw),
        prefix_share=row[:, :p],
        prefix_norms=norms_all[layer, :, :p],
        max_ratio=norms.amax(1) / median,
    )
