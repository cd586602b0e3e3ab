"""Alternatives to softmax attention as the token mixer of a ViT block.

A block computes ``z' = mixer(LN(z)) + z``; the paper's mixer is multi-head softmax attention
(:class:`vitcore.model.Attention`). ``ViTConfig(token_mixer=...)`` swaps it for one of these,
each its own small module:

    ==========  ================================================  ==========================
    name        mixing of T tokens (B batch, H heads, d = D / H)  cost in T
    ==========  ================================================  ==========================
    attention   softmax(q k^T / sqrt(d)) v                         T^2 (vitcore.model)
    linear      phi(q) (phi(k)^T v) / phi(q) sum_j phi(k_j)        T     (Katharopoulos 2020)
    retention   (q k^T / sqrt(d) * decay^distance) v               T^2   (after RetNet 2023)
    pooling     avg_pool3x3(x) - x                                 T     (PoolFormer 2022)
    mlp         W2 GELU(W1 x^T), across tokens                     T * D (MLP-Mixer 2021)
    ==========  ================================================  ==========================

Every mixer is a :class:`~vitcore.model.TokenMixer` with one ``forward(x, grid=None, record=None)
-> (B, T, D)``. When the mixing is a matrix M with ``out = proj(M @ values)`` (all but the MLP,
whose mixing is not linear) it is formed when the call is explicit (``fused_attention=False`` in
the config, a :class:`~vitcore.model.Record` asking for it, or a hook on the probe) and sent through
``self.probe``, an :class:`~vitcore.model.AttentionProbe`, so ``forward_intermediates``,
:func:`vitcore.capture` and hooks see "who mixes with whom" for every mixer. Otherwise each takes
its fast path, which gives the same output without forming the (B, H, T, T) matrix where it can.

Prefix tokens (CLS, distillation token, registers: ``config.num_prefix_tokens``) have no place
on the patch grid. Pooling gives each of them a global-average row (the mean of all patch tokens),
as PoolFormer's classifier reads the global average; retention puts them at distance 0 from
every token, so they send and receive without decay. The patch tokens keep their 2-D neighbourhood.

:func:`mixer_cost` gives the parameters and multiply-accumulates of one mixer for T tokens, the
term that ``param_count`` / ``cost_summary`` need per block.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import Attention, ProjectedMixer, TokenMixer
from .config import TOKEN_MIXERS, ViTConfig
from .record import Record, maybe_dropout

__all__ = [
    "MIXER_LABELS",
    "LinearAttention",
    "PoolingMixer",
    "Retention",
    "TokenMixingMLP",
    "build_mixer",
    "mixer_cost",
    "resolve_grid",
    "retention_decays",
]

# What the app shows next to each value of ViTConfig.token_mixer.
MIXER_LABELS: dict[str, str] = {
    "attention": "Softmax attention (ViT, Dosovitskiy et al. 2021)",
    "linear": "Linear attention, elu+1 features (Katharopoulos et al. 2020)",
    "retention": "Retention with a 2-D distance decay (after RetNet, Sun et al. 2023)",
    "pooling": "Average pooling minus identity (PoolFormer, Yu et al. 2022)",
    "mlp": "Token-mixing MLP (MLP-Mixer, Tolstikhin et al. 2021)",
}
assert tuple(MIXER_LABELS) == TOKEN_MIXERS


def resolve_grid(config: ViTConfig, tokens: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    """The patch grid (gh, gw) of a sequence of ``tokens`` tokens (prefix tokens first).

    ``grid=None`` means the config's grid when the count fits, else a square grid.
    """
    n = tokens - config.num_prefix_tokens
    if grid is not None:
        gh, gw = int(grid[0]), int(grid[1])
        if gh * gw != n:
            raise ValueError(
                f"grid {gh}x{gw} has {gh * gw} patches but the sequence has {n} patch tokens "
                f"({tokens} tokens minus {config.num_prefix_tokens} prefix tokens)"
            )
        return gh, gw
    if n == config.num_patches:
        return config.grid_size
    side = math.isqrt(max(n, 0))
    if side * side == n:
        return side, side
    raise ValueError(f"{n} patch tokens do not form a square grid; pass grid=(gh, gw)")


def _grid_coordinates(grid: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column (N,) of every patch token, row-major as ``patchify`` orders them."""
    gh, gw = grid
    rows = torch.arange(gh, device=device).repeat_interleave(gw)  # (N,)
    cols = torch.arange(gw, device=device).repeat(gh)  # (N,)
    return rows, cols


