"""Before any work: how much memory and time will this setting cost, and may it run?

Every setting that reaches a model (sidebar preset, DINOv2 input size, torchvision choice,
playground sliders, a shared URL, an uploaded checkpoint once its config is read) goes through
:func:`estimate` and :func:`check`. Costs come from the config alone, nothing is allocated:

- tokens T = N + prefix, attention entries T² per head and H·T² per layer;
- the trace the Attention page keeps (``trace_bytes``): attention of every layer, in float16
  once the float32 maps would pass ``FLOAT16_ABOVE``, plus tokens of every block, plus q/k/v of
  every layer while the maps stay float32 (beyond, the page computes them for the one layer shown);
- the peak while recording it: the packed maps, one layer's float32 maps and softmax working
  memory, and the rollout's float64 (T, T) temporaries;
- parameters and their float32 bytes; FLOPs from :func:`explorer.pipeline.cost_summary`, turned
  into seconds with this machine's measured matmul speed.

:func:`check` raises ``ValueError`` with the numbers and what to change, e.g.
"P=2 at 384 px gives 36,865 tokens: 1.4e+09 attention entries per head ...".
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from explorer.budget import cache_bytes
from explorer.pipeline import cost_summary
from vitcore import ViTConfig
from vitcore.model.config import valid_patch_sizes

__all__ = ["Estimate", "FLOAT16_ABOVE", "attention_dtype", "check", "estimate", "estimate_spec",
           "flops_per_second", "keeps_qkv", "max_seconds", "spec_config", "TORCHVISION_CONFIGS"]

FLOAT16_ABOVE = 64 * 2**20  # float32 attention maps above this are stored in float16 (half the bytes)
DEFAULT_MAX_SECONDS = 120.0  # one recorded forward pass; EXPLORER_MAX_SECONDS changes it
_PLAIN_SPEED = 5e9  # FLOP/s assumed when the measurement fails (a slow laptop core)

# torchvision's ViTs as configs, so their cost is known before anything is loaded
TORCHVISION_CONFIGS = {
    "vit_b_16": dict(image_size=224, patch_size=16, dim=768, depth=12, heads=12),
    "vit_b_32": dict(image_size=224, patch_size=32, dim=768, depth=12, heads=12),
    "vit_l_16": dict(image_size=224, patch_size=16, dim=1024, depth=24, heads=16),
    "vit_l_32": dict(image_size=224, patch_size=32, dim=1024, depth=24, heads=16),
    "vit_h_14": dict(image_size=224, patch_size=14, dim=1280, depth=32, heads=16),
}


def max_seconds() -> float:
    """Longest estimated forward pass allowed: ``EXPLORER_MAX_SECONDS`` (default 120)."""
    try:
        value = float(os.environ.get("EXPLORER_MAX_SECONDS", "") or DEFAULT_MAX_SECONDS)
    except ValueError:
        value = DEFAULT_MAX_SECONDS
    return value if value > 0 else DEFAULT_MAX_SECONDS


@functools.lru_cache(maxsize=1)
def flops_per_second() -> float:
    """This machine's float32 matmul speed (best of 5 of a 384³ product, measured once, ~10 ms)."""
    try:
        a = torch.randn(384, 384)
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - start)
        return max(2 * 384**3 / max(best, 1e-9), 1e8)
    except RuntimeError:
        return _PLAIN_SPEED


def attention_dtype(config: ViTConfig, image_size: tuple[int, int] | None = None) -> torch.dtype:
    """float32 for the maps of small settings (exact arithmetic on the page), float16 for large ones."""
    cost = cost_summary(config, image_size)
    return torch.float16 if cost["attention_mib"] * 2**20 > FLOAT16_ABOVE else torch.float32


def keeps_qkv(config: ViTConfig, image_size: tuple[int, int] | None = None) -> bool:
    """Whether the page's trace keeps q/k/v of every layer: yes while its maps stay float32 (a few MB
    for the presets at P=16, so a new layer or head costs no forward pass); large settings compute
    them for the one layer shown."""
    return attention_dtype(config, image_size) == torch.float32


