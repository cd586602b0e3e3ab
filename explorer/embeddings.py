"""What the Embeddings page shows, computed from a trace (or the model's weights) without Streamlit.

Every function reads detached tensors of a :class:`vitcore.inspect.capture.Trace` or the shared
model's patch-embedding weight and returns NumPy arrays, which the page caches per (model, image)
in the shared byte cache (app_pages/_cache.py). Paper references: Dosovitskiy et al. 2021, Fig. 7
(filters, position similarity); Oquab et al. 2023, Fig. 1 (token PCA as colours).
"""

from __future__ import annotations

import numpy as np
import torch

from vitcore.inspect import analysis

__all__ = ["PIXELS_PER_PATCH", "cls_similarity", "filter_count", "filters", "patch_colours",
           "position_similarity"]

PIXELS_PER_PATCH = 16  # each patch's colour is drawn as a 16 x 16 square


def _layer_tokens(trace, layer: int) -> torch.Tensor:
    depth = len(trace.tokens) - 1
    if not -len(trace.tokens) <= layer <= depth:
        raise ValueError(f"layer={layer} is out of range: 0 (embeddings + position) to {depth} (after the last block)")
    return trace.tokens[layer][0]  # (T, D)


def patch_colours(trace, layer: int, pixels_per_patch: int = PIXELS_PER_PATCH) -> np.ndarray:
    """The first three principal components of the patch tokens after ``layer`` blocks as an RGB image.

    ``layer`` 0 is the embeddings plus position, ``depth`` the output of the last block. Returns
    (gh·s, gw·s, 3) floats in [0, 1], each patch a flat s x s square (s = ``pixels_per_patch``).
    """
    rgb = analysis.patch_pca_rgb(_layer_tokens(trace, layer), tuple(trace.grid),
                                 num_prefix_tokens=trace.num_prefix_tokens).numpy()  # (gh, gw, 3)
    return np.kron(rgb, np.ones((pixels_per_patch, pixels_per_patch, 1))).clip(0.0, 1.0)


def filter_count(config) -> int:
    """How many filter components the page shows: 28 as in Fig. 7, fewer for a narrow or tiny model."""
    return int(min(28, config.in_channels * config.patch_size**2, config.dim))


def filters(model) -> np.ndarray:
    """Principal components of the patch-embedding filters, (k, C, P, P) (the shared model is only read)."""
    return analysis.embedding_filters(model, k=filter_count(model.config)).numpy()


def position_similarity(trace) -> np.ndarray:
    """Cosine similarity of each patch's position embedding with every other one, (N, gh, gw).

    Tile i (``out[i]``) is patch i's similarity with all patches laid out on the grid; it depends
    on the model and the grid only, not on the image.
    """
    return analysis.position_embedding_similarity(trace.pos_embedding, tuple(trace.grid),
                                                  num_prefix_tokens=trace.num_prefix_tokens).numpy()


def cls_similarity(trace) -> np.ndarray:
    """Cosine similarity of each patch token with the CLS token after the last block, (gh, gw)."""
    return analysis.cls_similarity(trace.tokens[-1][0], tuple(trace.grid),
                                   num_prefix_tokens=trace.num_prefix_tokens).numpy()
