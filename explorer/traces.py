"""What the pages compute from a model and an image: traces, per-query maps, attention arithmetic.

The shared (cached) model is only read: captures use ``forward_intermediates`` (no flag, no hook,
no copy), everything else works on detached tensors.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from explorer.models import LoadedModel
from explorer.pipeline import cost_summary
from vitcore import VisionTransformer, ViTConfig, conv_as_linear, patchify
from vitcore.config import valid_patch_sizes

__all__ = [
    "trace_image",
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


def trace_image(loaded: LoadedModel, x: torch.Tensor):
    """Full capture (all layers and heads, with q/k/v) of ``x``; the shared model is only read."""
    from vitcore.capture import capture

    return capture(loaded.model, x, qkv=True)


def mask_shares(maps: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, float]:
    """Share of each map's positive mass inside an object mask (chance = the mask's area)."""
    from vitcore.analysis import attention_mass_in_mask

    mask_t = torch.as_tensor(np.asarray(mask, dtype=bool))
    return {name: float(attention_mass_in_mask(torch.as_tensor(np.asarray(m)), mask_t)) for name, m in maps.items()}


def query_maps(trace, layer: int, query: int | None) -> np.ndarray:
    """Every head's attention from one query token over the patch grid, (H, gh, gw).

    ``query`` is a patch index (0..N-1), or None for the CLS token.
    """
    prefix = trace.num_prefix_tokens
    gh, gw = trace.grid
    attn = trace.attention[layer, 0].float()  # (H, T, T)
    row = 0 if query is None else prefix + int(query)
    maps = attn[:, row, prefix:]  # (H, N)
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
    """Recompute one attention row from captured q, k, v: q·k/√d, softmax, weighted sum of v."""
    if trace.q is None:
        raise ValueError("this trace has no q/k/v; capture with qkv=True")
    q = trace.q[layer, 0, head, query_token].double()  # (d,)
    k = trace.k[layer, 0, head].double()  # (T, d)
    v = trace.v[layer, 0, head].double()  # (T, d)
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
        captured_weights=trace.attention[layer, 0, head, query_token].double().numpy(),
        top=[(int(i), float(scores[i]), float(weights[i])) for i in order],
    )


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


def occlusion_effect(model: VisionTransformer, x: torch.Tensor, patches: list[int], fill: str = "mean") -> np.ndarray:
    """Change of every class logit when the given patches are masked, (C,)."""
    from vitcore.analysis import occlusion_probe

    return occlusion_probe(model, x, patches, fill=fill).double().numpy()