@dataclass(frozen=True)
class Estimate:
    """What one image through one config costs, from the config alone."""

    what: str  # e.g. "P=4 at 224 px" or "DINOv2 ViT-S/14 at 448 px"
    tokens: int  # T = N + prefix
    heads: int
    depth: int
    attention_per_head: int  # T²
    attention_per_layer: int  # H·T²
    trace_bytes: int  # the trace the Attention page keeps
    peak_bytes: int  # working memory while recording it (model not included)
    params: int
    model_bytes: int  # float32 parameters
    load_bytes: int  # while loading (converters hold the source model too)
    gflops: float  # one forward pass
    seconds: float  # one forward pass at the measured speed

    def summary(self) -> str:
        """One line with the numbers, for captions and errors."""
        return (f"{self.what} gives {self.tokens:,} tokens: {self.attention_per_head:.1e} attention entries per "
                f"head, {self.attention_per_layer:.1e} per layer of {self.heads} heads; recording one image needs "
                f"about {_size(self.peak_bytes)} and keeps {_size(self.trace_bytes)}; {self.params / 1e6:.1f} M "
                f"parameters ({_size(self.model_bytes)}); one forward pass is {self.gflops:.1f} GFLOPs, about "
                f"{_seconds(self.seconds)} here")


def _size(nbytes: float) -> str:
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.1f} GB"
    return f"{nbytes / 2**20:.0f} MB" if nbytes >= 2**20 else f"{nbytes / 2**10:.0f} KB"


def _seconds(s: float) -> str:
    return f"{s:.2f} s" if s < 10 else f"{s:.0f} s"


