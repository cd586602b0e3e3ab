"""Hugging Face ViT / DeiT / DINO / DINOv2 as vitcore models: finding and loading them (a local folder or
a cached hub id, safe weights only), their preprocessing, and which sources an app may accept.

The conversion itself (which classes, the config and weight mapping, DINOv2's LayerScale and
registers) is :mod:`vitcore.pretrained.hf_convert`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model.vit import VisionTransformer
from .common import HF_DEFAULT_MEAN, HF_DEFAULT_STD, strip_prefix
from .hf_convert import DINOV2_TYPES, HF_ARCHITECTURES, HF_REFUSED, convert_hf

__all__ = ["MODELS_ROOT_ENV", "from_hf", "from_hf_source", "load_hf", "models_root_from_env", "resolve_hf_source"]

# Parameters a checkpoint may lack without changing what vitcore reproduces: the pooler (not
# reproduced) and DINOv2's mask token (used only for masked pre-training).
_HF_OPTIONAL_KEYS = re.compile(r"^(.*\.)?(pooler\..*|embeddings\.mask_token)$")
_HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hf_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode()) or os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES")


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1


def hf_cached(repo_id: str, filename: str) -> str | None:
    """The cached path of ``filename`` in ``repo_id``, or None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # an id that is not a valid repo name: nothing can be cached under it
        return None
    return found if isinstance(found, str) else None


def _hf_locate(id_or_path: str, download: bool, folders: bool = True) -> tuple[str, bool, str | None]:
    """(what to pass to from_pretrained, local_files_only, preprocessor_config.json path or None).

    Runs before transformers is imported, so a missing model fails in well under a second. With
    ``folders=False`` the text is a hub id only: no local path is ever looked at.
    """
    text = strip_prefix(id_or_path, "hf:")
    if not folders and not (HUB_ID_PATTERN.match(text) and ".." not in text):
        raise ValueError(f"{text!r} is not a Hugging Face model id (org/name, e.g. 'facebook/dinov2-small')")
    folder = Path(text).expanduser()
    if folders and folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"{folder} has no config.json; save the model there with model.save_pretrained('{folder}')"
            )
        if not any((folder / f).is_file() for f in _HF_WEIGHT_FILES):
            raise ValueError(f"{folder} has a config.json but no weights; expected one of {list(_HF_WEIGHT_FILES)}")
        pre = folder / "preprocessor_config.json"
        return str(folder), True, str(pre) if pre.is_file() else None
    if folders and (_looks_like_path(text) or Path(text).exists()):
        raise ValueError(
            f"the folder {text!r} does not exist (or is not a folder); give a Hugging Face model folder or id"
        )

    local_only = not download or hf_offline()
    config = hf_cached(text, "config.json")
    weights = [f for f in _HF_WEIGHT_FILES if hf_cached(text, f)]
    if local_only and (config is None or not weights):
        missing = "config.json" if config is None else f"a weights file (one of {list(_HF_WEIGHT_FILES)})"
        how = (
            "HF_HUB_OFFLINE is set; unset it to download"
            if hf_offline()
            else "pass download=True to fetch it, or run `hf download " + text + "`"
        )
        raise ValueError(
            f"the Hugging Face model {text!r} is not in the local cache ({missing} missing under "
            f"{Path(_hf_cache_dir()) / ('models--' + text.replace('/', '--'))}); {how}, "
            f"or give a local folder saved with save_pretrained"
        )
    return text, local_only, hf_cached(text, "preprocessor_config.json")


def load_hf(id_or_path: str, download: bool = False, *, folders: bool = True) -> nn.Module:
    """A Hugging Face ViT / DeiT / DINOv2 from a local folder or cached id (eager attention, safe weights only).

    Weights that leave any of the model's tensors at random initialisation are refused. With
    ``folders=False`` a string is only ever a hub id (for text typed by a user: see
    :func:`from_hf_source`).
    """
    where, local_only, _ = _hf_locate(id_or_path, download, folders)
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(where, local_files_only=local_only)
    except Exception as err:
        raise ValueError(f"could not read the config of {where!r}: {err}") from err
    model_type = getattr(config, "model_type", None)
    if model_type not in HF_ARCHITECTURES:
        raise ValueError(
            f"{where!r} is a {model_type!r} model; vitcore reproduces the Hugging Face model types "
            f"{list(HF_ARCHITECTURES)}"
        )
    supported = HF_ARCHITECTURES[model_type]
    architecture = (getattr(config, "architectures", None) or [supported[0]])[0]
    if architecture in HF_REFUSED:
        raise ValueError(
            f"{where!r} is a {architecture}: {HF_REFUSED[architecture]}, which vitcore's single linear head does "
            f"not reproduce; vitcore reproduces {list(supported)} (the backbone, features only)"
        )
    if architecture not in supported:
        raise ValueError(f"{where!r} is a {architecture}; vitcore reproduces {list(supported)}")
    try:
        model, info = getattr(transformers, architecture).from_pretrained(
            where,
            local_files_only=local_only,
            attn_implementation="eager",  # attentions come back as matrices, as vitcore's probe sees them
            weights_only=True,  # a pickled .bin is unpickled only as tensors
            trust_remote_code=False,
            dtype=torch.float32,
            output_loading_info=True,
        )
    except Exception as err:
        raise ValueError(
            f"could not load the weights of {where!r}: {err}. A damaged safetensors file or a pickled file with "
            f"code is refused; download it again or re-save it with save_pretrained (safetensors)"
        ) from err
    _check_loading_info(where, architecture, info)
    return model.eval()


