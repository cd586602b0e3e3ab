"""Precomputed "Beyond the CLS token" reports, so a first visit reads a file instead of training for a minute.

:func:`explorer.beyond.dense_report` reads the frozen tokens of a few hundred Shapes images and
fits the heads: seconds for the bundled model, about a minute for DINOv2 ViT-S/14 on a shared
CPU. The result depends only on the model's weights, its preprocessing and the split sizes, so
``python -m explorer.beyond_assets`` computes it once for the app's default models and stores it
in ``assets/beyond/<fingerprint>.npz`` (the scored validation images as uint8, masks bit-packed,
boxes, the probe's weights, the score tables: about 150 KB). The page looks its model up by
fingerprint (:func:`stored_report`); any other model, or a file written for other weights, is
computed as before. Reading a file takes a fraction of a second.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from explorer.beyond import DenseReport, dense_report, split_sizes
from explorer.models import ASSETS
from explorer.texts import page_name
from vitcore import VisionTransformer
from vitcore.inspect import dense

__all__ = ["ASSET_DIR", "VERSION", "fingerprint", "load_report", "save_report", "stored_report", "write_defaults"]

ASSET_DIR = ASSETS / "beyond"
VERSION = 2  # bump when dense_report's method changes: older files then no longer match any model


def fingerprint(model: VisionTransformer, normalization: Any, image_size: tuple[int, int],
                sizes: tuple[int, int] | None = None) -> str:
    """sha256 of everything the report depends on: method version, config, weights, preprocessing, split sizes."""
    sizes = tuple(sizes or split_sizes(model.config, tuple(image_size)))
    mean, std = normalization
    head = {"version": VERSION, "config": model.config.to_dict(), "mean": [float(m) for m in mean],
            "std": [float(s) for s in std], "image_size": [int(s) for s in image_size], "sizes": list(sizes)}
    h = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def save_report(report: DenseReport, path: str | Path, key: str) -> Path:
    """Write ``report`` (computed for the model with fingerprint ``key``) as a compressed .npz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    methods = list(report.masks)
    probe = report.probe
    meta = {
        "key": key, "version": VERSION, "methods": methods, "mask_shape": list(report.val.masks.shape),
        "grid": list(report.grid), "n_train": report.n_train, "mask_rows": report.mask_rows,
        "box_rows": report.box_rows, "grid_ceiling": report.grid_ceiling, "notes": report.notes,
        "seconds": report.seconds, "boxes": list(report.boxes),
        "probe": {"grid": list(probe.grid), "patch_size": probe.patch_size, "penalty": probe.penalty,
                  "seconds": probe.seconds},
    }
    arrays = {f"mask_{i}": np.packbits(report.masks[m].numpy().reshape(-1)) for i, m in enumerate(methods)}
    arrays.update({f"box_{i}": report.boxes[s].numpy() for i, s in enumerate(report.boxes)})
    arrays["val_pixels"] = report.val.pixels.numpy()  # (n, 3, H, W) uint8: the images that were scored
    arrays["val_masks"] = np.packbits(report.val.masks.numpy().reshape(-1))
    arrays["val_labels"] = report.val.labels.numpy()
    arrays["probe_weight"] = probe.head.weight.detach().numpy()
    arrays["probe_bias"] = probe.head.bias.detach().numpy()
    with open(path, "wb") as f:
        np.savez_compressed(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return path


def load_report(path: str | Path, key: str, normalization: Any, image_size: tuple[int, int]) -> DenseReport | None:
    """The report stored at ``path`` for the model with fingerprint ``key``; None if absent, foreign or stale."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            meta = json.loads(f["meta"].tobytes().decode())
            arrays = {name: f[name] for name in f.files if name != "meta"}
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None  # a damaged file is computed again, not trusted
    if meta.get("key") != key or meta.get("version") != VERSION:
        return None
    shape = tuple(meta["mask_shape"])  # (n, H, W)
    if tuple(shape[1:]) != tuple(image_size):
        return None

    def unpack(bits: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.unpackbits(bits)[: int(np.prod(shape))].reshape(shape).astype(bool))

    pixels = torch.from_numpy(arrays["val_pixels"])  # (n, 3, H, W) uint8
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in normalization)
    val = dense.DenseSplit(images=(pixels.float() / 255 - mean) / std, masks=unpack(arrays["val_masks"]),
                           pixels=pixels, labels=torch.from_numpy(arrays["val_labels"]))
    masks = {m: unpack(arrays[f"mask_{i}"]) for i, m in enumerate(meta["methods"])}
    boxes = {s: torch.from_numpy(arrays[f"box_{i}"]) for i, s in enumerate(meta["boxes"])}
    weight = torch.from_numpy(arrays["probe_weight"])  # (1, D)
    head = nn.Linear(weight.shape[1], weight.shape[0], device="meta").to_empty(device="cpu")  # no random init
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(torch.from_numpy(arrays["probe_bias"]))
    p = meta["probe"]
    probe = dense.SegmentationProbe(head.eval(), tuple(p["grid"]), int(p["patch_size"]), float(p["penalty"]),
                                    float(p["seconds"]))
    return DenseReport(val=val, grid=tuple(meta["grid"]), n_train=int(meta["n_train"]), masks=masks,
                       mask_rows=meta["mask_rows"], boxes=boxes, box_rows=meta["box_rows"],
                       grid_ceiling=float(meta["grid_ceiling"]), probe=probe, notes=list(meta["notes"]),
                       seconds=dict(meta["seconds"]))


def stored_report(model: VisionTransformer, normalization: Any, image_size: tuple[int, int],
                  folder: str | Path = ASSET_DIR) -> DenseReport | None:
    """The precomputed report of this model (weights, preprocessing, size), or None when there is none."""
    key = fingerprint(model, normalization, image_size)
    return load_report(Path(folder) / f"{key[:24]}.npz", key, normalization, image_size)


def write_defaults(folder: str | Path = ASSET_DIR, kinds: tuple[str, ...] = ("dinov2", "bundled")) -> list[Path]:
    """Compute and store the report of each default model (the automatic choice's two: DINOv2 at 224, bundled)."""
    from explorer.models import ModelSpec, build_model

    written = []
    for kind in kinds:
        loaded = build_model(ModelSpec(kind))
        pre = loaded.preprocessing
        size = tuple(pre.crop_size)
        start = time.perf_counter()
        report = dense_report(loaded.model, pre.normalization, size)
        key = fingerprint(loaded.model, pre.normalization, size)
        path = save_report(report, Path(folder) / f"{key[:24]}.npz", key)
        print(f"{kind}: {path} ({path.stat().st_size / 1e3:.0f} kB) in {time.perf_counter() - start:.0f} s",
              flush=True)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=f"Precompute the {page_name('beyond', False)} page's reports of the default models.")
    parser.add_argument("--folder", default=str(ASSET_DIR), help="where the .npz files go (default assets/beyond)")
    parser.add_argument("--kinds", nargs="*", default=["dinov2", "bundled"], help="model kinds to precompute")
    args = parser.parse_args()
    write_defaults(args.folder, tuple(args.kinds))


if __name__ == "__main__":
    main()
