"""Relevance propagation through attention: Chefer, Gur & Wolf, CVPR 2021.

"Transformer Interpretability Beyond Attention Visualization" (Chefer et al. 2021) explains a
ViT's score in three steps, written here from the paper (Sec. 3, eqs. 1-13):

1. **Relevance** R is propagated from the score back through every layer with layer-wise
   relevance propagation (LRP). Linear layers use the alpha = 1, beta = 0 rule (only positive
   contributions, eq. 4): ``R_in = x+ (S W+) + x- (S W-)`` with ``S = R / (x+ W+^T + x- W-^T)``.
   LayerNorm, GELU and softmax pass relevance on unchanged; the two matrix products of attention
   (``q k^T`` and ``A v``) split it by each operand's share of the product (eq. 5, the
   "non-parametric" rule), half to each operand; a residual sum ``a + b`` splits it by share and
   then rescales both parts so the total is conserved (eqs. 6-8); the fork before a residual
   branch adds the branch's relevance to the skip's.
2. For every block b, the relevance that reached its attention matrix, R^(b) (B, H, T, T), is
   weighted by the gradient of the score with respect to that matrix and averaged over the heads,
   keeping the positive part: ``Ā^(b) = I + E_h[(∇A^(b) ⊙ R^(b))^+]`` (eq. 13).
3. The blocks are rolled out, ``C = Ā^(1) · Ā^(2) ··· Ā^(B)``, and the map is the CLS row of C
   over the patch columns.

The score is a class logit (the head's row for the class starts the propagation) or the
similarity of the pooled features to a reference (its linearisation ``f · r / (|f0| |r|)``, see
:mod:`vitcore.explain.targets`, starts it). Only blocks whose token mixer is attention are
understood; anything else is refused with a message. The model is only read: the forward pass
is recomputed here from the model's own modules, the gradients come from
``torch.autograd.grad`` with respect to the attention maps only.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import nn

from ..model.attention import Attention
from .targets import Scorer, scorer

__all__ = ["chefer_relevance", "check_relevance_model", "lrp_linear"]

_EPS = 1e-9


def _divide(r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """r / z with z pushed away from 0 by EPS (keeping its sign); 0 where z is exactly 0."""
    stable = z + _EPS * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
    return torch.where(z == 0, torch.zeros_like(r), r / stable)


def lrp_linear(x: torch.Tensor, weight: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """LRP alpha=1 beta=0 through ``y = x W^T``: relevance of the inputs (..., in) from that of y (..., out)."""
    wp, wn = weight.clamp(min=0), weight.clamp(max=0)  # (out, in)
    xp, xn = x.clamp(min=0), x.clamp(max=0)  # (..., in)
    s = _divide(relevance, xp @ wp.T + xn @ wn.T)  # (..., out): positive contributions only
    return xp * (s @ wp) + xn * (s @ wn)  # (..., in)


def _lrp_matmul(a: torch.Tensor, b: torch.Tensor, relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Share-of-product rule for ``Z = a @ b``: relevance of a and b, each halved (Chefer et al. eq. 5)."""
    s = _divide(relevance, a @ b)  # (..., i, j)
    return a * (s @ b.transpose(-2, -1)) / 2, b * (a.transpose(-2, -1) @ s) / 2