def _check_loading_info(where: str, architecture: str, info: dict[str, Any]) -> None:
    """Refuse a checkpoint that left some of the model's tensors at their random initialisation.

    transformers only logs missing keys and initialises them randomly, so a folder whose weights
    belong to another model would otherwise load "successfully" as a random network.
    """
    missing = sorted(k for k in info.get("missing_keys", ()) if not _HF_OPTIONAL_KEYS.match(k))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if not missing and not mismatched:
        return
    unexpected = sorted(info.get("unexpected_keys", ()))
    problems = []
    if missing:
        problems.append(f"{len(missing)} of the model's tensors are missing from the weights file (e.g. {missing[:3]})")
    if mismatched:
        problems.append(f"{len(mismatched)} have the wrong shape (e.g. {mismatched[:3]})")
    extra = ""
    if unexpected:
        extra = f"; the file holds {len(unexpected)} tensors the model does not use (e.g. {unexpected[:3]})"
    raise ValueError(
        f"the weights in {where!r} do not fit its config ({architecture}): {' and '.join(problems)}{extra}. "
        f"They would start from random values; save the model again with save_pretrained, or fix config.json"
    )


def _read_preprocessor(path: str | None) -> dict[str, Any]:
    """mean / std (and sizes) from a preprocessor_config.json, or Hugging Face's defaults."""
    out: dict[str, Any] = {"normalization": {"mean": HF_DEFAULT_MEAN, "std": HF_DEFAULT_STD}, "resize_size": None}
    if path is None:
        return out
    with open(path, encoding="utf-8") as f:
        pre = json.load(f)
    if pre.get("do_normalize", True):
        mean, std = pre.get("image_mean", HF_DEFAULT_MEAN), pre.get("image_std", HF_DEFAULT_STD)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    out["normalization"] = {"mean": tuple(float(m) for m in mean), "std": tuple(float(s) for s in std)}
    size = pre.get("size")
    if isinstance(size, dict) and "height" in size:
        out["resize_size"] = (int(size["height"]), int(size["width"]))
    elif isinstance(size, dict) and "shortest_edge" in size:
        out["resize_size"] = int(size["shortest_edge"])  # resize the shorter side (DINOv2's BitImageProcessor)
    elif isinstance(size, int):
        out["resize_size"] = (size, size)
    crop = pre.get("crop_size")
    if pre.get("do_center_crop") and isinstance(crop, dict) and "height" in crop:
        out["image_size"] = (int(crop["height"]), int(crop["width"]))  # what the model sees after the crop
    return out


def from_hf(
    model_or_id_or_path: nn.Module | str, download: bool = False, *, folders: bool = True
) -> tuple[VisionTransformer, dict[str, Any]]:
    """A Hugging Face ViT / DeiT / DINO ViT (module, local folder or cached hub id) as (vitcore model, metadata).

    Supported: ViTModel (DINO; no head, so ``num_classes=0`` and the model returns CLS features;
    the optional pooler is not reproduced), ViTForImageClassification, DeiTModel,
    DeiTForImageClassification (class head on CLS only), DeiTForImageClassificationWithTeacher
    (distillation token, the two heads averaged as at inference), Dinov2Model and
    Dinov2WithRegistersModel (features only; plain MLP, SwiGLU is refused). A hub id is read from
    the local cache only, unless ``download=True`` and HF_HUB_OFFLINE is not set (or use
    :func:`vitcore.pretrained.download` first). Weights that leave any of the model's tensors
    uninitialised are refused. ``folders=False``: a string is a hub id only, never a local path.
    Metadata: source, family, architecture, class_names (from id2label), normalization {mean, std}
    (preprocessor_config.json, else 0.5), image_size, resize_size, notes.
    """
    preprocessor = None
    if isinstance(model_or_id_or_path, str):
        _, _, preprocessor = _hf_locate(model_or_id_or_path, download, folders)
        hf = load_hf(model_or_id_or_path, download=download, folders=folders)
        source = f"hf:{strip_prefix(model_or_id_or_path, 'hf:')}"
    elif isinstance(model_or_id_or_path, nn.Module):
        hf = model_or_id_or_path
        name = getattr(hf, "name_or_path", "") or ""  # the folder or hub id it was loaded from, if any
        if name and (Path(name) / "preprocessor_config.json").is_file():
            preprocessor = str(Path(name) / "preprocessor_config.json")
        elif name and not _looks_like_path(name):
            preprocessor = hf_cached(name, "preprocessor_config.json")
        source = f"hf:{name or type(hf).__name__}"
    else:
        raise ValueError("expected a Hugging Face ViT/DeiT/DINOv2 model, a local folder or a hub id")

    model, architecture = convert_hf(hf)
    num_classes = model.config.num_classes
    id2label = getattr(hf.config, "id2label", None) or {}
    labels = {int(k): str(v) for k, v in id2label.items()}
    class_names = [labels.get(i, f"class_{i}") for i in range(num_classes)]
    notes = []
    if getattr(hf, "pooler", None) is not None:
        notes.append("the Hugging Face pooler (dense + tanh on CLS) is not reproduced; compare last_hidden_state")
    if architecture == "DeiTForImageClassification":
        notes.append("DeiT without teacher: the head reads the CLS token only (head_dist is None)")
    if hf.config.model_type in DINOV2_TYPES:
        notes.append("DINOv2: LayerScale is folded into attn.proj and mlp.fc2 (exact); the model returns CLS features")
    if model.config.num_registers:
        notes.append(f"{model.config.num_registers} register tokens after CLS, without position embedding")
    meta: dict[str, Any] = {
        "source": source,
        "family": f"hf-{hf.config.model_type}",
        "architecture": architecture,
        "class_names": class_names,
        "image_size": model.config.image_size,  # replaced by the processor's crop size when it has one
        **_read_preprocessor(preprocessor),
        "notes": notes,
    }
    return model, meta


