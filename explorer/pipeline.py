"""The forward pass as a story: each stage of eq. (1)-(4) with the live tensor shape it produces."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from explorer.texts import page_name
from vitcore import VisionTransformer, patchify
from vitcore.model import parameter_count
from vitcore.model.mixers import mixer_cost

__all__ = ["Stage", "cost_summary", "param_count", "shape_flow"]


@dataclass(frozen=True)
class Stage:
    """One step of the data flow: what it is, the symbolic shape and the real one."""

    name: str
    symbolic: str
    shape: tuple[int, ...]
    note: str

    @property
    def shape_text(self) -> str:
        """The real shape written like the symbolic one, e.g. ``[1, 196, 768]``."""
        return "[" + ", ".join(str(s) for s in self.shape) + "]"


@torch.no_grad()
def shape_flow(model: VisionTransformer, images: torch.Tensor) -> list[Stage]:
    """Run ``images`` through ``model`` stage by stage and report every intermediate shape.

    The stages are computed with the model's own submodules (no hooks), so the shapes are the
    ones the real forward pass produces; the final logits equal ``model(images)``.
    """
    cfg = model.config
    P = cfg.patch_size
    B, C, H, W = images.shape
    gh, gw = model.grid_for(H, W)
    patches = patchify(images, P)  # (B, N, C*P*P)
    emb = model.patch_embed(images)  # (B, N, D)
    prefix = [model.cls_token.expand(B, -1, -1)]
    if model.dist_token is not None:
        prefix.append(model.dist_token.expand(B, -1, -1))
    with_cls = torch.cat([*prefix, emb], dim=1)  # (B, prefix+N, D)
    x = with_cls + model.pos_embedding_for((gh, gw))  # (B, prefix+N, D)
    x = model.pos_drop(x)
    for block in model.blocks:
        x = block(x)  # (B, T, D)
    tokens = model.norm(x)
    pooled = model.pool(tokens)  # (B, D)
    logits = model.forward_head(tokens)  # (B, C)
    T = with_cls.shape[1]
    pool_name = {"cls": "CLS token", "mean": "mean of patch tokens", "cls+mean": "CLS token and mean patch token"}[
        cfg.pool]
    return [
        Stage("image", "[B, 3, H, W]", tuple(images.shape), f"{H}×{W} pixels, {C} channels"),
        Stage(
            "patches",
            "[B, N, 3·P·P]",
            tuple(patches.shape),
            f"a {gh}×{gw} grid of {P}×{P} patches, each flattened to {C}·{P}·{P} = {C * P * P} numbers",
        ),
        Stage("patch embeddings", "[B, N, D]", tuple(emb.shape), f"each patch mapped linearly to D = {cfg.dim}"),
        Stage("+ CLS", "[B, N+1, D]", tuple(with_cls.shape), f"a learned CLS token in front: T = {T} tokens"
              + (f" (+ {cfg.num_registers} registers after the position embedding)" if cfg.num_registers else "")),
        Stage("+ position", "[B, N+1, D]", tuple(x.shape), "a learned position vector added to every token"),
        Stage(
            "blocks",
            "[B, N+1, D]",
            tuple(tokens.shape),
            f"{cfg.depth} blocks of {cfg.heads}-head attention + MLP; attention maps [B, {cfg.heads}, {T}, {T}]",
        ),
        Stage("CLS", "[B, D]", tuple(pooled.shape), f"the {pool_name}, after the final LayerNorm"),
        Stage("logits", "[B, C]", tuple(logits.shape), f"one score per class ({logits.shape[-1]})")
        if cfg.num_classes else
        Stage("features", "[B, D]", tuple(logits.shape), "no classifier head: the model's output is this feature "
              f"vector (a head can be trained on it in seconds, see the {page_name('teach', False)} page)"),
    ]


def cost_summary(config, image_size: tuple[int, int] | None = None) -> dict[str, float]:
    """Tokens, parameters, multiply-accumulates and attention-map memory of one image."""
    H, W = image_size or config.image_size
    P, D, L, heads = config.patch_size, config.dim, config.depth, config.heads
    N = (H // P) * (W // P)
    T = N + config.num_prefix_tokens
    M = config.mlp_dim
    embed_macs = N * (config.in_channels * P * P) * D
    mixer = mixer_cost(config, T)  # attention: qkv and output projections, q·k and attn·v; or its replacement
    mlp_macs = 2 * T * D * M
    head_macs = config.pool_dim * config.num_classes
    macs = embed_macs + L * (mixer["macs"] + mlp_macs) + head_macs
    params = param_count(config)
    return {
        "tokens": float(T),
        "patches": float(N),
        "params": float(params),
        "gmacs": macs / 1e9,  # what DeiT / timm tables call "GFLOPs" (17.6 for ViT-B/16)
        "gflops": 2.0 * macs / 1e9,
        "attention_share": L * mixer["mixing_macs"] / macs,  # the part that mixes tokens
        "attention_mib": 0.0 if config.token_mixer == "mlp" else L * heads * T * T * 4 / 2**20,  # float32 maps
    }


def param_count(config) -> int:
    """Exact parameter count of ``VisionTransformer(config)`` without building it."""
    return parameter_count(config)
