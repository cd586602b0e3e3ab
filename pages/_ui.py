"""Streamlit glue shared by every page: sidebar inputs, cached models and traces, errors.

This is the only module besides the pages that imports Streamlit; the logic it calls lives in
``explorer/`` and is tested there. Shared objects from ``st.cache_resource`` are read-only:
anything that hooks or trains works on a copy.
"""

from __future__ import annotations

import hashlib
from typing import Any

import streamlit as st
import torch

from explorer import state as S
from explorer.images import ImageError, load_image, to_tensor
from explorer.models import MODEL_KINDS, LoadedModel, ModelSpec, build_model, digest
from vitcore import PRESETS, ViTConfig

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"]


# ----------------------------------------------------------------------------- caches
@st.cache_resource(max_entries=16, show_spinner="Loading model…")
def cached_model(spec: ModelSpec, _data: bytes | None = None) -> LoadedModel:
    """One shared, read-only model per spec (uploads keyed by their digest in ``spec``)."""
    return build_model(spec, _data)


@st.cache_resource(max_entries=1, show_spinner=False)
def cached_samples() -> dict[str, Any]:
    """The sample gallery: skimage photos and Shapes samples (image, mask, label)."""
    from explorer.samples import gallery

    return gallery()


@st.cache_resource(max_entries=64, show_spinner="Running the model and recording every stage…")
def cached_trace(spec: ModelSpec, image_key: str, size: tuple[int, int], _loaded: LoadedModel, _x: torch.Tensor):
    """Full capture of one image through one model, computed once and shared read-only."""
    from explorer.traces import trace_image

    return trace_image(_loaded, _x)


# ----------------------------------------------------------------------------- helpers
def show_error(exc: BaseException, what: str = "") -> None:
    """A user-facing error box; the page keeps working."""
    prefix = f"{what}: " if what else ""
    st.error(f"{prefix}{exc}")


def _query_defaults() -> None:
    """Seed session state from the URL once per session (shareable views)."""
    if st.session_state.get("_url_loaded"):
        return
    st.session_state["_url_loaded"] = True
    params = st.query_params
    for key in S.URL_KEYS:
        if key in params:
            raw = params[key]
            default = S.DEFAULTS.get(key)
            try:
                st.session_state[key] = int(raw) if isinstance(default, int) or key == S.PATCH_SIZE else raw
            except ValueError:
                continue


def sync_url(*keys: str) -> None:
    """Write the given settings into the URL so the current view can be shared."""
    for key in keys:
        value = st.session_state.get(key)
        if value is not None and not isinstance(value, (list, dict)):
            st.query_params[key] = str(value)


# ----------------------------------------------------------------------------- sidebar
def sidebar() -> None:
    """Image and model pickers shared by all pages."""
    S.init(st.session_state)
    _query_defaults()
    with st.sidebar:
        st.subheader("Image")
        source = st.radio(
            "Source", ["sample", "upload", "camera"], key=S.IMAGE_SOURCE, horizontal=True,
            format_func={"sample": "Gallery", "upload": "Upload", "camera": "Camera"}.get,
        )
        if source == "sample":
            names = list(cached_samples())
            if st.session_state.get(S.SAMPLE_NAME) not in names:
                st.session_state[S.SAMPLE_NAME] = names[0]
            st.selectbox("Sample", names, key=S.SAMPLE_NAME)
        elif source == "upload":
            st.file_uploader("Your image", type=UPLOAD_TYPES, key=S.UPLOAD)
        else:
            st.camera_input("Take a photo", key=S.CAMERA)

        st.subheader("Model")
        kinds = list(MODEL_KINDS)
        st.selectbox("Model", kinds, key=S.MODEL_KIND, format_func=MODEL_KINDS.get)
        kind = st.session_state[S.MODEL_KIND]
        if kind == "preset":
            _preset_controls()
        elif kind == "checkpoint":
            st.file_uploader("Checkpoint saved by ViT Explorer", type=["safetensors"], key=S.CHECKPOINT_UPLOAD)
        elif kind == "session":
            names = list(st.session_state[S.SESSION_MODELS])
            if names:
                st.selectbox("Fine-tuned model", names, key=S.SESSION_MODEL_NAME)
            else:
                st.info("No model fine-tuned in this session yet: use the Fine-tune page.")
        elif kind == "torchvision":
            st.selectbox("Architecture", ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"],
                         key=S.TORCHVISION_NAME)
            st.caption("Uses weights from the local torch hub cache when present, random weights otherwise.")
        elif kind == "hf":
            st.text_input("Hub id or local folder", key=S.HF_SOURCE, placeholder="google/vit-base-patch16-224")
    shared = [S.MODEL_KIND] + ([S.SAMPLE_NAME] if source == "sample" else [])
    shared += [S.PRESET_NAME] if kind == "preset" else []
    sync_url(*shared)


