"""From sidebar settings to a model spec, without Streamlit: the sidebar's logic, unit-tested.

The sidebar (``app_pages/_sidebar.py``) only draws widgets; what the settings mean (which model,
which architecture, which values stay valid when another one changes, what a shared URL may
set) is decided here, on any mapping (``st.session_state`` in the app, a dict in tests).

This module is on the first page's path (the sidebar is drawn before PyTorch is imported, see
``app_pages/_startup.py``), so it imports no PyTorch: :class:`ModelSpec` is plain data, and
``vitcore`` (whose package imports torch) is imported only by the functions that read a preset.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from explorer import state as S
from explorer.texts import page_name

__all__ = [
    "DIMS",
    "MODEL_KINDS",
    "ModelSpec",
    "HEADS",
    "IMAGE_SIZES",
    "TORCHVISION_NAMES",
    "digest",
    "head_options",
    "nearest",
    "patch_options",
    "preset_values",
    "spec_from_state",
    "url_settings",
]

IMAGE_SIZES = [32, 64, 96, 128, 160, 192, 224, 256, 384]
DIMS = [32, 64, 96, 128, 192, 256, 384, 512, 768]
HEADS = [1, 2, 3, 4, 6, 8, 12, 16]
MAX_DEPTH = 12
DINO_SIZES = [224, 336, 448]  # 16x16, 24x24 and 32x32 patch grids at P = 14
SHAPES_PREFIX = "shapes:"  # gallery names of the Shapes samples (explorer.samples)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")  # org/name on the Hugging Face hub
TORCHVISION_NAMES = ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"]

MODEL_KINDS = {
    "auto": "Automatic: DINOv2 for photos, the Shapes model for Shapes",
    "dinov2": "DINOv2 ViT-S/14 (real, self-supervised on photos)",
    "bundled": "Bundled Shapes model (trained)",
    "preset": "Random-initialised preset (you set the architecture)",
    "checkpoint": "Upload a checkpoint (.safetensors)",
    "session": "Fine-tuned in this session",
    "torchvision": "torchvision ViT",
    "hf": "Hugging Face ViT / DeiT / DINO",
}


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a kind plus the few values that identify it (hashable, cache key).

    :func:`explorer.models.build_model` turns one into a model.
    """

    kind: str = "bundled"
    preset: str = "tiny"
    overrides: tuple[tuple[str, Any], ...] = ()  # ViTConfig fields changed from the preset
    name: str = ""  # torchvision name, HF id/path, or session model name
    digest: str = ""  # sha256 of uploaded / session checkpoint bytes

    def label(self) -> str:
        """Short human-readable description."""
        if self.kind == "preset":
            changes = ", ".join(f"{k}={v}" for k, v in self.overrides)
            return f"random {self.preset}" + (f" ({changes})" if changes else "")
        if self.kind in ("torchvision", "hf", "session"):
            return f"{self.kind}: {self.name}"
        if self.kind == "checkpoint":
            return f"uploaded checkpoint {self.digest[:8]}"
        if self.kind == "dinov2":
            return f"DINOv2 ViT-S/14 at {self.input_size} px"
        return "bundled Shapes micro ViT"

    @property
    def input_size(self) -> int:
        """The input side for models that take several (DINOv2: 224 by default, 448 for a 32x32 grid)."""
        return int(dict(self.overrides).get("input_size", 224))


def digest(data: bytes) -> str:
    """sha256 hex digest of bytes (identifies uploads in cache keys)."""
    return hashlib.sha256(data).hexdigest()


def patch_options(image_size: int) -> list[int]:
    """Patch sizes the sidebar offers for a square image of this side."""
    from vitcore.model.config import PATCH_SIZES

    return [p for p in PATCH_SIZES if image_size % p == 0 and p < image_size]


def head_options(dim: int) -> list[int]:
    """Head counts the sidebar offers for width ``dim`` (they must divide it)."""
    from vitcore.model.config import divisors

    return [h for h in HEADS if h in divisors(dim)]


def nearest(value: Any, options: list[int]) -> int:
    """``value`` if it is one of ``options``, else the nearest option (the first for non-numbers)."""
    if value in options:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return options[0]
    return min(options, key=lambda o: abs(o - value))


def preset_values(name: str) -> dict[str, int]:
    """The architecture sliders' values for a preset (depth capped at the slider's maximum)."""
    from vitcore.model.config import ViTConfig

    base = ViTConfig.preset(name)
    size = nearest(base.image_size[0], IMAGE_SIZES)
    return {
        S.PRESET_IMAGE: size,
        S.PRESET_PATCH: nearest(base.patch_size, patch_options(size)),
        S.PRESET_DIM: nearest(base.dim, DIMS),
        S.PRESET_HEADS: nearest(base.heads, head_options(nearest(base.dim, DIMS))),
        S.PRESET_DEPTH: min(base.depth, MAX_DEPTH),
    }


