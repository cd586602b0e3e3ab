"""The shared caches: one result per key for all sessions, within one byte budget.

Models, traces, figures and maps live in :func:`explorer.budget.shared_cache`, a least-recently
used cache bounded by ``EXPLORER_CACHE_MB`` (sizes: parameter bytes, ``Trace.nbytes()``, figure
JSON length, ``ndarray.nbytes``); :mod:`explorer.guard` refuses work that could not fit before it
starts. Only the sample gallery and decoded uploads stay in ``st.cache_resource`` (small, counted).

Everything cached is shared and read-only: models are only read (``forward_intermediates``),
traces and maps are detached tensors / arrays, figures are only serialised. The leading
underscore arguments are not part of the key; the named ones identify the entry.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import streamlit as st
import torch

from explorer import guard
from explorer.budget import shared_cache
from explorer.models import LoadedModel, ModelSpec, build_model
from vitcore import ViTConfig


def _cached(key: Hashable, compute: Callable[[], Any], size: Callable[[Any], int], spinner: str = "") -> Any:
    """``compute()`` once per key in the shared byte cache (a spinner while it runs, if given).

    The spinner is shown in a script run only: the warm-up thread (``app_pages/_startup.py``) fills
    the same entries with no page to draw on.
    """
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    cache = shared_cache()
    missing = object()
    value = cache.get(key, missing)
    if value is not missing:
        return value
    if not spinner or get_script_run_ctx(suppress_warning=True) is None:
        return cache.get_or_compute(key, compute, size)
    with st.spinner(spinner):
        return cache.get_or_compute(key, compute, size)


def _array_bytes(value: Any) -> int:
    return int(getattr(value, "nbytes", 0)) + 64


def _model_bytes(loaded: LoadedModel) -> int:
    return sum(p.numel() * p.element_size() for p in loaded.model.parameters()) + sum(
        b.numel() * b.element_size() for b in loaded.model.buffers())


def cached_model(spec: ModelSpec, _data: bytes | None = None) -> LoadedModel:
    """One shared, read-only model per spec (uploads keyed by their digest in ``spec``), guard first."""
    guard.estimate_spec(spec)  # raises ValueError with the numbers before anything is built
    return _cached(("model", spec), lambda: build_model(spec, _data), _model_bytes, "Loading model…")


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


def trace_guard(loaded: LoadedModel, size: tuple[int, int]) -> guard.Estimate:
    """The checked cost of recording one image of ``size`` through ``loaded`` (ValueError when refused)."""
    config = loaded.config
    est = guard.estimate(config, size, what=f"{loaded.label}, P={config.patch_size} at {size[0]} px")
    return guard.check(est, config=config, image_size=size, fixed_patch=True)


def cached_trace(spec: ModelSpec, image_key: str, size: tuple[int, int], _loaded: LoadedModel,
                 _x: torch.Tensor | Callable[[], torch.Tensor]):
    """Capture of one image through one model (all layers' maps), computed once, shared read-only.

    ``_x``: the model input, or a function that makes it (only called on a miss).

    Refused by the guard (ValueError) when it could not fit the budget; for large token counts the
    maps are float16 and q/k/v are left out (:func:`cached_steps` computes one layer's).
    """
    from explorer.traces import trace_image

    trace_guard(_loaded, size)
    dtype = guard.attention_dtype(_loaded.config, size)
    qkv = guard.keeps_qkv(_loaded.config, size)
    return _cached(("trace", spec, image_key, tuple(size)),
                   lambda: trace_image(_loaded, _x() if callable(_x) else _x, qkv=qkv, attention_dtype=dtype),
                   lambda t: t.nbytes(), "Running the model and recording every stage…")


def cached_steps(spec: ModelSpec, image_key: str, size: tuple[int, int], layer: int, head: int, query_token: int,
                 _loaded: LoadedModel, _x: torch.Tensor | Callable[[], torch.Tensor]):
    """The attention arithmetic of one (layer, head, query), from q/k/v of that layer and head only.

    ``_x``: the model input, or a function that makes it (only called on a miss).

    From the page's trace when it holds q/k/v; for large settings they are computed on demand
    (one forward pass keeping one layer and head) and cached per (layer, head). The steps
    themselves are a few arrays of T numbers.
    """
    from explorer.traces import attention_steps, layer_qkv

    def compute():
        trace = cached_trace(spec, image_key, size, _loaded, _x)
        if trace.q is not None:  # small settings: the page's trace has q/k/v of every layer
            return attention_steps(trace, layer, head, query_token)
        qkv = _cached(("qkv", spec, image_key, tuple(size), layer, head),
                      lambda: layer_qkv(_loaded, _x() if callable(_x) else _x, layer, head),
                      lambda t: t.nbytes(), "Computing q, k and v of this layer…")
        return attention_steps(qkv, layer, head, query_token)

    return _cached(("steps", spec, image_key, tuple(size), layer, head, query_token), compute,
                   lambda s: s.scores.nbytes * 4 + 512)


def cached_figure(key: Hashable, build: Callable[[], Any]) -> Any:
    """A plotly figure built once per key and shared (read-only: Streamlit only serialises it).

    Stored frozen (:class:`explorer.figures.FrozenFigure`): its JSON form is made once, so a rerun
    that shows it again dumps that form instead of copying and converting the figure. Counted by
    the bytes of its JSON, which is what every rerun sends.
    """
    from explorer.figures import freeze

    return _cached(("figure", *key) if isinstance(key, tuple) else ("figure", key), lambda: freeze(build()),
                   lambda fig: fig.json_bytes)


def cached_gradient_rollout(spec: ModelSpec, image_key: str, _loaded: LoadedModel,
                            _x: torch.Tensor | Callable[[], torch.Tensor], target: int):
    """Chefer et al. relevance map for one class (numpy (gh, gw)); gradients via autograd.grad, no copy.

    ``_x``: the model input, or a function that makes it at the model's crop size (called on a miss only).
    """
    from vitcore.inspect.analysis import gradient_rollout

    size = tuple(_loaded.preprocessing.crop_size) if callable(_x) else tuple(_x.shape[-2:])
    return _cached(("gradient_rollout", spec, image_key, size, int(target)),
                   lambda: gradient_rollout(_loaded.model, _x() if callable(_x) else _x, target)[0].detach().numpy(),
                   _array_bytes,
                   "Computing the class-specific relevance…")


def cached_occlusion_map(spec: ModelSpec, image_key: str, _loaded: LoadedModel, _x: torch.Tensor, target: int):
    """Occlusion sensitivity (gh, gw) of one class (batched forward passes of the shared model)."""
    from vitcore.inspect.analysis import occlusion_map

    size = tuple(_x.shape[-2:])
    return _cached(("occlusion", spec, image_key, size, int(target)),
                   lambda: occlusion_map(_loaded.model, _x, target).detach().numpy(), _array_bytes,
                   "Masking every patch in turn…")


def playground_guard(config: ViTConfig) -> guard.Estimate:
    """The checked cost of the playground's model: built, timed over 4 passes, last layer's maps kept."""
    est = guard.estimate(config, all_layers=False, passes=5)
    return guard.check(est, config=config)


def cached_playground(config: ViTConfig) -> dict[str, Any]:
    """A random model for a playground config and its measured latency (guard first)."""
    from explorer.playground import playground_model

    playground_guard(config)
    return _cached(("playground", config), lambda: playground_model(config),
                   lambda r: _model_bytes_of(r["model"]), "Building and timing the model…")


def _model_bytes_of(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def cached_playground_attention(config: ViTConfig, image_key: str, _image: Any):
    """Last-layer CLS attention (gh, gw) of a playground model on one image, computed once."""
    from explorer.playground import cls_attention_map

    return _cached(("playground_attention", config, image_key),
                   lambda: cls_attention_map(cached_playground(config)["model"], _image), _array_bytes)


def cached_rollout(spec: ModelSpec, image_key: str, fusion: str, discard: float, _trace: Any):
    """Attention rollout of a cached trace (numpy (gh, gw)); depends only on the trace and settings."""
    from explorer.traces import rollout_map

    return _cached(("rollout", spec, image_key, tuple(_trace.grid), fusion, float(discard)),
                   lambda: rollout_map(_trace, fusion, float(discard)), _array_bytes)


def cached_distance(spec: ModelSpec, image_key: str, patch_size: int, _trace: Any):
    """Mean attention distance (L, H) of a cached trace, in pixels."""
    from explorer.traces import distance_map

    return _cached(("distance", spec, image_key, tuple(_trace.grid), int(patch_size)),
                   lambda: distance_map(_trace, patch_size), _array_bytes)


def cached_shape_flow(spec: ModelSpec, image_key: str, size: tuple[int, int], _loaded: LoadedModel,
                      _x: torch.Tensor | Callable[[], torch.Tensor]):
    """The Home page's data flow (:func:`explorer.pipeline.shape_flow`) of one image, one forward pass per key."""
    from explorer.pipeline import shape_flow

    trace_guard(_loaded, size)  # the same cost check as the trace: one forward pass of this model at this size
    return _cached(("shape_flow", spec, image_key, tuple(size)),
                   lambda: shape_flow(_loaded.model, _x() if callable(_x) else _x),
                   lambda stages: 256 * len(stages), "Running the model stage by stage…")


def cached_patch_colours(spec: ModelSpec, image_key: str, layer: int, _trace: Any):
    """The patch tokens after ``layer`` blocks as PCA colours (:func:`explorer.embeddings.patch_colours`)."""
    from explorer.embeddings import patch_colours

    return _cached(("patch_colours", spec, image_key, tuple(_trace.grid), int(layer)),
                   lambda: patch_colours(_trace, int(layer)), _array_bytes)


def cached_filters(spec: ModelSpec, _loaded: LoadedModel):
    """Principal components of the model's patch-embedding filters (one SVD per model)."""
    from explorer.embeddings import filters

    return _cached(("filters", spec), lambda: filters(_loaded.model), _array_bytes)


def cached_position_similarity(spec: ModelSpec, _trace: Any):
    """Position-embedding cosine similarity (N, gh, gw): per model and grid, the same for every image."""
    from explorer.embeddings import position_similarity

    return _cached(("position_similarity", spec, tuple(_trace.grid)), lambda: position_similarity(_trace),
                   _array_bytes)


def cached_cls_similarity(spec: ModelSpec, image_key: str, _trace: Any):
    """Cosine of each patch token with the CLS token after the last block, (gh, gw)."""
    from explorer.embeddings import cls_similarity

    return _cached(("cls_similarity", spec, image_key, tuple(_trace.grid)), lambda: cls_similarity(_trace),
                   _array_bytes)


def cached_payload(key: tuple, build: Callable[[], Any]) -> Any:
    """Maps packed for the browser (:class:`explorer.attention_payload.MapPayload`), once per key, shared.

    ``key`` names the view: (spec, image key, size, layer, ...) and the query too when the view is
    over the budget (a fallback view holds one query's rows). Counted by the bytes it sends.
    """
    return _cached(("payload", *key), build, lambda p: p.nbytes + 512)


def cached_view_jpeg(spec: ModelSpec, image_key: str, size: tuple[int, int], _pixels: Any) -> bytes:
    """The model's view of the image as JPEG bytes (the browser maps' background, about 15 KB at 224 px).

    ``_pixels``: the (H, W, 3) view, or a function that makes it (only called on a miss).
    """
    from explorer.attention_payload import encode_image

    return _cached(("view_jpeg", spec, image_key, tuple(size)),
                   lambda: encode_image(_pixels() if callable(_pixels) else _pixels), len)