def _apply_preset() -> None:
    """Reset the architecture sliders to the values of the preset just chosen."""
    base = ViTConfig.preset(st.session_state[S.PRESET_NAME])
    st.session_state[S.PRESET_IMAGE] = base.image_size[0]
    st.session_state[S.PRESET_PATCH] = base.patch_size
    st.session_state[S.PRESET_DIM] = base.dim
    st.session_state[S.PRESET_HEADS] = base.heads
    st.session_state[S.PRESET_DEPTH] = min(base.depth, 12)


def _choose_valid(key: str, options: list[int]) -> None:
    """Keep a slider's stored value among its options (nearest valid one otherwise)."""
    value = st.session_state.get(key)
    if value not in options:
        st.session_state[key] = min(options, key=lambda o: abs(o - (value or 0)))


IMAGE_SIZES = [32, 64, 96, 128, 160, 192, 224, 256, 384]
DIMS = [32, 64, 96, 128, 192, 256, 384, 512, 768]


def _preset_controls() -> None:
    st.selectbox("Preset", list(PRESETS), key=S.PRESET_NAME, on_change=_apply_preset)
    _choose_valid(S.PRESET_IMAGE, IMAGE_SIZES)
    size = st.select_slider("Image size", IMAGE_SIZES, key=S.PRESET_IMAGE)
    patches = [p for p in (2, 4, 8, 14, 16, 32) if size % p == 0 and p < size]
    _choose_valid(S.PRESET_PATCH, patches)
    st.select_slider("Patch size P", patches, key=S.PRESET_PATCH)
    _choose_valid(S.PRESET_DIM, DIMS)
    dim = st.select_slider("Width D", DIMS, key=S.PRESET_DIM)
    heads = [h for h in (1, 2, 3, 4, 6, 8, 12, 16) if dim % h == 0]
    _choose_valid(S.PRESET_HEADS, heads)
    st.select_slider("Heads", heads, key=S.PRESET_HEADS)
    st.slider("Depth (blocks)", 1, 12, key=S.PRESET_DEPTH)


def current_spec() -> tuple[ModelSpec, bytes | None]:
    """The model the sidebar currently selects, and its bytes when it is an upload."""
    ss = st.session_state
    kind = ss.get(S.MODEL_KIND, "bundled")
    if kind == "preset":
        def get(key: str) -> int:
            return int(ss.get(key, S.DEFAULTS[key]))

        overrides = (
            ("image_size", get(S.PRESET_IMAGE)),
            ("patch_size", get(S.PRESET_PATCH)),
            ("dim", get(S.PRESET_DIM)),
            ("heads", get(S.PRESET_HEADS)),
            ("depth", get(S.PRESET_DEPTH)),
        )
        return ModelSpec("preset", preset=ss.get(S.PRESET_NAME, "tiny"), overrides=overrides), None
    if kind == "checkpoint":
        upload = ss.get(S.CHECKPOINT_UPLOAD)
        if upload is None:
            raise ValueError("Upload a .safetensors checkpoint in the sidebar, or pick another model.")
        data = upload.getvalue()
        return ModelSpec("checkpoint", digest=digest(data)), data
    if kind == "session":
        name = ss.get(S.SESSION_MODEL_NAME)
        models = ss[S.SESSION_MODELS]
        if not name or name not in models:
            raise ValueError("No model fine-tuned in this session yet: train one on the Fine-tune page.")
        data = models[name]
        return ModelSpec("session", name=name, digest=digest(data)), data
    if kind == "torchvision":
        return ModelSpec("torchvision", name=ss.get(S.TORCHVISION_NAME) or "vit_b_16"), None
    if kind == "hf":
        source = (ss.get(S.HF_SOURCE) or "").strip()
        if not source:
            raise ValueError("Type a Hugging Face model id or a local folder in the sidebar.")
        return ModelSpec("hf", name=source), None
    return ModelSpec("bundled"), None


