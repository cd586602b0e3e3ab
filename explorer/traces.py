"""What the pages compute from a model and an image: traces, per-query maps, attention arithmetic.

The shared (cached) model is only read: captures use ``forward_intermediates`` (no flag, no hook,
no copy), everything else works on detached tensors.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from explorer.models import LoadedModel
from explorer.pipeline import cost_summary
from vitcore import VisionTransformer, ViTConfig, conv_as_linear, patchify
from vitcore.model.config import valid_patch_sizes

__all__ = [
    "trace_image",
    "layer_qkv",
    "rollout_map",
    "distance_map",
    "query_maps",
    "mask_shares",
    "AttentionSteps",
    "attention_steps",
    "conv_linear_difference",
    "patch_size_rows",
    "valid_patch_sizes",
    "measure_latency_ms",
    "occlusion_effect",
]


def trace_image(loaded: LoadedModel, x: torch.Tensor, *, qkv: bool = True,
                attention_dtype: torch.dtype = torch.float32):
    """Capture of ``x`` with every layer's attention (and q/k/v with ``qkv``); the shared model is only read.

    The maps are written into ``attention_dtype`` one layer at a time (:func:`vitcore.capture`), so
    the peak is the packed maps plus one layer in float32 (0.9 GB for tiny at P=4 in float16, where
    every layer in float32 first would take 2.3 GB). The Attention page asks for q/k/v of one layer
    on demand (:func:`layer_qkv`).
    """
    from explorer.fastpath import existing
    from vitcore.inspect.capture import capture

    path = existing(loaded)  # the fast path, where one was warmed up and passed its fidelity check
    model = loaded.model if path is None else path.model_for(x)
    return capture(model, x, qkv=qkv, attention_dtype=attention_dtype)


def layer_qkv(loaded: LoadedModel, x: torch.Tensor, layer: int, head: int):
    """q, k, v and the float32 map of one layer and head only (what the arithmetic needs), (1, 1, 1, T, ·)."""
    from vitcore.inspect.capture import capture

    return capture(loaded.model, x, layers=[layer], heads=[head], qkv=True)


def mask_shares(maps: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, float]:
    """Share of each map's positive mass inside an object mask (chance = the mask's area)."""
    from vitcore.inspect.analysis import attention_mass_in_mask

    mask_t = torch.as_tensor(np.asarray(mask, dtype=bool))
    return {name: float(attention_mass_in_mask(torch.as_tensor(np.asarray(m)), mask_t)) for name, m in maps.items()}


def query_maps(trace, layer: int, query: int | None) -> np.ndarray:
    """Every head's attention from one query token over the patch grid, (H, gh, gw).

    ``query`` is a patch index (0..N-1), or None for the CLS token.
    """
    prefix = trace.num_prefix_tokens
    gh, gw = trace.grid
    row = 0 if query is None else prefix + int(query)
    maps = trace.attention[trace.layer_slot(layer), 0, :, row, prefix:].float()  # (H, N): one row, not (H, T, T)
    return maps.reshape(-1, gh, gw).numpy()


@dataclass(frozen=True)
class AttentionSteps:
    """The attention arithmetic for one query and head, with real numbers."""

    scale: float  # 1 / sqrt(d)
    scores: np.ndarray  # (T,) q·k / sqrt(d)
    weights: np.ndarray  # (T,) softmax of the scores
    output: np.ndarray  # (d,) sum_j weights_j v_j
    captured_weights: np.ndarray  # (T,) the probe's row, for comparison
    top: list[tuple[int, float, float]]  # (token, score, weight) of the largest weights


def attention_steps(trace, layer: int, head: int, query_token: int, top: int = 5) -> AttentionSteps:
    """Recompute one attention row from captured q, k, v: q·k/√d, softmax, weighted sum of v.

    ``trace`` holds q/k/v of model block ``layer`` and head ``head``: a full capture with
    ``qkv=True``, or the one-layer, one-head capture of :func:`layer_qkv`.
    """
    if trace.q is None:
        raise ValueError("this trace has no q/k/v; capture with qkv=True (or use layer_qkv for one layer)")
    slot = trace.layer_slot(layer)
    if head not in trace.heads:
        raise ValueError(f"head {head} was not captured; this trace holds heads {list(trace.heads)}")
    h = trace.heads.index(head)
    q = trace.q[slot, 0, h, query_token].double()  # (d,)
    k = trace.k[slot, 0, h].double()  # (T, d)
    v = trace.v[slot, 0, h].double()  # (T, d)
    scale = q.shape[-1] ** -0.5
    scores = (k @ q) * scale  # (T,)
    weights = scores.softmax(dim=-1)  # (T,)
    output = weights @ v  # (d,)
    order = torch.argsort(weights, descending=True)[:top]
    return AttentionSteps(
        scale=scale,
        scores=scores.numpy(),
        weights=weights.numpy(),
        output=output.numpy(),
        captured_weights=trace.attention[slot, 0, h, query_token].double().numpy(),
        top=[(int(i), float(scores[i]), float(weights[i])) for i in order],
    )


@torch.no_grad()
def rollout_map(trace, head_fusion: str = "mean", discard_ratio: float = 0.0) -> np.ndarray:
    """:func:`vitcore.inspect.analysis.attention_rollout` of one image, (gh, gw), one layer at a time.

    Only row 0 (CLS) of R = Ã_L ... Ã_1 is needed, so it is carried as a vector from the last
    layer down, v ← v Ã_l: T² work and one layer's float64 matrix in memory instead of every
    layer's (T³ and L·T² float64 for the full product; 9.4e8 bytes at 3,137 tokens).
    """
    from einops import reduce

    if head_fusion not in ("mean", "max", "min"):
        raise ValueError(f"head_fusion={head_fusion!r} must be 'mean', 'max' or 'min'")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio={discard_ratio} must be in [0, 1); 0 keeps every weight")
    prefix = trace.num_prefix_tokens
    attention = trace.attention[:, 0]  # (L, H, T, T)
    T = attention.shape[-1]
    v = torch.zeros(T, dtype=torch.float64)
    v[0] = 1.0  # e_0: the CLS row
    for layer in range(attention.shape[0] - 1, -1, -1):
        fused = reduce(attention[layer].double(), "h q k -> q k", head_fusion)  # (T, T)
        if discard_ratio > 0:
            body = fused[:, prefix:].reshape(-1).clone()  # (T*N,), CLS columns left out
            drop = int(body.numel() * discard_ratio)
            if drop:
                body[body.topk(drop, largest=False).indices] = 0.0
                fused[:, prefix:] = body.reshape(T, -1)
        fused.diagonal().add_(1.0)  # + I: the residual connection
        fused /= fused.sum(dim=-1, keepdim=True)  # rows sum to 1
        v = v @ fused  # (T,)
        del fused
    return v[prefix:].reshape(trace.grid).float().numpy()


def distance_map(trace, patch_size: int) -> np.ndarray:
    """`analysis.mean_attention_distance` (L, H), one layer and head at a time (bounded temporaries)."""
    from vitcore.inspect.analysis import mean_attention_distance

    attention = trace.attention  # (L, B, H, T, T)
    out = np.zeros((attention.shape[0], attention.shape[2]), dtype=np.float32)
    for layer in range(attention.shape[0]):
        for head in range(attention.shape[2]):
            part = attention[layer : layer + 1, :, head : head + 1]  # (1, B, 1, T, T)
            out[layer, head] = float(mean_attention_distance(part, tuple(trace.grid), patch_size,
                                                             num_prefix_tokens=trace.num_prefix_tokens)[0, 0])
    return out


@torch.no_grad()
def conv_linear_difference(x: torch.Tensor, patch_size: int, model: VisionTransformer | None = None) -> float:
    """max |conv(x) - linear(patchify(x))| for this image (the model's conv, or a fresh one)."""
    if model is not None and model.config.patch_size == patch_size:
        conv = model.patch_embed.proj
    else:
        conv = torch.nn.Conv2d(x.shape[1], 64, kernel_size=patch_size, stride=patch_size)
        generator = torch.Generator().manual_seed(0)
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * patch_size**-1)
        conv.bias.zero_()
    via_conv = conv(x).flatten(2).transpose(1, 2)  # (B, N, D)
    via_linear = conv_as_linear(conv)(patchify(x, patch_size))  # (B, N, D)
    return float((via_conv - via_linear).abs().max())


