"""The Vision Transformer of "An Image is Worth 16x16 Words" (Dosovitskiy et al., ICLR 2021).

Equations from Section 3.1 of the paper, with B the batch, N = HW/P^2 the number of patches,
T = 1 + N tokens (CLS first), D the width and H the number of heads:

    z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos          (1)  -> PatchEmbedding + prefix + pos
    z'_l = MSA(LN(z_{l-1})) + z_{l-1}                        (2)  -> Block, first residual
    z_l  = MLP(LN(z'_l)) + z'_l                              (3)  -> Block, second residual
    y    = LN(z_L^0)                                         (4)  -> final norm, CLS, head
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import Attention, AttentionProbe
from .config import ViTConfig
from .mixers import build_mixer
from .record import Record, maybe_dropout

__all__ = [
    "MLP",
    "Attention",
    "AttentionProbe",
    "Block",
    "Intermediates",
    "PatchEmbedding",
    "Record",
    "VisionTransformer",
    "conv_as_linear",
    "interpolate_pos_embedding",
    "patchify",
    "unpatchify",
]


# --------------------------------------------------------------------------- patches
def _floor_to(n: int, p: int) -> int:
    return max(p, n // p * p)


def _check_images(images: torch.Tensor, patch_size: int, channels: int | None = None) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected a 4-D image batch (B, C, H, W), got {shape}; add a batch axis with x[None]")
    _, c, h, w = images.shape
    if channels is not None and c != channels:
        raise ValueError(f"the model expects {channels} channels but the images have {c}; convert them (e.g. to RGB)")
    if h % patch_size or w % patch_size:
        raise ValueError(
            f"image size {h}x{w} is not a multiple of patch size {patch_size}; "
            f"resize or crop to {_floor_to(h, patch_size)}x{_floor_to(w, patch_size)}"
        )


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut (B, C, H, W) images into flattened patches (B, N, C*P*P), row-major over the grid.

    Elements of a patch are ordered (channel, row, column), the order of a Conv2d weight
    (D, C, P, P) flattened, so ``patchify(x) @ W.flatten(1).T`` equals the convolution.
    """
    _check_images(images, patch_size)
    return rearrange(images, "b c (gh p1) (gw p2) -> b (gh gw) (c p1 p2)", p1=patch_size, p2=patch_size)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, C*P*P) back to (B, C, gh*P, gw*P)."""
    gh, gw = grid
    if patches.ndim != 3 or patches.shape[1] != gh * gw or patches.shape[2] != channels * patch_size**2:
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not fit grid {gh}x{gw}, patch size {patch_size} "
            f"and {channels} channels; expected (B, {gh * gw}, {channels * patch_size**2})"
        )
    return rearrange(
        patches, "b (gh gw) (c p1 p2) -> b c (gh p1) (gw p2)", gh=gh, gw=gw, c=channels, p1=patch_size, p2=patch_size
    )


def conv_as_linear(conv: nn.Conv2d) -> nn.Linear:
    """The patch-embedding convolution (kernel = stride = P) as the equivalent ``nn.Linear``.

    Applied to ``patchify(x, P)`` it gives the same (B, N, D) embeddings as the convolution:
    the paper's "flatten the patches and map them with a trainable linear projection E".
    """
    if conv.kernel_size != conv.stride or conv.padding not in ((0, 0), "valid") or conv.groups != 1:
        raise ValueError("only a non-overlapping patch convolution (kernel = stride, no padding) is a linear map")
    out_dim = conv.out_channels
    linear = nn.Linear(conv.weight[0].numel(), out_dim, bias=conv.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.reshape(out_dim, -1))  # (D, C*P*P)
        if conv.bias is not None:
            linear.bias.copy_(conv.bias)
    return linear.to(conv.weight.device, conv.weight.dtype)


class PatchEmbedding(nn.Module):
    """x_p E: a Conv2d with kernel = stride = P, i.e. a linear map of each flattened patch."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.proj = nn.Conv2d(config.in_channels, config.dim, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images)  # (B, D, gh, gw)
        return rearrange(x, "b d gh gw -> b (gh gw) d")  # (B, N, D)