def estimate(config: ViTConfig, image_size: tuple[int, int] | int | None = None, *, what: str = "",
             all_layers: bool = True, passes: int = 1, load_factor: float = 1.0) -> Estimate:
    """Cost of one image of ``image_size`` (default the config's) through ``config``.

    ``all_layers=False``: only the last layer's maps are kept (the playground); ``passes``: forward
    passes run for it (the playground times 4); ``load_factor``: model copies alive while loading.
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    size = tuple(image_size or config.image_size)
    cost = cost_summary(config, size)
    T, H, L, D = int(cost["tokens"]), config.heads, config.depth, config.dim
    N = int(cost["patches"])
    kept_layers = L if all_layers else 1
    f32_maps = kept_layers * H * T * T * 4
    attn_bytes = f32_maps // 2 if f32_maps > FLOAT16_ABOVE else f32_maps
    tokens_bytes = (L + 2) * T * D * 4 + N * config.in_channels * config.patch_size**2 * 4 + N * D * 4
    if all_layers and attn_bytes == f32_maps:  # small settings keep q, k, v of every layer (keeps_qkv)
        tokens_bytes += 3 * L * T * D * 4
    trace_bytes = attn_bytes + tokens_bytes + 4 * max(config.num_classes, D)
    # one layer's scores + softmax, its qkv / MLP activations, and the rollout's float64 (T, T) temporaries
    working = max(2 * H * T * T * 4, 4 * T * T * 8) + 4 * T * max(3 * D, config.mlp_dim) * 4
    unpacked = f32_maps if attn_bytes == f32_maps else 0  # small maps: capture holds the list and the slab
    peak = attn_bytes + unpacked + tokens_bytes + working
    params = int(cost["params"])
    gflops = float(cost["gflops"])
    if not what:
        what = f"P={config.patch_size} at {size[0]} px" if size[0] == size[1] else \
            f"P={config.patch_size} at {size[0]}×{size[1]} px"
    return Estimate(what=what, tokens=T, heads=H, depth=L, attention_per_head=T * T, attention_per_layer=H * T * T,
                    trace_bytes=int(trace_bytes), peak_bytes=int(peak), params=params, model_bytes=params * 4,
                    load_bytes=int(params * 4 * load_factor), gflops=gflops,
                    seconds=passes * gflops * 1e9 / flops_per_second())


def _advice(config: ViTConfig, size: tuple[int, int], budget: int, limit: float, fixed_patch: bool) -> str:
    """What to change: the smallest patch size that fits, or a smaller input / model."""
    if not fixed_patch:
        for p in valid_patch_sizes(size):
            if p <= config.patch_size:
                continue
            try:
                e = estimate(config.replace(patch_size=p), size)
            except ValueError:
                continue
            if e.peak_bytes <= budget and e.model_bytes <= budget and e.seconds <= limit:
                return (f"Choose a larger patch size (P={p} gives {e.tokens:,} tokens, about {_size(e.peak_bytes)}), "
                        "a smaller image or fewer heads, or raise EXPLORER_CACHE_MB on the server.")
    return "Choose a smaller input size or model, or raise EXPLORER_CACHE_MB on the server."


def check(est: Estimate, budget: int | None = None, *, config: ViTConfig | None = None,
          image_size: tuple[int, int] | None = None, fixed_patch: bool = False) -> Estimate:
    """``est`` if it fits ``budget`` bytes (default ``EXPLORER_CACHE_MB``) and the time limit, else ValueError.

    With ``config`` the message proposes the smallest patch size that would fit.
    """
    budget = cache_bytes() if budget is None else int(budget)
    limit = max_seconds()
    problems = []
    if est.model_bytes > budget:
        problems.append(f"the model's {est.params / 1e6:.0f} M parameters need {_size(est.model_bytes)} "
                        f"({_size(est.load_bytes)} while loading), above the {_size(budget)} budget")
    if est.peak_bytes > budget:
        problems.append(f"recording one image needs about {_size(est.peak_bytes)}, above the {_size(budget)} budget")
    if est.seconds > limit:
        problems.append(f"one forward pass ({est.gflops:,.0f} GFLOPs) would take about {_seconds(est.seconds)} here, "
                        f"above the {limit:.0f} s limit (EXPLORER_MAX_SECONDS)")
    if not problems:
        return est
    advice = (_advice(config, tuple(image_size or config.image_size), budget, limit, fixed_patch) if config
              else "Choose a smaller model or raise EXPLORER_CACHE_MB on the server.")
    raise ValueError(f"{est.what} gives {est.tokens:,} tokens: {est.attention_per_head:.1e} attention entries per "
                     f"head, {est.attention_per_layer:.1e} per layer of {est.heads} heads; " + "; ".join(problems)
                     + f". Nothing was run. {advice}")


def spec_config(spec: Any) -> tuple[ViTConfig, tuple[int, int], str, float] | None:
    """(config, input size, label, load factor) of a model spec, known before loading; None when only
    the loaded file tells (uploads, session models, Hugging Face, the small bundled model)."""
    if spec.kind == "preset":
        config = ViTConfig.preset(spec.preset, **dict(spec.overrides))
        return config, tuple(config.image_size), "", 1.0
    if spec.kind == "dinov2":
        from vitcore.pretrained.dinov2 import dinov2_small_config

        size = spec.input_size
        return dinov2_small_config(), (size, size), f"DINOv2 ViT-S/14 at {size} px", 1.0
    if spec.kind == "torchvision" and spec.name in TORCHVISION_CONFIGS:
        config = ViTConfig(**TORCHVISION_CONFIGS[spec.name])
        # converting holds torchvision's model, its state dict and ours: about three copies
        return config, tuple(config.image_size), f"torchvision {spec.name}", 3.0
    return None


def estimate_spec(spec: Any) -> Estimate | None:
    """The guard for a sidebar choice before it loads: checked Estimate, None when unknown until loaded."""
    found = spec_config(spec)
    if found is None:
        return None
    config, size, label, load = found
    est = estimate(config, size, what=label, load_factor=load)
    return check(est, config=config, image_size=size, fixed_patch=spec.kind != "preset")
