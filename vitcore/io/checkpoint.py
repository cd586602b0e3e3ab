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
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model.config import ViTConfig
from ..model.cost import parameter_count
from ..model.vit import VisionTransformer

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
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}  # safetensors names of the dtypes a weight may be stored in
_BYTES_PER_VALUE = 4  # float32


# --------------------------------------------------------------------------- metadata checks
def _check_class_names(class_names: Any, num_classes: int, where: str) -> list[str]:
    """A list of ``num_classes`` strings (none for a head-less backbone), or a ValueError."""
    if not isinstance(class_names, (list, tuple)):
        raise ValueError(f"{where}: class_names must be a list of strings, got {type(class_names).__name__}; "
                         "re-save it with save_checkpoint(class_names=[...])")
    bad = [(i, c) for i, c in enumerate(class_names) if not isinstance(c, str)]
    if bad:
        i, c = bad[0]
        raise ValueError(f"{where}: class name #{i} is {c!r} ({type(c).__name__}), not a string; "
                         "class names must be text such as 'cat'")
    if len(class_names) != num_classes:
        if num_classes == 0:
            raise ValueError(f"{where}: the model has no classification head (num_classes=0, a feature backbone) "
                             f"but {len(class_names)} class names are listed; a backbone has none")
        raise ValueError(f"{where}: lists {len(class_names)} class names for a {num_classes}-class head; "
                         f"give exactly one name per output")
    return list(class_names)


def _number_list(value: Any, what: str, where: str) -> list[float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: normalization {what} must be a list of numbers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{where}: normalization {what} {value!r} must hold finite numbers")
        out.append(float(v))
    return out


def _check_normalization(normalization: Any, channels: int, where: str) -> dict[str, list[float]]:
    """``{"mean": [...], "std": [...]}`` with one finite value per input channel and std > 0."""
    if isinstance(normalization, dict):
        if set(normalization) != {"mean", "std"}:
            raise ValueError(f"{where}: normalization must have exactly the keys 'mean' and 'std', "
                             f"got {sorted(map(str, normalization))}")
        mean, std = normalization["mean"], normalization["std"]
    elif isinstance(normalization, (list, tuple)) and len(normalization) == 2:
        mean, std = normalization
    else:
        raise ValueError(f"{where}: normalization={normalization!r} must be (mean, std) or "
                         "{'mean': [...], 'std': [...]}")
    mean, std = _number_list(mean, "mean", where), _number_list(std, "std", where)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"{where}: normalization mean {mean} and std {std} need one value per input channel; "
                         f"the model reads {channels} channel(s)")
    if any(s <= 0 for s in std):
        raise ValueError(f"{where}: normalization std {std} must be > 0 for every channel "
                         "(dividing by 0 would turn every image into NaN)")
    return {"mean": mean, "std": std}


def _check_image_size(image_size: Any, config: ViTConfig, where: str) -> list[int]:
    expected = list(config.image_size)
    if not isinstance(image_size, (list, tuple)) or list(image_size) != expected:
        raise ValueError(f"{where}: metadata image_size {image_size!r} disagrees with the config's {expected}; "
                         "the weights follow the config, so re-save the checkpoint with save_checkpoint()")
    return expected


def _check_preprocessing(metadata: dict[str, Any], config: ViTConfig, where: str):
    """The stored preprocessing record, validated; checkpoints from before it get one from their normalisation.

    ``metadata["normalization"]``, when present (``vitcore/1`` and ``/2`` files), has been checked already.
    """
    from ..data.images import Preprocessing

    record = metadata.get("preprocessing")
    try:
        if record is None:
            c = config.in_channels
            norm = metadata.get("normalization") or {"mean": [0.5] * c, "std": [0.5] * c}
            pre = Preprocessing.for_model(config.image_size, (norm["mean"], norm["std"]))
        else:
            pre = Preprocessing.from_dict(record)
    except ValueError as exc:
        raise ValueError(f"{where}: bad preprocessing record ({exc}); re-save the checkpoint") from None
    if pre.channels != config.in_channels:
        raise ValueError(f"{where}: the preprocessing record normalises {pre.channels} channel(s) but the model "
                         f"reads {config.in_channels}; re-save the checkpoint with matching mean and std")
    return pre