# --------------------------------------------------------------------------- linear attention
class LinearAttention(ProjectedMixer):
    """Linear attention of Katharopoulos et al. 2020, "Transformers are RNNs" (ICML), eq. (4)-(6).

    The softmax similarity exp(q.k) is replaced by a kernel phi(q).phi(k) with the feature map
    phi(x) = elu(x) + 1 (positive, so every weight is positive). Because

        out_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j)
              = phi(q_i)^T (sum_j phi(k_j) v_j^T) / phi(q_i)^T (sum_j phi(k_j)),

    the d x d summary ``sum_j phi(k_j) v_j^T`` is built once and every query reads it: time and
    memory grow linearly with T. The T x T matrix A_ij = phi(q_i).phi(k_j) / sum_j' phi(q_i).phi(k_j')
    still exists implicitly (rows sum to 1); an explicit call forms it (the quadratic form), only when asked.
    There is no attention dropout (the fast path never forms the matrix).
    """

    @staticmethod
    def feature_map(x: torch.Tensor) -> torch.Tensor:
        """phi(x) = elu(x) + 1 > 0."""
        return F.elu(x) + 1.0

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """phi(q), phi(k), v of the tokens x (B, T, D), each (B, H, T, d)."""
        q, k, v = self.split_heads(x)  # 3 x (B, H, T, d)
        return self.feature_map(q), self.feature_map(k), v

    def forward(
        self, x: torch.Tensor, grid: tuple[int, int] | None = None, record: Record | None = None
    ) -> torch.Tensor:
        q, k, v = self.features(x)  # 3 x (B, H, T, d)
        if self.explicit(record):  # the quadratic form, through the implicit matrix
            similarity = q @ k.transpose(-2, -1)  # (B, H, T, T)  phi(q_i).phi(k_j) > 0
            matrix = self.expose(similarity / similarity.sum(dim=-1, keepdim=True), record)  # (B, H, T, T)
            return self.merge_heads(matrix @ v, record)  # (B, T, D)
        kv = torch.einsum("bhtd,bhte->bhde", k, v)  # (B, H, d, d)  sum_j phi(k_j) v_j^T
        z = k.sum(dim=2)  # (B, H, d)  sum_j phi(k_j)
        numerator = torch.einsum("bhtd,bhde->bhte", q, kv)  # (B, H, T, d)
        denominator = torch.einsum("bhtd,bhd->bht", q, z)  # (B, H, T)
        return self.merge_heads(numerator / denominator[..., None], record)  # (B, T, D)


# --------------------------------------------------------------------------- retention
def retention_decays(heads: int) -> list[float]:
    """Per-head decay gamma_h = 1 - 2^-(1+h): 0.5 (local) for head 0, nearer 1 (global) for later heads.

    RetNet uses 1 - 2^-(5+h) for text sequences of thousands of tokens; a ViT grid is 4 to 40
    patches across, so the exponents start at 1 to make the first heads local on such grids.
    """
    return [1.0 - 2.0 ** -(1 + h) for h in range(heads)]


