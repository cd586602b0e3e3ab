"""Checkpoints as ``.safetensors``: weights plus the config and metadata as JSON in the header.

Nothing here unpickles code. ``.pt``/``.pth`` files are read only with
``torch.load(weights_only=True)``; everything else must be a valid safetensors file.

A checkpoint is hostile input (students upload them). :func:`load_checkpoint` checks the file
in this order and stops at the first problem with a ``ValueError`` that says what to do:

1. the bytes: size limit, safetensors header (JSON, read without touching tensor data);
2. the config: valid ``ViTConfig`` fields, and a memory budget (weights, one input image and
   one attention map) that it must fit *before* anything is allocated;
3. the metadata: class names and the preprocessing record agree with the config (files written
   before the record, ``vitcore/1``, and with it split into three fields, ``vitcore/2``, still load);
4. the tensors: every parameter the config implies exists in the file with the right shape
   (compared against a model built on the ``meta`` device, which allocates nothing);
5. only then the tensors are read and the model is built.

The checks of steps 2-4 live in :mod:`vitcore.io.checks`; this module reads the bytes and the
safetensors header, runs the checks in that order, and saves.
"""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model.config import ViTConfig
from ..model.vit import VisionTransformer
from .checks import (
    check_budget,
    check_class_names,
    check_normalization,
    check_tensors,
    checked_metadata,
    config_from_dict,
    config_from_json,
    load_state_dict_checked,
    model_memory_bytes,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FORMAT",
    "load_checkpoint",
    "load_state_dict_checked",
    "model_memory_bytes",
    "save_checkpoint",
]

FORMAT = "vitcore/3"  # 3 stores the preprocessing record alone; 2 (record + normalization + image_size) and
# 1 (normalization + image_size, no record) still load
_READABLE_FORMATS = ("vitcore/1", "vitcore/2", "vitcore/3")
DEFAULT_MAX_BYTES = 2_000_000_000  # a checkpoint whose model needs more than this (float32) is refused
_MAX_HEADER = 100 * 2**20  # a safetensors header larger than this is not a checkpoint of ours
_MAX_TENSORS = 20_000  # ViT-22B has about 600 tensors; far more means a hostile or foreign file


# --------------------------------------------------------------------------- reading the file
def _read_bytes(source: Any, max_bytes: int) -> tuple[bytes, str]:
    """The checkpoint's bytes and a name for messages; refuses files larger than ``max_bytes``."""
    too_big = (f"is larger than the {max_bytes / 1e9:.1f} GB limit; if you trust it, pass a larger max_bytes")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>"
    if isinstance(source, io.IOBase):
        try:
            blob = source.read(max_bytes + 1)
        except (OSError, ValueError) as exc:
            raise ValueError(f"the uploaded checkpoint could not be read ({exc}); upload it again") from None
        if not isinstance(blob, (bytes, bytearray)):
            raise ValueError("the checkpoint must be opened in binary mode ('rb'), not as text")
        if len(blob) > max_bytes:
            raise ValueError(f"the uploaded checkpoint {too_big}")
        return bytes(blob), "<upload>"
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"a checkpoint is a path, bytes or a binary file object, got {type(source).__name__}")
    path = Path(source)
    shown = str(path) if len(str(path)) <= 120 else str(path)[:119] + "…"  # messages stay readable
    try:
        if not path.is_file():
            raise ValueError(f"{shown!r} does not exist or is not a file; pass a .safetensors checkpoint")
        if path.stat().st_size > max_bytes:
            raise ValueError(f"{shown!r} {too_big}")
        return path.read_bytes(), shown
    except OSError as exc:
        raise ValueError(f"{shown!r} could not be read ({exc.strerror or exc}); check the path") from None


def _looks_like_safetensors(blob: bytes) -> bool:
    """An 8-byte little-endian header length of a plausible size followed by '{'."""
    if len(blob) < 10:
        return False
    (n,) = struct.unpack("<Q", blob[:8])
    return 0 < n <= _MAX_HEADER and blob[8:9] == b"{"