def _checked_metadata(metadata: Any, config: ViTConfig, where: str) -> dict[str, Any]:
    """The metadata dict with class names and the preprocessing record checked (defaults filled in).

    The record is the one source of the model's input: ``normalization`` and ``image_size`` are
    views of it (and of the config) for readers of older metadata, no longer stored.
    """
    if not isinstance(metadata, dict):
        raise ValueError(f"{where}: the metadata must be a JSON object (a dict), got {type(metadata).__name__}; "
                         "re-save it with save_checkpoint()")
    metadata = dict(metadata)
    n, c = config.num_classes, config.in_channels
    metadata["class_names"] = _check_class_names(
        metadata.get("class_names", [f"class_{i}" for i in range(n)]), n, where)
    if "normalization" in metadata:  # vitcore/1 and /2 files stored it next to (or instead of) the record
        metadata["normalization"] = _check_normalization(metadata["normalization"], c, where)
    if "image_size" in metadata:
        _check_image_size(metadata["image_size"], config, where)
    pre = _check_preprocessing(metadata, config, where)
    metadata["preprocessing"] = pre.to_dict()
    metadata["normalization"] = {"mean": list(pre.mean), "std": list(pre.std)}  # views of the record
    metadata["image_size"] = list(config.image_size)
    metadata["config"] = config.to_dict()
    return metadata


# --------------------------------------------------------------------------- config checks
_MAX_CONFIG_INT = 2**20  # no honest ViT has a side, width, depth or class count above this


def _check_config_ints(data: Any, where: str) -> None:
    """Refuse absurd integers before ViTConfig sees them (its error messages list divisors, O(n))."""
    if not isinstance(data, dict):
        return  # ViTConfig.from_dict explains
    size = data.get("image_size")
    values = {f"image_size[{i}]": v for i, v in enumerate(size)} if isinstance(size, (list, tuple)) else {}
    values["image_size"] = size
    values.update({k: data.get(k) for k in ("patch_size", "in_channels", "num_classes", "dim", "depth", "heads")})
    for key, value in values.items():
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_CONFIG_INT:
            raise ValueError(f"{where} has an invalid config in its metadata: {key}={value} is far beyond any "
                             f"Vision Transformer (limit {_MAX_CONFIG_INT:,}); the file is not a usable checkpoint")


def _config_from_dict(data: Any, where: str) -> ViTConfig:
    """A ViTConfig from untrusted JSON data; every failure becomes a ValueError naming the file."""
    _check_config_ints(data, where)
    try:
        return ViTConfig.from_dict(data)
    except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as exc:
        raise ValueError(f"{where} has an invalid config in its metadata: {exc}") from None


def _config_from_json(text: Any, where: str) -> ViTConfig:
    if text is None:
        raise ValueError(f"{where} has no vitcore config in its metadata; pass config= (a ViTConfig)")
    if not isinstance(text, str):
        raise ValueError(f"{where} has a config that is not a JSON string; re-save it with save_checkpoint()")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ValueError(f"{where} has a config that is not valid JSON; re-save it with save_checkpoint()") from None
    return _config_from_dict(data, where)


def model_memory_bytes(config: ViTConfig) -> int:
    """Float32 bytes of the weights plus one input image plus one attention map (all heads)."""
    h, w = config.image_size
    tokens = config.num_prefix_tokens + config.num_patches
    values = parameter_count(config) + config.in_channels * h * w + config.heads * tokens * tokens
    return _BYTES_PER_VALUE * values


def _check_budget(config: ViTConfig, max_bytes: int, where: str) -> None:
    """Refuse configs whose model would not fit ``max_bytes``, before anything is allocated."""
    need = model_memory_bytes(config)
    if need > max_bytes:
        h, w = config.image_size
        raise ValueError(
            f"{where}: its config needs about {need / 1e9:.1f} GB ({parameter_count(config):,} parameters, "
            f"{h}x{w} input, {config.num_prefix_tokens + config.num_patches:,} tokens, depth {config.depth}); "
            f"the limit is {max_bytes / 1e9:.1f} GB. If you trust this file, pass a larger max_bytes"
        )


