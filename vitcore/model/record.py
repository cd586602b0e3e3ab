"""What one call of a block keeps besides its output: the caller asks, the modules fill in.

    record = Record(attention=True, mlp=True)
    x = block(x, grid, record)     # the same forward as block(x, grid), and also:
    record.matrix                  # (B, H, T, T) the mixing matrix, as the probe saw it
    record.hidden                  # (B, T, M) the MLP activations after GELU

Every module has one ``forward(x, grid=None, record=None)``. Without a record (or with one that
asks for no matrix) attention takes the path the config names (``fused_attention``); a record that
asks for the matrix makes that one call explicit, and so does a hook on the probe. A record
belongs to one call of one block: it holds nothing of the model, so any number of threads may pass
their own records to one shared model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Record", "maybe_dropout"]


@dataclass(eq=False)
class Record:
    """Asked for (first group) and received (second group) by one block call.

    ``out`` is a buffer the caller owns (:func:`vitcore.capture` allocates one slab for all layers
    and hands each record its slice): the matrix of this call is written there, of the buffer's
    dtype and only its ``heads``. When the buffer fits the full matrix exactly (all heads, the
    same dtype, no autograd graph) the softmax writes straight into it, with no copy.
    """

    attention: bool = False  # keep the mixing matrix (the call takes the explicit path)
    qkv: bool = False  # keep q, k, v (attention only)
    mlp: bool = False  # keep the MLP hidden activations after GELU
    heads: tuple[int, ...] | None = None  # keep only these heads of the matrix and of q, k, v (None: all)
    dropout: bool = False  # apply dropout as a plain forward would (with the modules in training mode)
    out: torch.Tensor | None = None  # (B, H', T, T) where the matrix goes; a detached copy of it

    matrix: torch.Tensor | None = None  # (B, H', T, T) filled in when attention=True and the mixer has one
    q: torch.Tensor | None = None  # (B, H', T, d) filled in when qkv=True
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    hidden: torch.Tensor | None = None  # (B, T, M) filled in when mlp=True

    def softmax_target(self, scores: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        """``out`` when softmax(scores) may be written into it directly (same shape, no graph).

        ``dtype`` is the dtype the softmax computes in (default: the scores'); ``out`` must have it.
        """
        out = self.out
        if (
            out is None or not self.attention or out.shape != scores.shape or out.dtype != (dtype or scores.dtype)
            or out.device != scores.device or (scores.requires_grad and torch.is_grad_enabled())
        ):
            return None
        return out

    def keep_matrix(self, matrix: torch.Tensor) -> None:
        """Receive the mixing matrix (B, H, T, T) if it was asked for."""
        if not self.attention:
            return
        if self.out is None:
            self.matrix = self._heads(matrix)  # (B, H', T, T)
            return
        if matrix.data_ptr() != self.out.data_ptr():  # not already written there by the softmax
            if self.heads is None:
                self.out.copy_(matrix.detach())
            else:  # one copy per kept head, no temporary of the selection
                for j, h in enumerate(self.heads):
                    self.out[:, j].copy_(matrix[:, h].detach())
        self.matrix = self.out

    def keep_qkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Receive q, k, v, each (B, H, T, d), if they were asked for."""
        if self.qkv:
            self.q, self.k, self.v = self._heads(q), self._heads(k), self._heads(v)

    def keep_hidden(self, hidden: torch.Tensor) -> None:
        """Receive the MLP hidden activations (B, T, M) if they were asked for."""
        if self.mlp:
            self.hidden = hidden

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.heads is None else t[:, list(self.heads)]  # (B, H', ...)


def maybe_dropout(module: nn.Dropout, x: torch.Tensor, record: Record | None) -> torch.Tensor:
    """``module(x)``, unless the call's record asks for no dropout."""
    return module(x) if record is None or record.dropout else x
