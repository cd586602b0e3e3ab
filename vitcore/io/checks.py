"""What a checkpoint's contents must satisfy before anything is allocated: the metadata (class names,
the preprocessing record), the config (sane integers, a memory budget) and the tensors (every
parameter the config implies, with its shape and a floating-point dtype).

Each check raises a ``ValueError`` that names the file (``where``) and says what to do. Reading the
file and the order of the checks: :mod:`vitcore.io.checkpoint`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from torch import nn

from ..model.config import ViTConfig
from ..model.cost import parameter_count
from ..model.vit import VisionTransformer

__all__ = [
    "check_budget",
    "check_class_names",
    "check_normalization",
    "check_tensors",
    "checked_metadata",
    "config_from_dict",
    "config_from_json",
    "load_state_dict_checked",
    "model_memory_bytes",
]

FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}  # safetensors names of the dtypes a weight may be stored in
_BYTES_PER_VALUE = 4  # float32


# --------------------------------------------------------------------------- metadata checks
def check_class_names(class_names: Any, num_classes: int, where: str) -> list[str]:
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


def check_normalization(normalization: Any, channels: int, where: str) -> dict[str, list[float]]:
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


def checked_metadata(metadata: Any, config: ViTConfig, where: str) -> dict[str, Any]:
    """The metadata dict with class names and the preprocessing record checked (defaults filled in).

    The record is the one source of the model's input: ``normalization`` and ``image_size`` are
    views of it (and of the config) for readers of older metadata, no longer stored.
    """
    if not isinstance(metadata, dict):
        raise ValueError(f"{where}: the metadata must be a JSON object (a dict), got {type(metadata).__name__}; "
                         "re-save it with save_checkpoint()")
    metadata = dict(metadata)
    n, c = config.num_classes, config.in_channels
    metadata["class_names"] = check_class_names(
        metadata.get("class_names", [f"class_{i}" for i in range(n)]), n, where)
    if "normalization" in metadata:  # vitcore/1 and /2 files stored it next to (or instead of) the record
        metadata["normalization"] = check_normalization(metadata["normalization"], c, where)
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


def config_from_dict(data: Any, where: str) -> ViTConfig:
    """A ViTConfig from untrusted JSON data; every failure becomes a ValueError naming the file."""
    _check_config_ints(data, where)
    try:
        return ViTConfig.from_dict(data)
    except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as exc:
        raise ValueError(f"{where} has an invalid config in its metadata: {exc}") from None


def config_from_json(text: Any, where: str) -> ViTConfig:
    if text is None:
        raise ValueError(f"{where} has no vitcore config in its metadata; pass config= (a ViTConfig)")
    if not isinstance(text, str):
        raise ValueError(f"{where} has a config that is not a JSON string; re-save it with save_checkpoint()")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ValueError(f"{where} has a config that is not valid JSON; re-save it with save_checkpoint()") from None
    return config_from_dict(data, where)


def model_memory_bytes(config: ViTConfig) -> int:
    """Float32 bytes of the weights plus one input image plus one attention map (all heads)."""
    h, w = config.image_size
    tokens = config.num_prefix_tokens + config.num_patches
    values = parameter_count(config) + config.in_channels * h * w + config.heads * tokens * tokens
    return _BYTES_PER_VALUE * values


def check_budget(config: ViTConfig, max_bytes: int, where: str) -> None:
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


def check_tensors(config: ViTConfig, found: dict[str, tuple[tuple[int, ...], str]], where: str) -> None:
    """Every tensor the config implies is in the file with the right shape and a floating-point dtype."""
    if len(found) < config.depth:  # each block has weights; also keeps the meta build below cheap
        raise ValueError(f"{where}: the config has depth {config.depth} but the file holds only {len(found)} "
                         "tensors; the config does not belong to these weights")
    expected = _expected_tensors(config)
    problem = _describe_mismatch({k: s for k, (s, _) in expected.items()}, {k: s for k, (s, _) in found.items()})
    if problem:
        raise ValueError(f"{where}: {problem}")
    for key, (_, dtype) in found.items():
        if expected[key][1].is_floating_point and dtype not in FLOAT_DTYPES:
            raise ValueError(f"{where}: tensor {key!r} is stored as {dtype}; weights must be floating point "
                             f"({', '.join(sorted(FLOAT_DTYPES))})")


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict(strict=True)`` with a ValueError listing missing/unexpected keys and shape mismatches."""
    problem = _describe_mismatch({k: tuple(v.shape) for k, v in model.state_dict().items()},
                                 {k: tuple(v.shape) for k, v in state.items()})
    if problem:
        raise ValueError(problem)
    model.load_state_dict(state, strict=True)