# --------------------------------------------------------------------------- sources an app may accept
MODELS_ROOT_ENV = "EXPLORER_MODELS_ROOT"
# A hub id: "org/name", each part letters, digits, "-", "_", "."; no "..", no leading "." or "-".
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def models_root_from_env() -> Path | None:
    """The folder named by ``EXPLORER_MODELS_ROOT``, or None when it is unset or empty."""
    value = os.environ.get(MODELS_ROOT_ENV, "").strip()
    return Path(value) if value else None


def resolve_hf_source(text: str, models_root: str | os.PathLike | None) -> str:
    """What a user typed as a Hugging Face source -> a hub id or a model folder under ``models_root``.

    Accepted: a hub id ``org/name`` (optionally ``hf:org/name``), or a folder inside
    ``models_root`` given relative to it or as an absolute path (symlinks are resolved first, so a
    link cannot lead out of the root). With ``models_root=None`` (``EXPLORER_MODELS_ROOT`` unset,
    see :func:`models_root_from_env`) no server folder is accepted at all. Everything else is one
    ValueError whose text depends only on what was typed, never on what exists on the server, so
    the answer reveals nothing about other paths. Returns the hub id, or the resolved folder path
    as a string. Load it with ``from_hf(source, folders=Path(source).is_absolute())`` (a hub id must
    not be read as a folder relative to the server's working directory), or use
    :func:`from_hf_source`, which does both steps.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("give a Hugging Face model id such as 'facebook/dinov2-small'")
    text = strip_prefix(text.strip(), "hf:")
    example = "org/name, e.g. 'google/vit-base-patch16-224'"
    if models_root is None:
        refused = ValueError(
            f"{text!r} is not a Hugging Face model id ({example}); server folders are off "
            f"({MODELS_ROOT_ENV} is not set)"
        )
    else:
        refused = ValueError(
            f"{text!r} is neither a Hugging Face model id ({example}) nor a model folder under "
            f"the models root ({MODELS_ROOT_ENV})"
        )
    if models_root is not None and "\x00" not in text:
        root = Path(models_root).resolve()
        candidate = Path(text) if Path(text).is_absolute() else root / text
        try:
            folder = candidate.resolve()
        except (OSError, RuntimeError):  # a symlink loop or an unreadable component: as if absent
            folder = None
        if folder is not None and folder != root and folder.is_relative_to(root) and folder.is_dir():
            return str(folder)
    if HUB_ID_PATTERN.match(text) and ".." not in text:
        return text
    raise refused


def from_hf_source(
    text: str, models_root: str | os.PathLike | None, download: bool = False
) -> tuple[VisionTransformer, dict[str, Any], nn.Module]:
    """:func:`resolve_hf_source`, then load: (vitcore model, metadata, the Hugging Face reference).

    For text typed into an app: a hub id is read from the cache only (or fetched with
    ``download=True``) and never as a local folder; a folder must lie under ``models_root``, and
    the metadata's ``source`` names it relative to the root, so no server path is shown. The
    reference (eager attention) is returned for :func:`vitcore.pretrained.verify`.
    """
    source = resolve_hf_source(text, models_root)
    folders = Path(source).is_absolute()
    shown = Path(source).relative_to(Path(models_root).resolve()).as_posix() if folders else source
    try:
        _, _, preprocessor = _hf_locate(source, download, folders)
        reference = load_hf(source, download=download, folders=folders)
        model, meta = from_hf(reference)
    except ValueError as err:  # the same explanation, with server paths replaced by what the user typed
        message = str(err).replace(source, shown)
        if models_root is not None:
            message = message.replace(str(Path(models_root).resolve()), "<models root>")
        message = message.replace(_hf_cache_dir(), "<Hugging Face cache>")
        raise ValueError(message) from None
    meta.update(_read_preprocessor(preprocessor) if preprocessor else {})
    meta["source"] = f"hf:{shown}"
    return model, meta, reference