# --------------------------------------------------------------------------- tensor checks
def _expected_tensors(config: ViTConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every state-dict entry of ``VisionTransformer(config)``, allocating nothing."""
    with torch.device("meta"):
        model = VisionTransformer(config)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def _describe_mismatch(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> str | None:
    """What differs between two name -> shape maps (model order first), or None when they agree."""
    missing = [k for k in expected if k not in found]
    unexpected = sorted(k for k in found if k not in expected)
    shapes = [f"{k}: checkpoint {found[k]} vs model {expected[k]}"
              for k in expected if k in found and found[k] != expected[k]]
    if not (missing or unexpected or shapes):
        return None

    def show(items: list[str]) -> str:
        return ", ".join(items[:8]) + (f" … (+{len(items) - 8} more)" if len(items) > 8 else "")

    parts = []
    if shapes:
        parts.append(f"shapes that differ ({len(shapes)}): {show(shapes)}")
    if missing:
        parts.append(f"missing keys ({len(missing)}): {show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {show(unexpected)}")
    return ("the weights do not fit the model config; " + "; ".join(parts)
            + ". Check that the checkpoint was saved with this config (preset, image size, classes)")


def _check_tensors(config: ViTConfig, found: dict[str, tuple[tuple[int, ...], str]], where: str) -> None:
    """Every tensor the config implies is in the file with the right shape and a floating-point dtype."""
    if len(found) < config.depth:  # each block has weights; also keeps the meta build below cheap
        raise ValueError(f"{where}: the config has depth {config.depth} but the file holds only {len(found)} "
                         "tensors; the config does not belong to these weights")
    expected = _expected_tensors(config)
    problem = _describe_mismatch({k: s for k, (s, _) in expected.items()}, {k: s for k, (s, _) in found.items()})
    if problem:
        raise ValueError(f"{where}: {problem}")
    for key, (_, dtype) in found.items():
        if expected[key][1].is_floating_point and dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{where}: tensor {key!r} is stored as {dtype}; weights must be floating point "
                             f"({', '.join(sorted(_FLOAT_DTYPES))})")


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict(strict=True)`` with a ValueError listing missing/unexpected keys and shape mismatches."""
    problem = _describe_mismatch({k: tuple(v.shape) for k, v in model.state_dict().items()},
                                 {k: tuple(v.shape) for k, v in state.items()})
    if problem:
        raise ValueError(problem)
    model.load_state_dict(state, strict=True)


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
        config = _config_from_json(meta.get("config"), where)
    _check_budget(config, max_bytes, where)
    metadata = _checked_metadata(_metadata_from_json(meta.get("metadata"), where), config, where)
    _check_tensors(config, found, where)

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
            config = _config_from_dict(obj["config"], where)
        metadata = {k: v for k, v in obj.items() if k not in ("state_dict", "config")}
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        raise ValueError(f"{where} is not a state dict of tensors; save model.state_dict() or use save_checkpoint()")
    if config is None:
        raise ValueError(f"{where} is a bare state dict without a config; pass config=ViTConfig.preset(...)")
    _check_budget(config, max_bytes, where)
    metadata = _checked_metadata(metadata, config, where)
    dtype_names = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}
    _check_tensors(config, {k: (tuple(v.shape), dtype_names.get(v.dtype, str(v.dtype))) for k, v in obj.items()},
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
        class_names = _check_class_names(class_names, 0, "save_checkpoint()")
    if preprocessing is None:
        if normalization is None:
            raise ValueError("save_checkpoint() needs the model's preprocessing= record or normalization=(mean, std)")
        normalization = _check_normalization(normalization, config.in_channels, "save_checkpoint()")
        preprocessing = Preprocessing.for_model(config.image_size, normalization)
    elif isinstance(preprocessing, dict):
        preprocessing = Preprocessing.from_dict(preprocessing)
    if not isinstance(preprocessing, Preprocessing):
        raise ValueError(f"preprocessing must be a vitcore Preprocessing, got {type(preprocessing).__name__}")
    _check_normalization(preprocessing.normalization, config.in_channels, "save_checkpoint()")
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

