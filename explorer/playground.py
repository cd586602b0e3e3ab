"""The architecture playground: a random model per configuration, timed, with attention maps."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from explorer.traces import measure_latency_ms
from vitcore import VisionTransformer, ViTConfig

__all__ = ["playground_model", "cls_attention_map"]


@torch.no_grad()
def cls_attention_map(model: VisionTransformer, image: np.ndarray) -> np.ndarray:
    """Last layer's CLS attention over the patch grid, mean of heads, for a uint8 (H, W, 3) image."""
    from vitcore.capture import capture

    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]  # (1, 3, H, W)
    private = copy.deepcopy(model)  # capture hooks a model: never the shared one
    trace = capture(private, x, layers=[model.config.depth - 1])
    prefix = trace.num_prefix_tokens
    attn = trace.attention[-1, 0].float().mean(0)  # (T, T)
    return attn[0, prefix:].reshape(trace.grid).numpy()


def playground_model(config: ViTConfig, reps: int = 3) -> dict[str, Any]:
    """A seeded random model for ``config`` and its measured batch-1 latency."""
    torch.manual_seed(0)
    model = VisionTransformer(config).eval()
    return {"model": model, "latency_ms": measure_latency_ms(model, reps=reps)}