def current_model() -> tuple[ModelSpec, LoadedModel] | None:
    """The selected model (shared, read-only), or None after showing why it could not load."""
    try:
        spec, data = current_spec()
        loaded = cached_model(spec, data)
        model_caption(loaded)
        return spec, loaded
    except (ValueError, OSError, RuntimeError) as exc:
        show_error(exc, "Model")
        return None


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
        return f"sample:{name}", sample.image, sample.mask
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


WORKING_SIDE = 1024  # uploads are decoded once and kept at most this large: models read 32-518 px


@st.cache_resource(max_entries=32, show_spinner=False)
def cached_upload(key: str, _data: bytes) -> Any:
    """Decode an upload once per file (errors are not cached, so a bad file is re-checked)."""
    image = load_image(_data)
    image.thumbnail((WORKING_SIDE, WORKING_SIDE))
    return image


def model_input(loaded: LoadedModel, image: Any, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The image as the model's normalised (1, 3, H, W) input."""
    return to_tensor(image, size or loaded.image_size, loaded.mean, loaded.std)


def trace_for(spec: ModelSpec, loaded: LoadedModel, image_key: str, image: Any):
    """Cached full trace of the current image through the current model."""
    x = model_input(loaded, image)
    return cached_trace(spec, image_key, tuple(loaded.image_size), loaded, x)


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


@st.cache_resource(max_entries=64, show_spinner="Computing the class-specific relevance…")
def cached_gradient_rollout(spec: ModelSpec, image_key: str, _loaded: LoadedModel, _image: Any, target: int):
    """Chefer et al. relevance map for one class, on a private copy of the model (numpy (gh, gw))."""
    import copy

    from vitcore.analysis import gradient_rollout

    model = copy.deepcopy(_loaded.model)
    x = model_input(_loaded, _image)
    return gradient_rollout(model, x, target)[0].detach().numpy()


@st.cache_resource(max_entries=64, show_spinner="Masking every patch in turn…")
def cached_occlusion_map(spec: ModelSpec, image_key: str, _loaded: LoadedModel, _image: Any, target: int):
    """Occlusion sensitivity (gh, gw) of one class (forward passes only, no hooks: shared model is fine)."""
    from vitcore.analysis import occlusion_map

    return occlusion_map(_loaded.model, model_input(_loaded, _image), target).detach().numpy()


@st.cache_resource(max_entries=32, show_spinner="Building and timing the model…")
def cached_playground(config: ViTConfig) -> dict[str, Any]:
    """A random model for a playground config, its measured latency and an attention-map function."""
    from explorer.playground import playground_model

    return playground_model(config)


@st.cache_resource(max_entries=64, show_spinner=False)
def cached_playground_attention(config: ViTConfig, image_key: str, _image: Any):
    """Last-layer CLS attention (gh, gw) of a playground model on one image, computed once."""
    import numpy as np

    from explorer.images import fit_to_size
    from explorer.playground import cls_attention_map

    resized = np.asarray(fit_to_size(_image, config.image_size))
    return cls_attention_map(cached_playground(config)["model"], resized)


def model_caption(loaded: LoadedModel) -> None:
    """One line under the sidebar model picker: what is loaded and its reproduction check."""
    meta = loaded.metadata
    line = f"{loaded.label} · {sum(p.numel() for p in loaded.model.parameters()) / 1e6:.2f} M parameters"
    if "reproduction_max_diff" in meta:
        line += f" · reproduction check: max |Δ| = {meta['reproduction_max_diff']:.1e}"
    if "val_accuracy" in meta:
        line += f" · val accuracy {float(meta['val_accuracy']):.1%}"
    st.sidebar.caption(line)
    if meta.get("notes"):
        st.sidebar.caption(str(meta["notes"]))


def enter_page() -> None:
    """Make sure the page runs inside the app's navigation (with its sidebar).

    On a fresh server, a first request for a deep link such as ``/attention`` is served by
    Streamlit's legacy ``pages/`` directory mode, which runs the page file alone. Switch the
    server to the ``st.navigation`` mode of ``streamlit_app.py`` and rerun: the same URL path then
    resolves to the same page, now with the shared sidebar and URL settings.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def page_inputs(title: str) -> tuple[ModelSpec, LoadedModel, str, Any, Any]:
    """Start a page that needs a model and an image: (spec, model, image key, image, mask).

    Stops the page (after the sidebar has said why) when either is missing.
    """
    enter_page()
    st.title(title)
    picked, img = current_model(), current_image()
    if picked is None or img is None:
        st.stop()
    spec, loaded = picked
    key, image, mask = img
    return spec, loaded, key, image, mask


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