def _safetensors_header(blob: bytes, where: str) -> dict[str, Any]:
    """The JSON header of a blob that looks like safetensors; ValueError when it is damaged."""
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise ValueError(f"{where} is truncated: its safetensors header promises {n} bytes but the file ends "
                         "before that; download or save it again")
    try:
        header = json.loads(blob[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError(f"{where} has a safetensors header that is not valid JSON; the file is damaged, "
                         "save it again") from None
    if not isinstance(header, dict):
        raise ValueError(f"{where} has a safetensors header that is not a JSON object; the file is damaged")
    return header


def _header_tensors(header: dict[str, Any], data_bytes: int, where: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of the tensors listed in a safetensors header, checked for form only."""
    tensors: dict[str, tuple[tuple[int, ...], str]] = {}
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if len(tensors) >= _MAX_TENSORS:
            raise ValueError(f"{where} lists more than {_MAX_TENSORS} tensors; this is not a vitcore checkpoint")
        ok = (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
              and isinstance(entry.get("shape"), list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(isinstance(o, int) and not isinstance(o, bool) for o in entry["data_offsets"]))
        if not ok:
            raise ValueError(f"{where}: the header entry of tensor {key!r} is malformed (it needs dtype, shape and "
                             "data_offsets); the file is damaged, save it again")
        tensors[key] = (tuple(entry["shape"]), entry["dtype"])
        end = max(end, entry["data_offsets"][1])
    if end > data_bytes:
        raise ValueError(f"{where} is truncated: its tensors need {end} bytes of data but only {data_bytes} follow "
                         "the header; download or save it again")
    return tensors


def _header_metadata(header: dict[str, Any], where: str) -> dict[str, str]:
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError(f"{where}: the safetensors __metadata__ must map names to strings; the file is damaged")
    return meta


def _check_format(found: str | None, where: str) -> None:
    """Formats this version reads: ours old and new, or none (a plain safetensors file with a config)."""
    if found is None or found in _READABLE_FORMATS:
        return
    if found.startswith("vitcore/"):
        raise ValueError(f"{where} was written in checkpoint format {found!r}, newer than this vitcore reads "
                         f"({', '.join(_READABLE_FORMATS)}); upgrade ViT Explorer (pip install -U vit-explorer)")
    raise ValueError(f"{where} says it is in format {found!r}, not a vitcore checkpoint; save it with "
                     "vitcore.save_checkpoint()")


def _metadata_from_json(text: str | None, where: str) -> Any:
    if text is None:
        return {}
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ValueError(f"{where} has metadata that is not JSON; re-save it with save_checkpoint()") from None


def _read_safetensors(blob: bytes, config: ViTConfig | None, max_bytes: int, where: str):
    header = _safetensors_header(blob, where)
    (n,) = struct.unpack("<Q", blob[:8])
    found = _header_tensors(header, len(blob) - 8 - n, where)
    meta = _header_metadata(header, where)
    _check_format(meta.get("format"), where)
    if config is None:
        config = config_from_json(meta.get("config"), where)
    check_budget(config, max_bytes, where)
    metadata = checked_metadata(_metadata_from_json(meta.get("metadata"), where), config, where)
    check_tensors(config, found, where)

    from safetensors.torch import load as load_safetensors

    try:
        state = load_safetensors(blob)
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{where} looks like safetensors but cannot be read ({exc}); the file may be truncated "
                         "or damaged, save it again") from None
    return config, metadata, state


def _read_torch(blob: bytes, config: ViTConfig | None, max_bytes: int, where: str):
    try:
        obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{where} could not be read as a weights-only PyTorch file ({type(exc).__name__}); only plain "
            "state dicts are accepted, never pickled code"
        ) from None
    metadata: Any = {}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        if config is None and "config" in obj:
            config = config_from_dict(obj["config"], where)
        metadata = {k: v for k, v in obj.items() if k not in ("state_dict", "config")}
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        raise ValueError(f"{where} is not a state dict of tensors; save model.state_dict() or use save_checkpoint()")
    if config is None:
        raise ValueError(f"{where} is a bare state dict without a config; pass config=ViTConfig.preset(...)")
    check_budget(config, max_bytes, where)
    metadata = checked_metadata(metadata, config, where)
    dtype_names = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}
    check_tensors(config, {k: (tuple(v.shape), dtype_names.get(v.dtype, str(v.dtype))) for k, v in obj.items()},
                   where)
    return config, metadata, obj


# --------------------------------------------------------------------------- public API
def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    class_names: list[str] | tuple[str, ...],
    normalization: Any = None,
    preprocessing: Any = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a VisionTransformer; LoRA adapters are merged first) to a ``.safetensors`` file.

    The model's preprocessing record (a :class:`vitcore.data.images.Preprocessing` or its dict) is
    stored with the weights; given only ``normalization`` (mean, std), the record fits the photo
    to the model's size and normalises with it.
    """
    from safetensors.torch import save_file

    from ..data.images import Preprocessing

    if hasattr(model, "merge_and_unload"):  # a peft model: fold the adapters into plain linears
        model = model.merge_and_unload()
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"save_checkpoint() writes a vitcore VisionTransformer, got {type(model).__name__}")
    config = model.config
    if not isinstance(class_names, (list, tuple)):
        raise ValueError(f"class_names must be a list of strings, got {type(class_names).__name__}")
    class_names = [str(c) for c in class_names]
    if config.num_classes and len(class_names) != config.num_classes:
        raise ValueError(
            f"{len(class_names)} class names were given but the model has {config.num_classes} outputs"
        )
    if not config.num_classes:
        class_names = check_class_names(class_names, 0, "save_checkpoint()")
    if preprocessing is None:
        if normalization is None:
            raise ValueError("save_checkpoint() needs the model's preprocessing= record or normalization=(mean, std)")
        normalization = check_normalization(normalization, config.in_channels, "save_checkpoint()")
        preprocessing = Preprocessing.for_model(config.image_size, normalization)
    elif isinstance(preprocessing, dict):
        preprocessing = Preprocessing.from_dict(preprocessing)
    if not isinstance(preprocessing, Preprocessing):
        raise ValueError(f"preprocessing must be a vitcore Preprocessing, got {type(preprocessing).__name__}")
    check_normalization(preprocessing.normalization, config.in_channels, "save_checkpoint()")
    views = ("normalization", "image_size")  # derived from the record and the config when loading, not stored
    metadata = {
        **{k: v for k, v in (extra or {}).items() if k not in views},
        "class_names": class_names,
        "preprocessing": preprocessing.to_dict(),
    }
    try:
        metadata_json = json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"extra metadata must be JSON-serialisable (finite numbers, strings, lists, dicts): {exc}"
                         ) from None
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{str(path)!r}: checkpoints are written as .safetensors; change the file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": FORMAT, "config": config.to_json(), "metadata": metadata_json})
    return path


def load_checkpoint(
    source: str | os.PathLike | bytes | io.IOBase,
    *,
    config: ViTConfig | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[VisionTransformer, dict[str, Any]]:
    """Read a checkpoint (path, bytes or file object) into ``(VisionTransformer in eval mode, metadata)``.

    ``.safetensors`` files carry their own config; a ``.pt``/``.pth`` state dict (read with
    ``weights_only=True``) needs ``config=`` unless it is a dict holding ``state_dict`` and ``config``.
    The metadata dict has ``class_names`` (one string per output; none for a ``num_classes=0``
    backbone), ``preprocessing`` (the stored record as a dict; for files written before it, one
    built from their normalisation), ``normalization`` {mean, std} and ``image_size`` (views of the
    record and the config), ``config`` and whatever ``extra`` held when it was saved.

    Any bad file (truncated, not a checkpoint, broken JSON, wrong types, a config that does not
    match the weights or needs more than ``max_bytes`` of memory) raises ``ValueError`` with a
    message saying what to do; nothing is allocated before the config and shapes are checked.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes={max_bytes!r} must be a positive number of bytes, e.g. 2_000_000_000")
    if config is not None and not isinstance(config, ViTConfig):
        raise ValueError(f"config must be a ViTConfig, got {type(config).__name__}; try ViTConfig.preset('tiny')")
    blob, name = _read_bytes(source, max_bytes)
    if _looks_like_safetensors(blob):
        config, metadata, state = _read_safetensors(blob, config, max_bytes, name)
    elif blob[:4] == b"PK\x03\x04" or blob[:1] == b"\x80":  # torch.save zip archive or legacy pickle
        config, metadata, state = _read_torch(blob, config, max_bytes, name)
    else:
        raise ValueError(f"{name} is neither a .safetensors checkpoint nor a PyTorch state dict; upload a checkpoint "
                         "written by vitcore (save_checkpoint) or a .pt/.pth state dict")
    model = VisionTransformer(config)
    load_state_dict_checked(model, state)
    return model.eval(), metadata

