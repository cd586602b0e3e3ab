"""Train the bundled model: a micro ViT on 64x64 Shapes -> ``assets/shapes_micro.safetensors``.

The micro preset (P = 8, D = 96, 4 blocks, 4 heads) at 64 px sees an 8x8 patch grid, so its
attention maps and token masks show where the object is (at 32 px the 4x4 grid showed little).

``make checkpoint`` runs ``python -m vitcore.train.bundled``. Training stops as soon as the validation
accuracy reaches ``--target`` (or the epoch/time budget runs out); the best weights are saved with
their validation accuracy, class names and normalisation in the checkpoint metadata.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_PATH", "main", "train_bundled_model"]

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "assets" / "shapes_micro.safetensors"
IMAGE_SIZE = 64  # 8x8 patches of 8 px
MAX_BYTES = 5 * 2**20


def train_bundled_model(
    out: str | Path = DEFAULT_PATH,
    *,
    epochs: int = 60,
    max_seconds: float = 1800.0,
    target: float = 0.97,
    per_class_train: int = 1000,
    per_class_val: int = 200,
    lr: float = 2e-3,
    batch_size: int = 64,
    seed: int = 0,
    threads: int | None = 1,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train the micro ViT on Shapes until ``target`` val accuracy; save it; return its metadata."""
    import torch

    if threads:
        torch.set_num_threads(threads)  # on a shared 2-core machine one thread avoids OpenMP contention

    from ..data import shapes_bundle
    from ..io.checkpoint import save_checkpoint
    from ..model.config import ViTConfig
    from ..model.vit import VisionTransformer
    from . import fit

    start = time.perf_counter()
    data = shapes_bundle(IMAGE_SIZE, per_class_train, per_class_val, batch_size=batch_size, seed=seed)
    torch.manual_seed(seed)
    model = VisionTransformer(ViTConfig.preset("micro", image_size=IMAGE_SIZE, num_classes=data.num_classes))

    def report(event: dict[str, Any]) -> bool:
        if event["event"] != "epoch":
            return True
        if verbose:
            print(f"epoch {event['epoch']:3d}  loss {event['loss']:.4f}  val_acc {event['val_accuracy']:.4f}  "
                  f"{event['images_per_second']:.0f} img/s  {event['seconds']:.0f} s", flush=True)
        return event["val_accuracy"] < target  # False stops the run: good enough

    result = fit(model, data, strategy="full", epochs=epochs, max_seconds=max_seconds, lr=lr, warmup=0.02,
                 callbacks=[report], seed=seed, device="cpu")
    extra = {
        "val_accuracy": round(result.best_val_accuracy, 4),
        "best_epoch": result.best_epoch,
        "dataset": f"Shapes {IMAGE_SIZE}x{IMAGE_SIZE}, {per_class_train}/{per_class_val} images per class "
                   f"(train/val), seed {seed}",
        "trained_by": "python -m vitcore.train.bundled",
        "train_seconds": round(result.seconds, 1),
    }
    path = save_checkpoint(result.model, out, class_names=data.class_names, preprocessing=data.preprocessing,
                           extra=extra)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ValueError(f"{path} is {size / 2**20:.1f} MiB; the bundled model must stay under 5 MiB")
    if verbose:
        print(f"{result.message}\nsaved {path} ({size / 1024:.0f} KiB) in {time.perf_counter() - start:.0f} s")
    return extra


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m vitcore.train.bundled``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_PATH), help="where to write the checkpoint")
    parser.add_argument("--epochs", type=int, default=60, help="epoch budget")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="time budget in seconds")
    parser.add_argument("--target", type=float, default=0.97, help="stop once val accuracy reaches this")
    parser.add_argument("--per-class-train", type=int, default=1000, help="training images per class")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, init and order")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 keeps torch's default)")
    args = parser.parse_args(argv)
    extra = train_bundled_model(args.out, epochs=args.epochs, max_seconds=args.max_seconds, target=args.target,
                                per_class_train=args.per_class_train, seed=args.seed, threads=args.threads)
    if extra["val_accuracy"] < 0.95:
        print(f"warning: validation accuracy {extra['val_accuracy']:.2%} is below 95%; raise --epochs")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
