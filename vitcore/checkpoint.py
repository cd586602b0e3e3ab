"""Checkpoints as ``.safetensors``: weights plus the config and metadata as JSON in the header.

Nothing here unpickles code. ``.pt``/``.pth`` files are read only with
``torch.load(weights_only=True)``; everything else must be a valid safetensors file.
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

from .config import ViTConfig
from .model import VisionTransformer

__all__ = ["FORMAT", "load", "load_checkpoint", "load_state_dict_checked", "save", "save_checkpoint"]

FORMAT = "vitcore/1"
_MAX_HEADER = 100 * 2**20  # a safetensors header larger than this is not a checkpoint of ours


def _normalization_dict(normalization: Any) -> dict[str, list[float]]:
    try:
        if isinstance(normalization, dict):
            mean, std = normalization["mean"], normalization["std"]
        else:
            mean, std = normalization
        mean, std = [float(m) for m in mean], [float(s) for s in std]
    except (TypeError, ValueError, KeyError):
        raise ValueError(
            f"normalization={normalization!r} must be (mean, std) or {{'mean': [...], 'std': [...]}}"
        ) from None
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ValueError(f"normalization mean {mean} and std {std} need one value per channel and std > 0")
    return {"mean": mean, "std": std}


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    class_names: list[str] | tuple[str, ...],
    normalization: Any,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a VisionTransformer; LoRA adapters are merged first) to a ``.safetensors`` file."""
    from safetensors.torch import save_file

    if hasattr(model, "merge_and_unload"):  # a peft model: fold the adapters into plain linears
        model = model.merge_and_unload()
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"save_checkpoint() writes a vitcore VisionTransformer, got {type(model).__name__}")
    config = model.config
    class_names = [str(c) for c in class_names]
    if config.num_classes and len(class_names) != config.num_classes:
        raise ValueError(
            f"{len(class_names)} class names were given but the model has {config.num_classes} outputs"
        )
    metadata = {
        "class_names": class_names,
        "normalization": _normalization_dict(normalization),
        "image_size": list(config.image_size),
        **(extra or {}),
    }
    try:
        metadata_json = json.dumps(metadata)
    except TypeError as exc:
        raise ValueError(f"extra metadata must be JSON-serialisable: {exc}") from None
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{str(path)!r}: checkpoints are written as .safetensors; change the file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": FORMAT, "config": config.to_json(), "metadata": metadata_json})
    return path


def _read_bytes(source: str | os.PathLike | bytes | io.IOBase) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>"
    if isinstance(source, io.IOBase):
        return source.read(), "<upload>"
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"{str(path)!r} does not exist or is not a file; pass a .safetensors checkpoint")
    return path.read_bytes(), str(path)


def _safetensors_header(blob: bytes) -> dict[str, Any] | None:
    """The JSON header of a safetensors blob, or None when the bytes are not one."""
    if len(blob) < 10:
        return None
    (n,) = struct.unpack("<Q", blob[:8])
    if n <= 0 or n > _MAX_HEADER or 8 + n > len(blob) or blob[8:9] != b"{":
        return None
    try:
        header = json.loads(blob[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return header if isinstance(header, dict) else None


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict(strict=True)`` with a ValueError listing missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:

        def show(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" … (+{len(items) - 8} more)" if len(items) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if shapes:
            parts.append(f"shapes that differ ({len(shapes)}): {show(shapes)}")
        raise ValueError(
            "the weights do not fit the model config; " + "; ".join(parts)
            + ". Check that the checkpoint was saved with this config (preset, image size, classes)"
        )
    model.load_state_dict(state, strict=True)


def load_checkpoint(
    source: str | os.PathLike | bytes | io.IOBase, *, config: ViTConfig | None = None
) -> tuple[VisionTransformer, dict[str, Any]]:
    """Read a checkpoint (path, bytes or file object) into ``(VisionTransformer in eval mode, metadata)``.

    ``.safetensors`` files carry their own config; a ``.pt``/``.pth`` state dict (read with
    ``weights_only=True``) needs ``config=`` unless it is a dict holding ``state_dict`` and ``config``.
    The metadata dict has ``class_names``, ``normalization`` {mean, std}, ``image_size``, ``config``
    and whatever ``extra`` held when it was saved.
    """
    blob, name = _read_bytes(source)
    header = _safetensors_header(blob)
    metadata: dict[str, Any] = {}
    if header is not None:
        from safetensors.torch import load as load_safetensors

        try:
            state = load_safetensors(blob)
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise ValueError(
                f"{name} looks like safetensors but cannot be read ({exc}); the file may be truncated"
            ) from None
        meta = header.get("__metadata__") or {}
        if config is None:
            if "config" not in meta:
                raise ValueError(f"{name} has no vitcore config in its metadata; pass config= (a ViTConfig)")
            try:
                config = ViTConfig.from_json(meta["config"])
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{name} has an invalid config in its metadata: {exc}") from None
        if "metadata" in meta:
            try:
                metadata = json.loads(meta["metadata"])
            except json.JSONDecodeError:
                raise ValueError(f"{name} has metadata that is not JSON; re-save it with save_checkpoint()") from None
    elif blob[:4] == b"PK\x03\x04" or blob[:1] == b"\x80":  # torch.save zip archive or legacy pickle
        try:
            obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"{name} could not be read as a weights-only PyTorch file ({type(exc).__name__}); only plain "
                "state dicts are accepted, never pickled code"
            ) from None
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            if config is None and isinstance(obj.get("config"), dict):
                config = ViTConfig.from_dict(obj["config"])
            metadata = {k: v for k, v in obj.items() if k not in ("state_dict", "config")}
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ValueError(f"{name} is not a state dict of tensors")
        if config is None:
            raise ValueError(f"{name} is a bare state dict without a config; pass config=ViTConfig.preset(...)")
        state = obj
    else:
        raise ValueError(f"{name} is neither a .safetensors checkpoint nor a PyTorch state dict; upload a checkpoint "
                         "written by vitcore (save_checkpoint) or a .pt/.pth state dict")
    model = VisionTransformer(config)
    load_state_dict_checked(model, state)
    model.eval()
    n = config.num_classes
    metadata.setdefault("class_names", [f"class_{i}" for i in range(n)])
    metadata.setdefault("normalization", {"mean": [0.5] * config.in_channels, "std": [0.5] * config.in_channels})
    metadata.setdefault("image_size", list(config.image_size))
    metadata["config"] = config.to_dict()
    if n and len(metadata["class_names"]) != n:
        raise ValueError(f"{name} lists {len(metadata['class_names'])} class names for a {n}-class head")
    return model, metadata


save = save_checkpoint
load = load_checkpoint