def _lrp_add(a: torch.Tensor, b: torch.Tensor, relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual ``a + b``: split by share, then rescale so each part keeps its share of the total (eqs. 6-8)."""
    s = _divide(relevance, a + b)
    ra, rb = a * s, b * s
    sa, sb, total = ra.sum(), rb.sum(), relevance.sum()
    norm = sa.abs() + sb.abs()
    fa, fb = _divide(sa.abs(), norm) * total, _divide(sb.abs(), norm) * total
    return ra * _divide(fa, sa), rb * _divide(fb, sb)


def check_relevance_model(model: nn.Module) -> None:
    """Raise ValueError when the relevance rules do not cover this model's layers."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "patch_embed"):
        raise ValueError(f"{type(model).__name__} is not a vitcore VisionTransformer; convert it first")
    others = sorted({type(b.attn).__name__ for b in blocks if not isinstance(b.attn, Attention)})
    if others:
        mixer = getattr(model.config, "token_mixer", others[0])
        raise ValueError(
            f"relevance propagation (Chefer et al. 2021) has rules for attention only, but this model mixes tokens "
            f"with {mixer!r} ({', '.join(others)}); use 'occlusion', 'grad-x-input' or 'integrated-gradients'"
        )
    if model.config.pool not in ("cls", "mean", "cls+mean"):
        raise ValueError(f"relevance propagation does not know pool={model.config.pool!r}")


def _pool_relevance(model: nn.Module, tokens: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Relevance of the final tokens (1, T, D) from that of the pooled vector (1, D')."""
    prefix, D = model.num_prefix_tokens, tokens.shape[-1]
    out = torch.zeros_like(tokens)  # (1, T, D)
    pool = model.config.pool
    if pool in ("cls", "cls+mean"):
        out[:, 0] = relevance[:, :D]
    if pool in ("mean", "cls+mean"):
        r_mean = relevance[:, -D:]  # (1, D)
        patches = tokens[:, prefix:] / (tokens.shape[1] - prefix)  # (1, N, D) each patch's share of the mean
        out[:, prefix:] = patches * _divide(r_mean, patches.sum(dim=1))[:, None]
    return out


def chefer_relevance(model: nn.Module, image: torch.Tensor, target: Any = None) -> torch.Tensor:
    """Chefer et al. 2021's relevance of every patch for ``target`` (class, None, "similarity"), (gh, gw).

    ``image`` is one normalised image (1, C, H, W); ``target`` a class index, None (the
    prediction), "similarity" or a :mod:`vitcore.explain.targets` object. See the module docstring.
    """
    check_relevance_model(model)
    x = image if image.ndim == 4 else image[None]
    score_fn: Scorer = target if isinstance(target, Scorer) else scorer(model, x, target)
    grid = model.grid_for(x.shape[-2], x.shape[-1])

    # forward, keeping what the rules need (one image; the model's own modules, nothing changed)
    saved: list[dict[str, torch.Tensor]] = []
    with torch.enable_grad():
        z = model.embed_patches(model.patch_embed(x.detach()), grid, dropout=False).detach()  # (1, T, D)
        for block in model.blocks:
            attn_mod: Attention = block.attn
            s: dict[str, torch.Tensor] = {"z": z}
            s["h"] = block.norm1(z)  # (1, T, D)
            q, k, v = attn_mod.split_heads(s["h"])  # 3 x (1, H, T, d)
            attention = attn_mod.attention_matrix(q, k)  # (1, H, T, T)
            context = attention @ v  # (1, H, T, d)
            s["merged"] = rearrange(context, "b h t d -> b t (h d)")  # (1, T, D)
            s["branch1"] = attn_mod.proj(s["merged"])  # (1, T, D)
            z1 = z + s["branch1"]  # (1, T, D)
            s["h2"] = block.norm2(z1)
            s["hidden"] = block.mlp.act(block.mlp.fc1(s["h2"]))  # (1, T, M)
            s["branch2"] = block.mlp.fc2(s["hidden"])  # (1, T, D)
            s.update(q=q, k=k, v=v, attention=attention, z1=z1)
            z = z1 + s["branch2"]  # (1, T, D)
            saved.append(s)
        features = model.norm(z)  # (1, T, D)
        score = score_fn.from_tokens(features)[0]
        grads = torch.autograd.grad(score, [s["attention"] for s in saved])  # per block (1, H, T, T)

    with torch.no_grad():
        features = features.detach()
        pooled = model.pool(features)  # (1, D')
        if score_fn.index is not None:
            weight = model.head.weight[score_fn.index : score_fn.index + 1]  # (1, D') the class's row
        else:
            weight = score_fn.direction[None].to(pooled.dtype)  # (1, D') the linearised similarity
        one = torch.ones(1, 1, dtype=pooled.dtype, device=pooled.device)
        head_dist = getattr(model, "head_dist", None)
        if head_dist is not None and score_fn.index is not None:  # DeiT: the mean of two heads, half each
            r = _pool_relevance(model, features, lrp_linear(pooled, weight, one / 2))  # (1, T, D)
            dist_weight = head_dist.weight[score_fn.index : score_fn.index + 1]  # (1, D)
            r[:, 1] += lrp_linear(features[:, 1], dist_weight, one / 2)[0]  # the distillation token
        else:
            r = _pool_relevance(model, features, lrp_linear(pooled, weight, one))  # (1, T, D)
        # the final LayerNorm passes the relevance on
        cams = []
        for block, s, grad in zip(reversed(model.blocks), reversed(saved), reversed(grads)):
            s = {key: value.detach() for key, value in s.items()}
            r_skip, r_mlp = _lrp_add(s["z1"], s["branch2"], r)
            r_hidden = lrp_linear(s["hidden"], block.mlp.fc2.weight, r_mlp)  # (1, T, M); GELU passes it on
            r_h2 = lrp_linear(s["h2"], block.mlp.fc1.weight, r_hidden)  # (1, T, D); norm2 passes it on
            r = r_skip + r_h2  # the fork before the MLP branch
            r_skip, r_attn = _lrp_add(s["z"], s["branch1"], r)
            r_merged = lrp_linear(s["merged"], block.attn.proj.weight, r_attn)  # (1, T, D)
            r_context = rearrange(r_merged, "b t (h d) -> b h t d", h=block.attn.heads)  # (1, H, T, d)
            r_att, r_v = _lrp_matmul(s["attention"], s["v"], r_context)  # (1, H, T, T), (1, H, T, d)
            cams.append((grad.detach() * r_att).clamp(min=0).mean(dim=1)[0].double())  # (T, T) eq. 13
            r_q, r_k = _lrp_matmul(s["q"], s["k"].transpose(-2, -1), r_att)  # softmax passes it on
            r_qkv = rearrange([r_q, r_k.transpose(-2, -1), r_v], "three b h t d -> b t (three h d)")  # (1, T, 3D)
            r = r_skip + lrp_linear(s["h"], block.attn.qkv.weight, r_qkv)  # the fork; norm1 passes it on
        T = features.shape[1]
        eye = torch.eye(T, dtype=torch.float64, device=features.device)
        rollout = eye
        for cam in reversed(cams):  # cams were collected last block first
            rollout = (cam + eye) @ rollout  # (T, T)
        patch_row = rollout[0, model.num_prefix_tokens :]  # (N,)
    return patch_row.reshape(grid).float().cpu()