def interpolate_pos_embedding(
    pos_embedding: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix: int = 1,
    antialias: bool = False,
) -> torch.Tensor:
    """Resample a (1, prefix+N, D) position embedding to a new patch grid.

    Prefix tokens (CLS, distillation) are kept; the patch part is resampled bicubically over the
    2-D grid (``align_corners=False``, as Hugging Face's ``interpolate_pos_encoding``; with
    ``antialias=True`` as its DINOv2). Returns the input itself when the grid does not change.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embedding
    prefix, patch_pos = pos_embedding[:, :num_prefix], pos_embedding[:, num_prefix:]  # (1, p, D), (1, N, D)
    grid = rearrange(patch_pos, "one (gh gw) d -> one d gh gw", gh=old_grid[0], gw=old_grid[1])  # (1, D, gh, gw)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=antialias)
    patch_pos = rearrange(grid.to(pos_embedding.dtype), "one d gh gw -> one (gh gw) d")  # (1, N', D)
    return torch.cat([prefix, patch_pos], dim=1)  # (1, p+N', D)


# --------------------------------------------------------------------------- blocks
class MLP(nn.Module):
    """Linear - GELU - Dropout - Linear - Dropout."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.dim, config.mlp_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(config.dropout)
        self.fc2 = nn.Linear(config.mlp_dim, config.dim)
        self.drop2 = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, record: Record | None = None) -> torch.Tensor:
        hidden = self.act(self.fc1(x))  # (B, T, M)
        if record is not None:
            record.keep_hidden(hidden)
        out = self.fc2(maybe_dropout(self.drop1, hidden, record))  # (B, T, D)
        return maybe_dropout(self.drop2, out, record)  # (B, T, D)


