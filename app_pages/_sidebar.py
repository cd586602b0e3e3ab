"""The sidebar every page shares: image and model pickers (widgets only; logic in explorer.specs).

Drawn on the first page before PyTorch is imported (see ``app_pages/_startup.py``): what needs
``vitcore`` or the shared caches is imported by the controls that use it.
"""

from __future__ import annotations

import sys

import streamlit as st

from app_pages._startup import cached_sample_names
from explorer import specs
from explorer import state as S
from explorer.specs import MODEL_KINDS
from explorer.texts import page_name

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"]


def sync_url(*keys: str) -> None:
    """Write the given settings into the URL so the current view can be shared.

    Only a value that differs from the URL's is written: each write is a message to the browser,
    and a class's reruns mostly change nothing.
    """
    params = st.query_params
    for key in keys:
        value = st.session_state.get(key)
        if value is not None and not isinstance(value, (list, dict)) and params.get(key) != str(value):
            params[key] = str(value)


def sidebar() -> None:
    """Image and model pickers shared by all pages."""
    S.init(st.session_state)
    if not st.session_state[S.URL_LOADED]:
        st.session_state[S.URL_LOADED] = True
        specs.apply_url_settings(st.session_state, st.query_params.to_dict())
    with st.sidebar:
        st.subheader("Image")
        source = st.radio(
            "Source", ["sample", "upload", "camera"], key=S.IMAGE_SOURCE, horizontal=True,
            format_func={"sample": "Gallery", "upload": "Upload", "camera": "Camera"}.get,
        )
        if source == "sample":
            names = cached_sample_names()
            if st.session_state.get(S.SAMPLE_NAME) not in names:
                st.session_state[S.SAMPLE_NAME] = names[0]
            st.selectbox("Sample", names, key=S.SAMPLE_NAME)
        elif source == "upload":
            st.file_uploader("Your image", type=UPLOAD_TYPES, key=S.UPLOAD)
        else:
            st.camera_input("Take a photo", key=S.CAMERA)

        st.subheader("Model")
        if st.session_state.get(S.MODEL_KIND) not in MODEL_KINDS:
            st.session_state[S.MODEL_KIND] = S.DEFAULTS[S.MODEL_KIND]
        st.selectbox("Model", list(MODEL_KINDS), key=S.MODEL_KIND, format_func=MODEL_KINDS.get)
        kind = st.session_state[S.MODEL_KIND]
        if kind in ("auto", "dinov2"):
            st.session_state[S.DINO_SIZE] = specs.nearest(st.session_state.get(S.DINO_SIZE), specs.DINO_SIZES)
            st.segmented_control("DINOv2 input size", specs.DINO_SIZES, key=S.DINO_SIZE,
                                 format_func=lambda s: f"{s} px ({s // 14}×{s // 14})",
                                 help="A larger input gives a finer patch grid (and costs more).")
        fast = sys.modules.get("explorer.fastpath")  # imported by the warm-up; the first paint stays torch-free
        if fast is not None and kind in ("auto", "dinov2"):
            st.caption(fast.status_line())
        if kind == "preset":
            _preset_controls()
        elif kind == "checkpoint":
            st.file_uploader("Checkpoint saved by ViT Explorer", type=["safetensors"], key=S.CHECKPOINT_UPLOAD)
        elif kind == "session":
            names = list(st.session_state[S.SESSION_MODELS])
            if names:
                st.selectbox("Fine-tuned model", names, key=S.SESSION_MODEL_NAME)
            else:
                st.info(f"No model trained in this session yet: train one on the {page_name('finetune')} page "
                        f"or teach one on the {page_name('teach')} page.")
        elif kind == "torchvision":
            name = st.selectbox("Architecture", specs.TORCHVISION_NAMES, key=S.TORCHVISION_NAME)
            st.caption("Uses weights from the local torch hub cache when present, random weights otherwise.")
            _download_controls(f"torchvision:{name}")
        elif kind == "hf":
            text = st.text_input("Hub id, or a folder under EXPLORER_MODELS_ROOT", key=S.HF_SOURCE,
                                 placeholder="google/vit-base-patch16-224")
            if specs.HUB_ID.fullmatch((text or "").strip()):
                _download_controls(f"hf:{text.strip()}")
    shared = [S.MODEL_KIND] + ([S.SAMPLE_NAME] if source == "sample" else [])
    shared += [S.PRESET_NAME] if kind == "preset" else []
    sync_url(*shared)


def _download_controls(source: str) -> None:
    """A download button for weights not in the local cache: size first, then a progress bar."""
    from app_pages._cache import cached_model
    from vitcore.pretrained import cached_path, download, download_size

    try:
        if cached_path(source) is not None:
            return
    except ValueError:
        return
    if not st.button("Download the weights", key=S.DOWNLOAD, help="Needs a network; saved in the standard cache"):
        return
    try:
        size = download_size(source)
        total = f"{size / 1e6:.0f} MB" if size else "size unknown"
        bar = st.progress(0.0, text=f"Downloading {source} ({total})…")

        def progress(done: int, whole: int | None) -> None:
            share = min(done / whole, 1.0) if whole else 0.0
            bar.progress(share, text=f"Downloading {source}: {done / 1e6:.0f} MB of {total}")

        download(source, progress=progress)
    except ValueError as exc:
        st.error(str(exc))
        return
    cached_model.clear()  # the entry built with random weights is rebuilt from the downloaded ones
    st.success(f"Downloaded {source}.")


def _apply_preset() -> None:
    """Reset the architecture sliders to the values of the preset just chosen."""
    st.session_state.update(specs.preset_values(st.session_state[S.PRESET_NAME]))


def _snap(key: str, options: list[int]) -> None:
    """Keep a slider's stored value among its options (the nearest valid one otherwise)."""
    st.session_state[key] = specs.nearest(st.session_state.get(key), options)


def _preset_controls() -> None:
    from vitcore import PRESETS
    from vitcore.model.config import TOKEN_MIXERS
    from vitcore.model.mixers import MIXER_LABELS

    if st.session_state.get(S.PRESET_NAME) not in PRESETS:
        st.session_state[S.PRESET_NAME] = S.DEFAULTS[S.PRESET_NAME]
    st.selectbox("Preset", list(PRESETS), key=S.PRESET_NAME, on_change=_apply_preset)
    _snap(S.PRESET_IMAGE, specs.IMAGE_SIZES)
    size = st.select_slider("Image size", specs.IMAGE_SIZES, key=S.PRESET_IMAGE)
    patches = specs.patch_options(size)
    _snap(S.PRESET_PATCH, patches)
    st.select_slider("Patch size P", patches, key=S.PRESET_PATCH)
    _snap(S.PRESET_DIM, specs.DIMS)
    dim = st.select_slider("Width D", specs.DIMS, key=S.PRESET_DIM)
    heads = specs.head_options(dim)
    _snap(S.PRESET_HEADS, heads)
    st.select_slider("Heads", heads, key=S.PRESET_HEADS)
    _snap(S.PRESET_DEPTH, list(range(1, specs.MAX_DEPTH + 1)))
    st.slider("Depth (blocks)", 1, specs.MAX_DEPTH, key=S.PRESET_DEPTH)
    if st.session_state.get(S.PRESET_MIXER) not in TOKEN_MIXERS:
        st.session_state[S.PRESET_MIXER] = "attention"
    st.selectbox("Token mixer", TOKEN_MIXERS, key=S.PRESET_MIXER, format_func=MIXER_LABELS.get,
                 help="Softmax attention as in the paper, or one of its replacements (see Beyond the CLS token)")
