"""Multi-head self-attention, the token mixer of the paper (eq. 2's MSA), and what all token mixers share.

:class:`TokenMixer` is the base of every mixer (:mod:`vitcore.model.mixers` has the others): one
``forward(x, grid=None, record=None) -> (B, T, D)`` and a probe, a named identity that receives the
(B, H, T, T) mixing matrix, so hooks for teaching attach there. :class:`ProjectedMixer` adds
attention's parameters (a qkv linear and an output projection) with ``split_heads`` /
``merge_heads``; :class:`Attention` is softmax(q k^T / sqrt(d)) v on top of it.

Which path a call takes is read, never switched: the matrix is formed when the config says
``fused_attention=False``, when the call's :class:`~vitcore.model.record.Record` asks for it, or
when a hook waits on the probe (:func:`vitcore.capturing`); otherwise attention runs
``F.scaled_dot_product_attention``, which never materialises it. Both give the same numbers
(within float rounding). To run a model on the other path, make a copy with another config:
``model.with_config(fused_attention=False)`` shares every parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import ViTConfig
from .record import Record, maybe_dropout

__all__ = ["Attention", "AttentionProbe", "ProjectedMixer", "TokenMixer"]


class AttentionProbe(nn.Identity):
    """Identity that receives the mixing matrix (B, H, T, T); capture hooks attach here."""


class TokenMixer(nn.Module):
    """What every token mixer shares: its config, heads, prefix count and the probe.

    Subclasses implement ``forward(x, grid=None, record=None) -> (B, T, D)`` and send their mixing
    matrix through :meth:`expose` whenever they form it. ``has_matrix`` is False for a mixer whose
    mixing is not a matrix (the token-mixing MLP): it never forms one.
    """

    has_matrix = True

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.heads = config.heads
        self.head_dim = config.head_dim
        self.num_prefix_tokens = config.num_prefix_tokens
        self.probe = AttentionProbe()

    def explicit(self, record: Record | None) -> bool:
        """Whether this call forms the (B, H, T, T) matrix: the config says so, the record asks, or a hook waits."""
        return (
            not self.config.fused_attention
            or (record is not None and record.attention)
            or bool(self.probe._forward_hooks or self.probe._forward_pre_hooks)
        )

    def expose(self, matrix: torch.Tensor, record: Record | None) -> torch.Tensor:
        """The matrix (B, H, T, T) through the probe, and into the record when it asks for it."""
        matrix = self.probe(matrix)  # (B, H, T, T)
        if record is not None:
            record.keep_matrix(matrix)
        return matrix


class ProjectedMixer(TokenMixer):
    """A token mixer with attention's parameters: a qkv linear and an output projection."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        self.qkv = nn.Linear(config.dim, 3 * config.dim, bias=config.qkv_bias)
        self.proj = nn.Linear(config.dim, config.dim)
        self.proj_drop = nn.Dropout(config.dropout)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of the tokens x (B, T, D), each (B, H, T, d)."""
        qkv = self.qkv(x)  # (B, T, 3D)
        return rearrange(qkv, "b t (three h d) -> three b h t d", three=3, h=self.heads)  # 3 x (B, H, T, d)

    def merge_heads(self, out: torch.Tensor, record: Record | None = None) -> torch.Tensor:
        """Concatenate the heads (B, H, T, d) and project: (B, T, D)."""
        out = self.proj(rearrange(out, "b h t d -> b t (h d)"))  # (B, T, D)
        return maybe_dropout(self.proj_drop, out, record)  # (B, T, D)


class Attention(ProjectedMixer):
    """Multi-head self-attention softmax(q k^T / sqrt(d)) v, heads kept as their own axis."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        self.scale = self.head_dim**-0.5  # 1 / sqrt(d)
        self.attn_drop = nn.Dropout(config.attention_dropout)

    def attention_matrix(self, q: torch.Tensor, k: torch.Tensor, record: Record | None = None) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) through the probe, (B, H, T, T); rows sum to 1.

        When the record carries a buffer that fits, the softmax is written straight into it. With
        half-precision q and k (a bf16 model) the softmax is computed and returned in float32, so
        the maps' rows sum to 1 as closely as on a float32 model.
        """
        scores = (q @ k.transpose(-2, -1)).mul_(self.scale)  # (B, H, T, T)
        dtype = torch.float32 if scores.dtype in (torch.bfloat16, torch.float16) else scores.dtype
        target = None if record is None else record.softmax_target(scores, dtype)
        attn = torch.softmax(scores, dim=-1, dtype=dtype, out=target) if target is not None else scores.softmax(
            dim=-1, dtype=dtype)  # (B, H, T, T)
        return self.expose(attn, record)  # (B, H, T, T)

    def forward(
        self, x: torch.Tensor, grid: tuple[int, int] | None = None, record: Record | None = None
    ) -> torch.Tensor:
        q, k, v = self.split_heads(x)  # 3 x (B, H, T, d)
        if record is not None:
            record.keep_qkv(q, k, v)
        if self.explicit(record):
            attn = self.attention_matrix(q, k, record)  # (B, H, T, T)
            out = maybe_dropout(self.attn_drop, attn, record).to(v.dtype) @ v  # (B, H, T, d)
        else:
            drop = self.training and (record is None or record.dropout)
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if drop else 0.0)  # (B, H, T, d)
        return self.merge_heads(out, record)  # (B, T, D)