class Retention(ProjectedMixer):
    """Parallel retention with a per-head decay over 2-D patch distance (after RetNet, Sun et al. 2023).

    RetNet's parallel form (eq. 5, section 2.4) is ``(Q K^T * D) V`` with D_nm = gamma^(n-m), a
    fixed per-head decay instead of a softmax. For images the decay runs over the Manhattan
    distance on the patch grid in both directions, D_nm = gamma_h^(|row_n - row_m| + |col_n - col_m|)
    (as RMT, Fan et al. 2024, does); prefix tokens are at distance 0 from everyone. RetNet's
    score normalisation is kept: q is scaled by 1/sqrt(d), D's rows are divided by
    sqrt(sum_m D_nm), and each row of R = Q K^T * D by max(|sum_m R_nm|, 1). The result M is the
    decay-weighted matrix the probe shows and ``out = proj(M V)``. RetNet's GroupNorm, swish gate
    and xPos rotation are left out, so the module has attention's parameters exactly.

    :meth:`forward_recurrent` is the recurrent form for a 1-D ordering (grid 1 x N): a state
    S_n = gamma S_(n-1) + k_n^T v_n scanned forwards and one scanned backwards. It gives the same
    output as the parallel form and shows why retention can run as an RNN.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        self.decays = retention_decays(config.heads)
        self.scale = self.head_dim**-0.5

    def distance(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Manhattan grid distance (T, T) between tokens; 0 for pairs involving a prefix token."""
        rows, cols = _grid_coordinates(grid, device)  # (N,), (N,)
        patch = (rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()  # (N, N)
        p = self.num_prefix_tokens
        return F.pad(patch, (p, 0, p, 0))  # (T, T)

    def decay(self, grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """RetNet's normalised decay D~ (H, T, T): gamma_h^distance, rows divided by sqrt of their sum."""
        gamma = torch.tensor(self.decays, device=device, dtype=dtype)[:, None, None]  # (H, 1, 1)
        decay = gamma ** self.distance(grid, device).to(dtype)  # (H, T, T)
        return decay / decay.sum(dim=-1, keepdim=True).sqrt()  # (H, T, T)

    def retention_matrix(self, q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """M = R / max(|row sum of R|, 1) with R = (q k^T / sqrt(d)) * D~, (B, H, T, T)."""
        scores = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, T, T)
        weighted = scores * self.decay(grid, q.device, q.dtype)  # (B, H, T, T)
        return weighted / weighted.sum(dim=-1, keepdim=True).abs().clamp(min=1.0)  # (B, H, T, T)

    def forward(
        self, x: torch.Tensor, grid: tuple[int, int] | None = None, record: Record | None = None
    ) -> torch.Tensor:
        grid = resolve_grid(self.config, x.shape[1], grid)
        q, k, v = self.split_heads(x)  # 3 x (B, H, T, d)
        matrix = self.expose(self.retention_matrix(q, k, grid), record)  # (B, H, T, T), formed on every path
        return self.merge_heads(matrix @ v, record)  # (B, T, D)

    def forward_recurrent(self, x: torch.Tensor) -> torch.Tensor:
        """The same output as ``forward(x, grid=(1, N))``, computed token by token with d x d states."""
        q, k, v = self.split_heads(x)  # 3 x (B, H, T, d)
        q = q * self.scale
        B, H, T, d = q.shape
        p = self.num_prefix_tokens
        N = T - p
        gamma = torch.tensor(self.decays, dtype=x.dtype, device=x.device)[None, :, None]  # (1, H, 1)
        kv = k[..., :, None] * v[..., None, :]  # (B, H, T, d, d)  k_n^T v_n
        prefix_kv, prefix_k = kv[:, :, :p].sum(dim=2), k[:, :, :p].sum(dim=2)  # seen by all, undecayed

        def scan(order: range) -> tuple[list, list, list]:
            state = kv.new_zeros(B, H, d, d)  # S_n = gamma S_(n-1) + k_n^T v_n
            key_sum = k.new_zeros(B, H, d)  # s_n = gamma s_(n-1) + k_n, for the row sum of R
            count = torch.zeros(1, H, 1, dtype=x.dtype, device=x.device)  # a_n = gamma a_(n-1) + 1, row sum of D
            states, sums, counts = [None] * N, [None] * N, [None] * N
            for n in order:
                state = gamma[..., None] * state + kv[:, :, p + n]
                key_sum = gamma * key_sum + k[:, :, p + n]
                count = gamma * count + 1
                states[n], sums[n], counts[n] = state, key_sum, count
            return states, sums, counts

        fwd, bwd = scan(range(N)), scan(range(N - 1, -1, -1))
        rows = []
        everything, every_key = kv.sum(dim=2), k.sum(dim=2)  # prefix rows: every token, no decay
        for _ in range(p):
            rows.append((everything, every_key, torch.full_like(gamma, float(T))))
        for n in range(N):  # both directions counted the token itself once each: subtract it once
            state = fwd[0][n] + bwd[0][n] - kv[:, :, p + n] + prefix_kv
            key_sum = fwd[1][n] + bwd[1][n] - k[:, :, p + n] + prefix_k
            rows.append((state, key_sum, fwd[2][n] + bwd[2][n] - 1 + p))
        out = []
        for t, (state, key_sum, count) in enumerate(rows):
            qt = q[:, :, t]  # (B, H, d)
            norm = count.sqrt()  # (1, H, 1) sqrt of the row sum of D
            numerator = torch.einsum("bhd,bhde->bhe", qt, state) / norm  # (B, H, d)
            row_sum = (qt * key_sum).sum(dim=-1, keepdim=True) / norm  # (B, H, 1)
            out.append(numerator / row_sum.abs().clamp(min=1.0))
        return self.merge_heads(torch.stack(out, dim=2))  # (B, T, D)


# --------------------------------------------------------------------------- pooling
class PoolingMixer(TokenMixer):
    """PoolFormer's token mixer (Yu et al. 2022, "MetaFormer Is Actually What You Need for Vision", eq. 4).

    ``AvgPool(x) - x``: each patch token becomes the mean of its 3 x 3 neighbourhood on the grid
    (padding not counted, so border rows also average real tokens), minus itself, because the block
    adds x back through the residual. No parameters. The mixing is a fixed matrix P - I whose P has
    rows summing to 1; every head sees the same one. Prefix tokens get the global average of the
    patch tokens as their row (and appear in no patch's window).
    """

    pool_size = 3

    def pooling_matrix(self, grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """P (T, T) before the identity is subtracted; every row sums to 1."""
        rows, cols = _grid_coordinates(grid, device)  # (N,), (N,)
        reach = self.pool_size // 2
        near = ((rows[:, None] - rows[None, :]).abs() <= reach) & ((cols[:, None] - cols[None, :]).abs() <= reach)
        window = near.to(dtype)  # (N, N)
        window = window / window.sum(dim=-1, keepdim=True)  # (N, N)
        p, N = self.num_prefix_tokens, window.shape[0]
        top = torch.cat([torch.zeros(p, p, device=device, dtype=dtype),
                         torch.full((p, N), 1.0 / N, device=device, dtype=dtype)], dim=1)  # (p, T) global average
        bottom = F.pad(window, (p, 0))  # (N, T)
        return torch.cat([top, bottom], dim=0)  # (T, T)

    def forward(
        self, x: torch.Tensor, grid: tuple[int, int] | None = None, record: Record | None = None
    ) -> torch.Tensor:
        grid = resolve_grid(self.config, x.shape[1], grid)
        if self.explicit(record):  # the fixed matrix P - I, expanded to (B, H, T, T) (a view, no copies)
            B, T, _ = x.shape
            fixed = self.pooling_matrix(grid, x.device, x.dtype) - torch.eye(T, device=x.device, dtype=x.dtype)
            matrix = self.expose(fixed.expand(B, self.heads, T, T), record)  # (B, H, T, T)
            values = rearrange(x, "b t (h d) -> b h t d", h=self.heads)  # (B, H, T, d): the tokens themselves
            return rearrange(matrix @ values, "b h t d -> b t (h d)")  # (B, T, D)
        p = self.num_prefix_tokens
        gh, gw = grid
        patches = rearrange(x[:, p:], "b (gh gw) d -> b d gh gw", gh=gh, gw=gw)  # (B, D, gh, gw)
        pooled = F.avg_pool2d(patches, self.pool_size, stride=1, padding=self.pool_size // 2,
                              count_include_pad=False)  # (B, D, gh, gw)
        pooled = rearrange(pooled, "b d gh gw -> b (gh gw) d")  # (B, N, D)
        prefix = x[:, p:].mean(dim=1, keepdim=True).expand(-1, p, -1)  # (B, p, D) global average
        return torch.cat([prefix, pooled], dim=1) - x  # (B, T, D)


# --------------------------------------------------------------------------- token-mixing MLP
class TokenMixingMLP(TokenMixer):
    """The token-mixing MLP of MLP-Mixer (Tolstikhin et al. 2021, eq. 1): an MLP across tokens.

    Every channel is mixed over the token axis by the same MLP, T -> D_S -> T with a GELU, and
    D_S = D / 2 (Mixer-S and Mixer-B use D_S = C / 2). Its weights have one row per token, so
    **the module is tied to a fixed token count** T = prefix + N of ``config.image_size``: another
    input size raises a ValueError (no interpolation exists for these weights). The mixing is not
    a matrix (it is nonlinear), so no record ever receives one (``has_matrix = False``).
    """

    has_matrix = False

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        self.tokens = config.num_prefix_tokens + config.num_patches
        self.hidden = token_mlp_width(config)
        self.fc1 = nn.Linear(self.tokens, self.hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(self.hidden, self.tokens)
        self.drop = nn.Dropout(config.dropout)

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[1] != self.tokens:
            h, w = self.config.image_size
            raise ValueError(
                f"the MLP-Mixer token mixer is tied to {self.tokens} tokens ({h}x{w} images at patch size "
                f"{self.config.patch_size}) but got {x.shape[1]}; resize the input to {h}x{w} or use another mixer"
            )

    def forward(
        self, x: torch.Tensor, grid: tuple[int, int] | None = None, record: Record | None = None
    ) -> torch.Tensor:
        self._check(x)  # no grid needed, only the token count
        y = rearrange(x, "b t d -> b d t")  # (B, D, T): each channel is a sequence over tokens
        y = self.act(self.fc1(y))  # (B, D, D_S)
        y = self.fc2(maybe_dropout(self.drop, y, record))  # (B, D, T)
        y = rearrange(y, "b d t -> b t d")  # (B, T, D)
        return maybe_dropout(self.drop, y, record)  # (B, T, D)


def token_mlp_width(config: ViTConfig) -> int:
    """D_S, the hidden width of the token-mixing MLP: D / 2 (MLP-Mixer's Table 1)."""
    return max(1, config.dim // 2)


_MIXERS: dict[str, type[TokenMixer]] = {  # the one registry of token mixers, in TOKEN_MIXERS order
    "attention": Attention,
    "linear": LinearAttention,
    "retention": Retention,
    "pooling": PoolingMixer,
    "mlp": TokenMixingMLP,
}


def build_mixer(config: ViTConfig) -> TokenMixer:
    """The token mixer ``config.token_mixer`` names: the one factory every block uses."""
    if config.token_mixer not in _MIXERS:
        raise ValueError(f"token_mixer={config.token_mixer!r} is unknown; choose one of {list(TOKEN_MIXERS)}")
    return _MIXERS[config.token_mixer](config)


# --------------------------------------------------------------------------- cost
def mixer_cost(config: ViTConfig, tokens: int | None = None) -> dict[str, int]:
    """Parameters and multiply-accumulates of one token mixer for ``tokens`` tokens (default: the config's T).

    Returns ``params``, ``macs`` (everything, projections included) and ``mixing_macs`` (the part
    that combines tokens: q k^T and M v for attention and retention, the d x d summaries for linear
    attention, the window sums for pooling, the token MLP). As in DeiT / timm tables only
    matrix products count; softmax, decay and normalisation are left out, except pooling's
    additions, counted one per MAC (it would read 0 otherwise). The MLP mixer's count is for
    its fixed T whatever ``tokens`` says (it cannot run on another).
    """
    name = config.token_mixer
    if name not in TOKEN_MIXERS:
        raise ValueError(f"token_mixer={name!r} is unknown; choose one of {list(TOKEN_MIXERS)}")
    T = config.num_prefix_tokens + config.num_patches if tokens is None or name == "mlp" else int(tokens)
    D, d = config.dim, config.head_dim
    projection_params = 3 * D * D + (3 * D if config.qkv_bias else 0) + D * D + D
    projection_macs = T * 3 * D * D + T * D * D
    if name in ("attention", "retention"):
        mixing = 2 * T * T * D  # q k^T and M v, over all heads
        params = projection_params
    elif name == "linear":
        mixing = 2 * T * D * d + T * D  # sum_j phi(k_j) v_j^T, phi(q) times it, phi(q) . sum_j phi(k_j)
        params = projection_params
    elif name == "pooling":
        N = T - config.num_prefix_tokens
        window = min(PoolingMixer.pool_size**2, N)
        mixing = (N * window + config.num_prefix_tokens * N) * D  # window sums, global averages
        params, projection_macs = 0, 0
    else:  # mlp
        S = token_mlp_width(config)
        mixing = 2 * D * T * S  # T -> D_S -> T for each of the D channels
        params = T * S + S + S * T + T
        projection_macs = 0
    return {"params": params, "macs": projection_macs + mixing, "mixing_macs": mixing}