def patch_size_rows(config: ViTConfig) -> list[dict]:
    """Tokens, attention entries and compute for every patch size valid at the config's image size."""
    rows = []
    for p in valid_patch_sizes(config.image_size):
        cost = cost_summary(config.replace(patch_size=p))
        rows.append({
            "patch size": p,
            "tokens N+1": int(cost["tokens"]),
            "attention entries per head (T²)": int(cost["tokens"] ** 2),
            "GFLOPs": round(cost["gflops"], 3),
            "attention share of compute": f"{cost['attention_share']:.1%}",
            "attention maps (MiB)": round(cost["attention_mib"], 2),
        })
    return rows


@torch.no_grad()
def measure_latency_ms(model: VisionTransformer, reps: int = 3) -> float:
    """Median latency of one forward pass at the model's image size, batch 1, in ms."""
    x = torch.randn(1, model.config.in_channels, *model.config.image_size)
    model(x)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def occlusion_effect(model: VisionTransformer, x: torch.Tensor, patches: list[int], fill: str = "mean",
                     normalization: Any = None) -> np.ndarray:
    """Change of every class logit when the given patches are masked, (C,); fills of vitcore.explain.perturb."""
    from vitcore.inspect.analysis import occlusion_probe

    return occlusion_probe(model, x, patches, fill=fill, normalization=normalization).double().numpy()
