"""Multi-head self-attention, the token mixer of the paper (eq. 2's MSA), and its probe.

The probe is a named identity that receives the post-softmax matrix (B, H, T, T): hooks for
teaching attach there, and every other token mixer (vitcore.model.mixers) sends its mixing
matrix through one too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import ViTConfig

__all__ = ["Attention", "AttentionProbe"]


class AttentionProbe(nn.Identity):
    """Identity that receives the post-softmax attention (B, H, T, T); capture hooks attach here."""


class Attention(nn.Module):
    """Multi-head self-attention, heads kept as their own axis.

    ``fused=True`` computes the same thing with ``F.scaled_dot_product_attention`` (fast, but
    the matrix is never materialised, so the probe sees nothing on that path).
    :meth:`forward_explicit` always takes the explicit path and returns the matrix; it reads no
    flag, so many threads may call it on one shared module.
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

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of the tokens x (B, T, D), each (B, H, T, d)."""
        qkv = self.qkv(x)  # (B, T, 3D)
        return rearrange(qkv, "b t (three h d) -> three b h t d", three=3, h=self.heads)  # 3 x (B, H, T, d)

    def attention_matrix(self, q: torch.Tensor, k: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) through the probe, (B, H, T, T); rows sum to 1.

        ``out`` (B, H, T, T) receives the softmax directly (capture's preallocated slab: no copy).
        """
        scores = (q @ k.transpose(-2, -1)).mul_(self.scale)  # (B, H, T, T)
        if out is None or torch.is_grad_enabled():
            return self.probe(scores.softmax(dim=-1))  # (B, H, T, T)
        return self.probe(torch.softmax(scores, dim=-1, out=out))  # (B, H, T, T), written into the slab

    def merge_heads(self, out: torch.Tensor, dropout: bool = True) -> torch.Tensor:
        """Concatenate the heads (B, H, T, d) and project: (B, T, D)."""
        out = self.proj(rearrange(out, "b h t d -> b t (h d)"))  # (B, T, D)
        return self.proj_drop(out) if dropout else out

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        q, k, v = self.split_heads(x)  # 3 x (B, H, T, d)
        if self.fused:
            p = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, T, d)
        else:
            out = self.attn_drop(self.attention_matrix(q, k)) @ v  # (B, H, T, d)
        return self.merge_heads(out)  # (B, T, D)

    def forward_explicit(
        self,
        x: torch.Tensor,
        grid: tuple[int, int] | None = None,
        dropout: bool = False,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Output (B, T, D), attention (B, H, T, T) and (q, k, v), each (B, H, T, d), on the explicit path.

        ``out``: where to write the attention (B, H, T, T) (no grad mode only).
        """
        q, k, v = self.split_heads(x)  # 3 x (B, H, T, d)
        attn = self.attention_matrix(q, k, out)  # (B, H, T, T)
        out = (self.attn_drop(attn) if dropout else attn) @ v  # (B, H, T, d)
        return self.merge_heads(out, dropout), attn, (q, k, v)