def _int(state: Mapping[str, Any], key: str) -> int:
    value = state.get(key, S.DEFAULTS[key])
    try:
        return int(value)
    except (TypeError, ValueError):
        return int(S.DEFAULTS[key])


def preset_config(state: Mapping[str, Any]) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """(preset name, overrides) of the architecture sliders, each snapped to a value its slider offers."""
    from vitcore.model.config import PRESETS, TOKEN_MIXERS

    name = state.get(S.PRESET_NAME, S.DEFAULTS[S.PRESET_NAME])
    if name not in PRESETS:
        name = S.DEFAULTS[S.PRESET_NAME]
    size = nearest(_int(state, S.PRESET_IMAGE), IMAGE_SIZES)
    dim = nearest(_int(state, S.PRESET_DIM), DIMS)
    overrides = (
        ("image_size", size),
        ("patch_size", nearest(_int(state, S.PRESET_PATCH), patch_options(size))),
        ("dim", dim),
        ("heads", nearest(_int(state, S.PRESET_HEADS), head_options(dim))),
        ("depth", min(max(_int(state, S.PRESET_DEPTH), 1), MAX_DEPTH)),
    )
    mixer = state.get(S.PRESET_MIXER, "attention")
    if mixer != "attention" and mixer in TOKEN_MIXERS:  # attention stays implicit: the paper's ViT
        overrides += (("token_mixer", mixer),)
    return name, overrides


def spec_from_state(state: Mapping[str, Any]) -> tuple[ModelSpec, bytes | None]:
    """The model the sidebar settings select, and its bytes when it is an upload or a session model.

    Raises ValueError with what to do when the choice is incomplete (no file uploaded yet, ...).
    """
    kind = state.get(S.MODEL_KIND, S.DEFAULTS[S.MODEL_KIND])
    if kind == "preset":
        name, overrides = preset_config(state)
        return ModelSpec("preset", preset=name, overrides=overrides), None
    if kind == "checkpoint":
        upload = state.get(S.CHECKPOINT_UPLOAD)
        if upload is None:
            raise ValueError("Upload a .safetensors checkpoint in the sidebar, or pick another model.")
        data = upload.getvalue()
        return ModelSpec("checkpoint", digest=digest(data)), data
    if kind == "session":
        name = state.get(S.SESSION_MODEL_NAME)
        models = state.get(S.SESSION_MODELS) or {}
        if not name or name not in models:
            raise ValueError(f"No model trained in this session yet: train one on the {page_name('finetune', False)} "
                             f"page or teach one on the {page_name('teach', False)} page.")
        data = models[name]
        return ModelSpec("session", name=name, digest=digest(data)), data
    if kind == "torchvision":
        name = state.get(S.TORCHVISION_NAME) or TORCHVISION_NAMES[0]
        if name not in TORCHVISION_NAMES:
            raise ValueError(f"unknown torchvision model {name!r}; choose one of {TORCHVISION_NAMES}")
        return ModelSpec("torchvision", name=name), None
    if kind == "hf":
        source = str(state.get(S.HF_SOURCE) or "").strip()
        if not source:
            raise ValueError("Type a Hugging Face model id or a local folder in the sidebar.")
        return ModelSpec("hf", name=source), None
    if kind == "auto":  # a real photo model for photos, the Shapes model for Shapes
        shapes = state.get(S.IMAGE_SOURCE, "sample") == "sample" and str(state.get(S.SAMPLE_NAME, "")).startswith(
            SHAPES_PREFIX)
        kind = "bundled" if shapes else "dinov2"
    if kind == "dinov2":
        size = nearest(_int(state, S.DINO_SIZE), DINO_SIZES)
        return ModelSpec("dinov2", overrides=(("input_size", size),)), None
    if kind in S.SIMPLE_MODEL_KINDS:
        return ModelSpec(kind), None
    raise ValueError(f"unknown model choice {kind!r}; pick a model in the sidebar")


def url_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a shared URL may set, parsed and typed; anything malformed is left out."""
    out: dict[str, Any] = {}
    for key in S.URL_KEYS:
        if key not in params:
            continue
        raw = params[key]
        if isinstance(raw, list):
            raw = raw[-1] if raw else ""
        raw = str(raw)[:200]
        if key in S.INT_URL_KEYS:
            try:
                value = int(raw)
            except ValueError:
                continue
            if not 0 <= value <= 100_000:
                continue
            out[key] = value
        else:
            out[key] = raw
    return out


def apply_url_settings(state: MutableMapping[str, Any], params: Mapping[str, Any]) -> None:
    """Seed session state from the URL (once per session: the caller checks)."""
    state.update(url_settings(params))
