"""Thin ``st.cache_resource`` wrappers around explorer functions: one shared result per key.

Everything cached here is shared by all sessions and read-only: models are only read
(``forward_intermediates``), traces and maps are detached tensors / arrays. The leading
underscore arguments are not hashed; the named ones identify the entry.
"""

from __future__ import annotations

from typing import Any

import streamlit as st
import torch

from explorer.models import LoadedModel, ModelSpec, build_model
from vitcore import ViTConfig


@st.cache_resource(max_entries=16, show_spinner="Loading model…")
def cached_model(spec: ModelSpec, _data: bytes | None = None) -> LoadedModel:
    """One shared, read-only model per spec (uploads keyed by their digest in ``spec``)."""
    return build_model(spec, _data)


@st.cache_resource(max_entries=1, show_spinner=False)
def cached_samples() -> dict[str, Any]:
    """The sample gallery: skimage photos and Shapes samples (image, mask, label)."""
    from explorer.samples import gallery

    return gallery()


@st.cache_resource(max_entries=32, show_spinner=False)
def cached_upload(key: str, _data: bytes) -> Any:
    """Decode an upload once per file (errors are not cached, so a bad file is re-checked)."""
    from explorer.images import decode_upload

    return decode_upload(_data)


@st.cache_resource(max_entries=64, show_spinner="Running the model and recording every stage…")
def cached_trace(spec: ModelSpec, image_key: str, size: tuple[int, int], _loaded: LoadedModel, _x: torch.Tensor):
    """Full capture of one image through one model, computed once and shared read-only."""
    from explorer.traces import trace_image

    return trace_image(_loaded, _x)


@st.cache_resource(max_entries=64, show_spinner="Computing the class-specific relevance…")
def cached_gradient_rollout(spec: ModelSpec, image_key: str, _loaded: LoadedModel, _x: torch.Tensor, target: int):
    """Chefer et al. relevance map for one class (numpy (gh, gw)); gradients via autograd.grad, no copy."""
    from vitcore.analysis import gradient_rollout

    return gradient_rollout(_loaded.model, _x, target)[0].detach().numpy()


@st.cache_resource(max_entries=64, show_spinner="Masking every patch in turn…")
def cached_occlusion_map(spec: ModelSpec, image_key: str, _loaded: LoadedModel, _x: torch.Tensor, target: int):
    """Occlusion sensitivity (gh, gw) of one class (batched forward passes of the shared model)."""
    from vitcore.analysis import occlusion_map

    return occlusion_map(_loaded.model, _x, target).detach().numpy()


@st.cache_resource(max_entries=32, show_spinner="Building and timing the model…")
def cached_playground(config: ViTConfig) -> dict[str, Any]:
    """A random model for a playground config and its measured latency."""
    from explorer.playground import playground_model

    return playground_model(config)


@st.cache_resource(max_entries=64, show_spinner=False)
def cached_playground_attention(config: ViTConfig, image_key: str, _image: Any):
    """Last-layer CLS attention (gh, gw) of a playground model on one image, computed once."""
    from explorer.playground import cls_attention_map

    return cls_attention_map(cached_playground(config)["model"], _image)


@st.cache_resource(max_entries=128, show_spinner=False)
def cached_rollout(spec: ModelSpec, image_key: str, fusion: str, discard: float, _trace: Any):
    """Attention rollout of a cached trace (numpy (gh, gw)); depends only on the trace and settings."""
    from vitcore.analysis import attention_rollout

    out = attention_rollout(_trace.attention, head_fusion=fusion, discard_ratio=discard, grid=tuple(_trace.grid),
                            num_prefix_tokens=_trace.num_prefix_tokens)
    return out[0].numpy()


@st.cache_resource(max_entries=64, show_spinner=False)
def cached_distance(spec: ModelSpec, image_key: str, patch_size: int, _trace: Any):
    """Mean attention distance (L, H) of a cached trace, in pixels."""
    from vitcore.analysis import mean_attention_distance

    return mean_attention_distance(_trace.attention, tuple(_trace.grid), patch_size,
                                   num_prefix_tokens=_trace.num_prefix_tokens).numpy()