class Block(nn.Module):
    """One pre-norm encoder block, eq. (2) and (3)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.attn = build_mixer(config)  # MSA in the paper, or another token mixer
        self.norm2 = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, grid: tuple[int, int] | None = None, record: Record | None = None
    ) -> torch.Tensor:
        """z (B, T, D) -> the next z (B, T, D); ``record`` (optional) says what else to keep and receives it."""
        x = x + self.attn(self.norm1(x), grid, record)  # (B, T, D)   z' = MSA(LN(z)) + z
        return x + self.mlp(self.norm2(x), record)  # (B, T, D)   z  = MLP(LN(z')) + z'


# --------------------------------------------------------------------------- the model
def select_indices(value: int | list[int] | tuple[int, ...] | None, n: int, what: str) -> tuple[int, ...]:
    """Normalise a layer / head selection to sorted unique indices in [0, n)."""
    if value is None:
        return tuple(range(n))
    items = [value] if isinstance(value, int) else list(value)
    out = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"{what} must be integers, got {item!r}")
        if not -n <= item < n:
            raise ValueError(f"{what} {item} is out of range; valid {what} are 0..{n - 1} (or -{n}..-1 from the end)")
        out.add(item % n)
    return tuple(sorted(out))


@dataclass
class Intermediates:
    """What :meth:`VisionTransformer.forward_intermediates` returns (tensors still on the model's device).

    Per-layer lists follow ``layers`` (model block indices, sorted); their tensors are the ones the
    forward pass computed (no copy when all heads are kept), still in the autograd graph when
    grad mode was on.
    """

    grid: tuple[int, int]  # (gh, gw)
    patch_embeddings: torch.Tensor  # (B, N, D) x_p E
    layers: tuple[int, ...]  # blocks whose internals were asked for
    heads: tuple[int, ...]  # heads kept
    tokens: list[torch.Tensor] = field(default_factory=list)  # depth+1 items (B, T, D): z_0 .. z_L
    attention: list[torch.Tensor] = field(default_factory=list)  # per layer (B, H', T, T)
    q: list[torch.Tensor] = field(default_factory=list)  # per layer (B, H', T, d)
    k: list[torch.Tensor] = field(default_factory=list)
    v: list[torch.Tensor] = field(default_factory=list)
    mlp: list[torch.Tensor] = field(default_factory=list)  # per layer (B, T, M)
    features: torch.Tensor | None = None  # (B, T, D) after the final LayerNorm
    logits: torch.Tensor | None = None  # (B, C)


def _trunc_normal(tensor: torch.Tensor, std: float, generator: torch.Generator | None = None) -> None:
    """Normal(0, std) truncated at two standard deviations (``nn.init`` truncates at +-2 absolute)."""
    nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std, generator=generator)


class VisionTransformer(nn.Module):
    """ViT: patch embedding, CLS (+ optional distillation) token, position embedding, blocks, head."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        if not isinstance(config, ViTConfig):
            raise ValueError(f"expected a ViTConfig, got {type(config).__name__}; try ViTConfig.preset('tiny')")
        self.config = config
        D = config.dim
        self.patch_embed = PatchEmbedding(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))  # x_class
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if config.distilled else None
        R = config.num_registers
        self.register_tokens = nn.Parameter(torch.zeros(1, R, D)) if R else None  # no position embedding
        self.pos_embedding = nn.Parameter(torch.zeros(1, config.num_pos_prefix_tokens + config.num_patches, D))  # E_pos
        self.pos_drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.pool_dim, config.num_classes) if config.num_classes else nn.Identity()
        has_dist_head = config.distilled and config.distilled_head and config.num_classes
        self.head_dist = nn.Linear(D, config.num_classes) if has_dist_head else None
        self.reset_parameters()

    # ---- initialisation -----------------------------------------------------------
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Truncated-normal (std 0.02) position embedding and linears, LeCun-normal patch conv.

        Pass a seeded ``torch.Generator`` for reproducible weights without touching the global RNG
        (a server thread must not reseed what other threads draw from).
        """
        for token in (self.pos_embedding, self.cls_token, self.dist_token, self.register_tokens):
            if token is not None:
                _trunc_normal(token, 0.02, generator)
        conv = self.patch_embed.proj
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        _trunc_normal(conv.weight, math.sqrt(1.0 / fan_in), generator)
        nn.init.zeros_(conv.bias)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                _trunc_normal(module.weight, 0.02, generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ---- another config, the same parameters -----------------------------------------
    def with_config(self, **changes: Any) -> VisionTransformer:
        """This model under ``self.config.replace(**changes)``, sharing every parameter and buffer.

        How a model is switched to the explicit attention path (or back): a copy,
        ``model.with_config(fused_attention=False)``, whose parameters *are* this model's (the same
        ``nn.Parameter`` objects: training either trains both). This model is not changed. Submodules
        keep their train / eval mode; hooks stay on this model. Changes that would need other
        parameters (``dim``, ``depth``, ``num_classes``, ...) are refused.
        """
        config = self.config.replace(**changes)
        with torch.device("meta"):  # a skeleton: nothing allocated, no random numbers drawn
            twin = type(self)(config)
        mine = dict(self.named_parameters()) | dict(self.named_buffers())
        theirs = dict(twin.named_parameters()) | dict(twin.named_buffers())
        differ = sorted(name for name in mine.keys() | theirs.keys()
                        if name not in mine or name not in theirs or mine[name].shape != theirs[name].shape)
        if differ:
            raise ValueError(
                f"with_config({', '.join(f'{k}={v!r}' for k, v in changes.items())}) would change the parameters "
                f"{differ[:4]}{' ...' if len(differ) > 4 else ''}; it only changes how the same parameters are "
                "used (e.g. fused_attention, dropout, pool). Build a new VisionTransformer for another shape"
            )
        for name, tensor in mine.items():  # Parameters stay Parameters, buffers stay (non-)persistent
            owner, _, attr = name.rpartition(".")
            setattr(twin.get_submodule(owner), attr, tensor)
        for a, b in zip(twin.modules(), self.modules()):
            a.training = b.training
        return twin

    @property
    def fused_attention(self) -> bool:
        """``config.fused_attention``: whether attention runs ``scaled_dot_product_attention`` when no map is asked."""
        return self.config.fused_attention

    @fused_attention.setter
    def fused_attention(self, value: bool) -> None:
        raise AttributeError(
            "fused_attention lives in the frozen config; make a copy that shares the parameters: "
            f"model = model.with_config(fused_attention={bool(value)})"
        )

    @property
    def num_prefix_tokens(self) -> int:
        """CLS, distillation and register tokens in front of the patch tokens."""
        return self.config.num_prefix_tokens

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid for an input of this size."""
        p = self.config.patch_size
        return height // p, width // p

    def pos_embedding_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embedding (1, CLS/dist + N, D) for a patch grid, interpolated if it differs.

        Registers have no position embedding, so they are not part of it (see
        :meth:`token_pos_embedding` for one row per token).
        """
        cfg = self.config
        antialias = cfg.pos_interpolation == "bicubic_antialias"
        return interpolate_pos_embedding(self.pos_embedding, cfg.grid_size, grid, cfg.num_pos_prefix_tokens, antialias)

    def token_pos_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """What is added to each of the T tokens, (1, T, D): zeros in the register rows."""
        pos = self.pos_embedding_for(grid)  # (1, p+N, D)
        if self.register_tokens is None:
            return pos
        p = self.config.num_pos_prefix_tokens
        zeros = pos.new_zeros(1, self.config.num_registers, pos.shape[-1])  # (1, R, D)
        return torch.cat([pos[:, :p], zeros, pos[:, p:]], dim=1)  # (1, T, D)

    # ---- forward --------------------------------------------------------------------
    def embed_patches(
        self, patch_embeddings: torch.Tensor, grid: tuple[int, int], dropout: bool = True
    ) -> torch.Tensor:
        """Eq. (1) from x_p E (B, N, D): prefix tokens and position embedding, then registers, (B, T, D)."""
        B = patch_embeddings.shape[0]
        prefix = [self.cls_token.expand(B, -1, -1)]  # (B, 1, D)
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(B, -1, -1))  # (B, 1, D)
        x = torch.cat([*prefix, patch_embeddings], dim=1)  # (B, p+N, D)
        x = x + self.pos_embedding_for(grid)  # (B, p+N, D)
        if self.register_tokens is not None:  # registers go after CLS/dist, without a position (Darcet et al.)
            p = self.config.num_pos_prefix_tokens
            registers = self.register_tokens.expand(B, -1, -1)  # (B, R, D)
            x = torch.cat([x[:, :p], registers, x[:, p:]], dim=1)  # (B, T, D)
        return self.pos_drop(x) if dropout else x

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Eq. (1): patch embeddings with prefix tokens and position embedding, (B, T, D)."""
        _check_images(images, self.config.patch_size, self.config.in_channels)
        x = self.patch_embed(images)  # (B, N, D)
        return self.embed_patches(x, self.grid_for(*images.shape[-2:]))  # (B, T, D)

    def forward_blocks(
        self,
        x: torch.Tensor,
        grid: tuple[int, int],
        records: Sequence[Record | None] | None = None,
        tokens: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Eq. (2) and (3) for l = 1..L: z_0 (B, T, D) -> z_L (B, T, D), the one loop over the blocks.

        ``records``: one per block (or None), handed to it; ``tokens``: a list that receives every
        block's input z_0 .. z_{L-1}.
        """
        for i, block in enumerate(self.blocks):
            if tokens is not None:
                tokens.append(x)  # (B, T, D) z_i, the input of block i
            x = block(x, grid, None if records is None else records[i])  # (B, T, D)
        return x

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block and the final LayerNorm, (B, T, D)."""
        x = self.embed(images)  # (B, T, D)
        return self.norm(self.forward_blocks(x, self.grid_for(*images.shape[-2:])))  # (B, T, D)

    def forward_embedded(self, patch_embeddings: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Logits (B, C) from patch embeddings x_p E (B, N, D), e.g. for gradients w.r.t. the embeddings."""
        x = self.embed_patches(patch_embeddings, grid)  # (B, T, D)
        return self.forward_head(self.norm(self.forward_blocks(x, grid)))  # (B, C)

    def forward_intermediates(
        self,
        images: torch.Tensor,
        *,
        layers: int | list[int] | tuple[int, ...] | None = None,
        heads: int | list[int] | tuple[int, ...] | None = None,
        attention: bool = False,
        qkv: bool = False,
        mlp: bool = False,
        head: bool = True,
        dropout: bool = False,
        records: Mapping[int, Record] | None = None,
    ) -> Intermediates:
        """One forward pass that returns every block's tokens and, when asked, its internals.

        Tokens of every block are always returned (they exist anyway). For the blocks in
        ``layers`` (default all; negative counts from the end) the mixing matrix (``attention``,
        computed explicitly), q/k/v (``qkv``) and the MLP hidden activations (``mlp``) are
        returned; the other blocks run the config's path. Only the ``heads`` asked for are kept.
        Nothing on the model is read but its parameters and buffers: no flag is switched, no hook
        is added, so any number of threads may call this on one shared model. Dropout runs only
        with ``dropout=True`` (and the modules in training mode); grad mode is the caller's, so
        ``torch.autograd.grad(score, out.attention)`` gives gradients of the attention maps.

        ``records``: the caller's own :class:`Record` per block index instead of ``layers``,
        ``heads``, ``attention``, ``qkv`` and ``mlp`` (e.g. with buffers the matrices are written
        into, as :func:`vitcore.capture` does); the lists of the result hold what they received.
        """
        _check_images(images, self.config.patch_size, self.config.in_channels)
        depth = len(self.blocks)
        if records is None:
            selected = select_indices(layers, depth, "layers")
            head_ids = select_indices(heads, self.config.heads, "heads")
            if not head_ids:
                raise ValueError("select at least one head (heads=None keeps all)")
            subset = None if len(head_ids) == self.config.heads else head_ids
            records = {i: Record(attention=attention, qkv=qkv, mlp=mlp, heads=subset, dropout=dropout)
                       for i in selected}
        else:
            if layers is not None or heads is not None or attention or qkv or mlp:
                raise ValueError("pass either records or layers / heads / attention / qkv / mlp, not both")
            selected = select_indices(list(records), depth, "layers")
            records = {i % depth: record for i, record in records.items()}
            kept = {record.heads for record in records.values()}
            if len(kept) > 1:
                raise ValueError(f"every record must keep the same heads, got {sorted(map(str, kept))}")
            head_ids = kept.pop() if kept and None not in kept else tuple(range(self.config.heads))
        grid = self.grid_for(*images.shape[-2:])
        patch_embeddings = self.patch_embed(images)  # (B, N, D)
        x = self.embed_patches(patch_embeddings, grid, dropout)  # (B, T, D)
        out = Intermediates(grid=grid, patch_embeddings=patch_embeddings, layers=selected, heads=head_ids)
        plain = Record(dropout=dropout)  # blocks whose internals are not asked for: the config's path
        x = self.forward_blocks(x, grid, [records.get(i, plain) for i in range(depth)], out.tokens)  # (B, T, D)
        out.tokens.append(x)  # (B, T, D) z_L
        for record in (records[i] for i in selected):
            if record.matrix is not None:
                out.attention.append(record.matrix)  # (B, H', T, T)
            if record.q is not None:
                out.q.append(record.q)  # (B, H', T, d)
                out.k.append(record.k)
                out.v.append(record.v)
            if record.hidden is not None:
                out.mlp.append(record.hidden)  # (B, T, M)
        out.features = self.norm(x)  # (B, T, D)
        out.logits = self.forward_head(out.features) if head else None  # (B, C)
        return out

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The representation the head reads: CLS token or mean of patch tokens, (B, D); both, (B, 2D)."""
        if self.config.pool == "mean":
            return tokens[:, self.num_prefix_tokens :].mean(dim=1)  # (B, D)
        if self.config.pool == "cls+mean":
            return torch.cat([tokens[:, 0], tokens[:, self.num_prefix_tokens :].mean(dim=1)], dim=-1)  # (B, 2D)
        return tokens[:, 0]  # (B, D)

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Eq. (4) onwards: pooled token through the linear head, (B, C)."""
        logits = self.head(self.pool(tokens))  # (B, C)
        if self.head_dist is not None:
            # DeiT inference: average the class head and the distillation head.
            logits = (logits + self.head_dist(tokens[:, 1])) / 2  # (B, C)
        return logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) with H, W multiples of P -> logits (B, C)."""
        return self.forward_head(self.forward_features(images))
