"""The architecture playground: a random model per configuration, timed, with attention maps."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from explorer.models import seeded_model
from explorer.traces import measure_latency_ms
from vitcore import VisionTransformer, ViTConfig
from vitcore.data.images import Preprocessing

__all__ = ["playground_model", "cls_attention_map"]


def cls_attention_map(model: VisionTransformer, image: Image.Image) -> np.ndarray | None:
    """Last layer's CLS attention (or the mixer's matrix) over the patch grid, mean of heads, (gh, gw).

    None for a token mixer without a token-to-token matrix (the MLP mixer).

    The image goes through the same preprocessing record as the random model's sidebar twin
    (fitted to the model's size, normalised with mean = std = 0.5); the shared model is only read.
    """
    from vitcore.inspect.capture import capture

    x = Preprocessing.for_model(model.config.image_size)(image)  # (3, H, W)
    trace = capture(model, x, layers=[-1])
    if trace.attention is None:
        return None
    prefix = trace.num_prefix_tokens
    attn = trace.attention[-1, 0].float().mean(0)  # (T, T)
    return attn[0, prefix:].reshape(trace.grid).numpy()


def playground_model(config: ViTConfig, reps: int = 3) -> dict[str, Any]:
    """A seeded random model for ``config`` and its measured batch-1 latency."""
    model = seeded_model(config)
    return {"model": model, "latency_ms": measure_latency_ms(model, reps=reps)}
