"""What every page does first: pick up the sidebar's model and image, show errors, clickable figures.

Pages lay out; the logic lives in ``explorer/`` (tested without Streamlit), the shared caches in
``app_pages/_cache.py``, the sidebar in ``app_pages/_sidebar.py`` and what runs before PyTorch is
imported (run counts, the warm-up) in ``app_pages/_startup.py``.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

import streamlit as st
import torch

from app_pages._cache import (  # noqa: F401  (re-exported for the pages)
    cached_distance,
    cached_gradient_rollout,
    cached_model,
    cached_occlusion_map,
    cached_playground,
    cached_playground_attention,
    cached_rollout,
    cached_samples,
    cached_trace,
    cached_upload,
    trace_guard,
)
from app_pages._sidebar import sidebar, sync_url  # noqa: F401
from app_pages._startup import count_run  # noqa: F401  (re-exported for the pages' fragments)
from explorer import guard, specs
from explorer import state as S
from explorer.images import ImageError
from explorer.models import LoadedModel, ModelSpec
from explorer.registry import heading
from explorer.samples import sample_key
from explorer.texts import sentences


def show_error(exc: BaseException, what: str = "") -> None:
    """A user-facing error box; the page keeps working."""
    prefix = f"{what}: " if what else ""
    st.error(f"{prefix}{exc}")


def current_spec() -> tuple[ModelSpec, bytes | None]:
    """The model the sidebar currently selects, and its bytes when it is an upload."""
    return specs.spec_from_state(st.session_state)


def current_model() -> tuple[ModelSpec, LoadedModel] | None:
    """The selected model (shared, read-only), or None after showing why it could not load."""
    try:
        spec, data = current_spec()
        before = guard.estimate_spec(spec)  # refuses, with the numbers, before anything loads
        if before is not None and spec.kind in ("torchvision", "hf"):
            st.sidebar.caption(f"{spec.name}: {before.params / 1e6:.0f} M parameters, "
                               f"{before.model_bytes / 2**30:.2f} GB in memory, about "
                               f"{before.load_bytes / 2**30:.1f} GB while loading")
        loaded = cached_model(spec, data)
        trace_guard(loaded, tuple(loaded.preprocessing.crop_size))  # uploads: known once the file is read
    except (ValueError, OSError, RuntimeError) as exc:
        show_error(exc, "Model")
        return None
    model_caption(loaded)
    return spec, loaded


def current_image() -> tuple[str, Any, Any] | None:
    """(key, RGB image, object mask or None) for the selected input, or None with a message."""
    ss = st.session_state
    source = ss.get(S.IMAGE_SOURCE, "sample")
    if source == "sample":
        samples = cached_samples()
        name = ss.get(S.SAMPLE_NAME)
        if name not in samples:
            name = next(iter(samples))
        sample = samples[name]
        return sample_key(name), sample.image, sample.mask
    widget = ss.get(S.UPLOAD if source == "upload" else S.CAMERA)
    if widget is None:
        st.info("Upload an image (or take a photo) in the sidebar; the gallery works too.")
        return None
    key = f"upload:{getattr(widget, 'file_id', '') or hashlib.sha256(widget.getvalue()).hexdigest()}"
    try:
        image = cached_upload(key, widget.getvalue())
    except ImageError as exc:
        show_error(exc, "Image")
        return None
    return key, image, None


def model_input(loaded: LoadedModel, image: Any) -> torch.Tensor:
    """The image as the model's (1, C, H, W) input, through the model's own preprocessing record."""
    return loaded.preprocessing(image)[None]


def model_view(loaded: LoadedModel, image: Any) -> Any:
    """The image as the model sees it (fitted by its preprocessing record), as an array for figures."""
    import numpy as np

    return np.asarray(loaded.preprocessing.fit_image(image).convert("RGB"))


def trace_for(spec: ModelSpec, loaded: LoadedModel, image_key: str, image: Any):
    """Cached full trace of the current image through the current model."""
    return cached_trace(spec, image_key, tuple(loaded.preprocessing.crop_size), loaded,
                        lambda: model_input(loaded, image))  # the input is made only on a cache miss


def clickable(fig: Any, chart_key: str, target_key: str, container: Any = st) -> None:
    """Show a figure whose patch markers are clickable; a click stores the patch index in ``target_key``."""
    from explorer.figures import selected_patch

    def on_select() -> None:
        patch = selected_patch(st.session_state.get(chart_key))
        if patch is not None:
            st.session_state[target_key] = patch

    container.plotly_chart(fig, key=chart_key, on_select=on_select, selection_mode="points")


def patch_picker(label: str, key: str, num_patches: int, container: Any = st) -> int:
    """A number input for a patch index kept in range (clicks on figures write the same key)."""
    value = st.session_state.get(key, 0)
    if not isinstance(value, int) or not 0 <= value < num_patches:
        st.session_state[key] = 0
    return int(container.number_input(label, 0, num_patches - 1, key=key))


_PARAMETER_COUNTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _parameter_count(model: torch.nn.Module) -> int:
    """Parameters of a shared (read-only) model, counted once per model rather than on every rerun."""
    count = _PARAMETER_COUNTS.get(model)
    if count is None:
        count = _PARAMETER_COUNTS[model] = sum(p.numel() for p in model.parameters())
    return count


def model_caption(loaded: LoadedModel) -> None:
    """One line under the sidebar model picker: what is loaded and its reproduction check."""
    meta = loaded.metadata
    line = f"{loaded.label} · {_parameter_count(loaded.model) / 1e6:.2f} M parameters"
    if "reproduction_max_diff" in meta:
        line += f" · reproduction check: max |Δ| = {meta['reproduction_max_diff']:.1e}"
    accuracy = meta.get("val_accuracy")
    if isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool):
        line += f" · val accuracy {float(accuracy):.1%}"
    st.sidebar.caption(line)
    for key in ("notes", "licence"):
        value = meta.get(key)
        if value:
            st.sidebar.caption(sentences(value))  # a list of notes reads as sentences


def page_inputs(slug: str) -> tuple[ModelSpec, LoadedModel, str, Any, Any]:
    """Start the page registered as ``slug``: its heading, then (spec, model, image key, image, mask).

    Stops the page (after the sidebar has said why) when either is missing.
    """
    st.title(heading(slug))
    picked, img = current_model(), current_image()
    if picked is None or img is None:
        st.stop()
    spec, loaded = picked
    key, image, mask = img
    return spec, loaded, key, image, mask
