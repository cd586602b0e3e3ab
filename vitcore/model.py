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

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import ViTConfig

__all__ = [
    "MLP",
    "Attention",
    "AttentionProbe",
    "Block",
    "PatchEmbedding",
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
    pos_embedding: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix: int = 1
) -> torch.Tensor:
    """Resample a (1, prefix+N, D) position embedding to a new patch grid.

    Prefix tokens (CLS, distillation) are kept; the patch part is resampled bicubically over the
    2-D grid (``align_corners=False``, as Hugging Face's ``interpolate_pos_encoding``). Returns
    the input itself when the grid does not change.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embedding
    prefix, patch_pos = pos_embedding[:, :num_prefix], pos_embedding[:, num_prefix:]  # (1, p, D), (1, N, D)
    grid = rearrange(patch_pos, "one (gh gw) d -> one d gh gw", gh=old_grid[0], gw=old_grid[1])  # (1, D, gh, gw)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    patch_pos = rearrange(grid.to(pos_embedding.dtype), "one d gh gw -> one (gh gw) d")  # (1, N', D)
    return torch.cat([prefix, patch_pos], dim=1)  # (1, p+N', D)


# --------------------------------------------------------------------------- attention
class AttentionProbe(nn.Identity):
    """Identity that receives the post-softmax attention (B, H, T, T); capture hooks attach here."""


class Attention(nn.Module):
    """Multi-head self-attention, heads kept as their own axis.

    ``fused=True`` computes the same thing with ``F.scaled_dot_product_attention`` (fast, but
    the matrix is never materialised, so the probe sees nothing on that path).
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5  # 1 / sqrt(d)
        self.fused = config.fused_attention
        self.qkv = nn.Linear(config.dim, 3 * config.dim, bias=config.qkv_bias)
        self.probe = AttentionProbe()
        self.attn_drop = nn.Dropout(config.attention_dropout)
        self.proj = nn.Linear(config.dim, config.dim)
        self.proj_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)  # (B, T, 3D)
        q, k, v = rearrange(qkv, "b t (three h d) -> three b h t d", three=3, h=self.heads)  # 3 x (B, H, T, d)
        if self.fused:
            p = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, T, d)
        else:
            scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, T, T)
            attn = self.probe(scores.softmax(dim=-1))  # (B, H, T, T), rows sum to 1
            out = self.attn_drop(attn) @ v  # (B, H, T, d)
        out = rearrange(out, "b h t d -> b t (h d)")  # (B, T, D)
        return self.proj_drop(self.proj(out))  # (B, T, D)


class MLP(nn.Module):
    """Linear - GELU - Dropout - Linear - Dropout."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.dim, config.mlp_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(config.dropout)
        self.fc2 = nn.Linear(config.mlp_dim, config.dim)
        self.drop2 = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.fc1(x)))  # (B, T, mlp_dim)
        return self.drop2(self.fc2(x))  # (B, T, D)


class Block(nn.Module):
    """One pre-norm encoder block, eq. (2) and (3)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))  # (B, T, D)   z' = MSA(LN(z)) + z
        return x + self.mlp(self.norm2(x))  # (B, T, D)   z  = MLP(LN(z')) + z'


# --------------------------------------------------------------------------- the model
def _trunc_normal(tensor: torch.Tensor, std: float) -> None:
    """Normal(0, std) truncated at two standard deviations (``nn.init`` truncates at +-2 absolute)."""
    nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


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
        self.pos_embedding = nn.Parameter(torch.zeros(1, config.num_prefix_tokens + config.num_patches, D))  # E_pos
        self.pos_drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.head = nn.Linear(D, config.num_classes) if config.num_classes else nn.Identity()
        has_dist_head = config.distilled and config.distilled_head and config.num_classes
        self.head_dist = nn.Linear(D, config.num_classes) if has_dist_head else None
        self.reset_parameters()

    # ---- initialisation -----------------------------------------------------------
    def reset_parameters(self) -> None:
        """Truncated-normal (std 0.02) position embedding and linears, LeCun-normal patch conv."""
        _trunc_normal(self.pos_embedding, 0.02)
        _trunc_normal(self.cls_token, 0.02)
        if self.dist_token is not None:
            _trunc_normal(self.dist_token, 0.02)
        conv = self.patch_embed.proj
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        _trunc_normal(conv.weight, math.sqrt(1.0 / fan_in))
        nn.init.zeros_(conv.bias)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                _trunc_normal(module.weight, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ---- run-time switches ----------------------------------------------------------
    @property
    def fused_attention(self) -> bool:
        """Whether blocks use ``scaled_dot_product_attention`` (True) or the explicit path."""
        return all(block.attn.fused for block in self.blocks)

    @fused_attention.setter
    def fused_attention(self, value: bool) -> None:
        for block in self.blocks:
            block.attn.fused = bool(value)

    @property
    def num_prefix_tokens(self) -> int:
        """CLS (and distillation) tokens in front of the patch tokens."""
        return self.config.num_prefix_tokens

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid for an input of this size."""
        p = self.config.patch_size
        return height // p, width // p

    def pos_embedding_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embedding (1, prefix+N, D) for a patch grid, interpolated if it differs."""
        return interpolate_pos_embedding(self.pos_embedding, self.config.grid_size, grid, self.num_prefix_tokens)

    # ---- forward --------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Eq. (1): patch embeddings with prefix tokens and position embedding, (B, T, D)."""
        _check_images(images, self.config.patch_size, self.config.in_channels)
        B, _, H, W = images.shape
        x = self.patch_embed(images)  # (B, N, D)
        prefix = [self.cls_token.expand(B, -1, -1)]  # (B, 1, D)
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(B, -1, -1))
        x = torch.cat([*prefix, x], dim=1)  # (B, prefix+N, D)
        x = x + self.pos_embedding_for(self.grid_for(H, W))  # (B, prefix+N, D)
        return self.pos_drop(x)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block and the final LayerNorm, (B, T, D)."""
        x = self.embed(images)  # (B, T, D)
        for block in self.blocks:
            x = block(x)  # (B, T, D)
        return self.norm(x)  # (B, T, D)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The representation the head reads: CLS token or mean of patch tokens, (B, D)."""
        if self.config.pool == "mean":
            return tokens[:, self.num_prefix_tokens :].mean(dim=1)  # (B, D)
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
