"""Training speed of the micro ViT on 32x32 Shapes, with same-run ratios.

1. Full fine-tune (from scratch): training images/s and seconds until validation accuracy >= 95%
   (targets: >= 110 images/s and <= 60 s on a 2-core CPU).
2. Linear probe on the same model: head trained on cached backbone features vs naive frozen training
   (backbone forward every step), same epochs and seed (target: >= 4x faster).

Usage: python benchmarks/train.py [--threads N] [--budget SECONDS] [--head-epochs E]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from vitcore import VisionTransformer, ViTConfig
from vitcore.data import shapes_bundle
from vitcore.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--budget", type=float, default=300.0, help="max seconds for the full fine-tune")
    parser.add_argument("--head-epochs", type=int, default=8, help="epochs of each head-training variant")
    parser.add_argument("--target", type=float, default=0.95, help="validation accuracy to reach")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    data = shapes_bundle(32, per_class_train=1000, per_class_val=200, batch_size=64, seed=0)
    data_seconds = time.perf_counter() - t0

    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig.preset("micro"))
    reached: dict[str, float] = {}

    def until_target(event: dict) -> bool:
        if event["event"] == "epoch" and event["val_accuracy"] >= args.target and "seconds" not in reached:
            reached["seconds"], reached["epoch"] = event["seconds"], event["epoch"]
            return False
        return True

    # the Fine-tune page's defaults: 15 epochs (the cosine schedule fits a one-minute lesson), lr 3e-3
    full = fit(model, data, strategy="full", epochs=15, max_seconds=args.budget, lr=3e-3,
               callbacks=[until_target], seed=0, device="cpu")

    frozen = copy.deepcopy(full.model)
    frozen.head.reset_parameters()
    a, b = copy.deepcopy(frozen), copy.deepcopy(frozen)
    cached = fit(a, data, strategy="head", epochs=args.head_epochs, seed=0, device="cpu", cache_features=True)
    naive = fit(b, data, strategy="head", epochs=args.head_epochs, seed=0, device="cpu", cache_features=False)

    if reached:
        to_target = f"{reached['seconds']:.1f} s (epoch {reached['epoch']})"
    else:
        to_target = f"not within {args.budget:.0f} s"
    rows = [
        ("threads", str(torch.get_num_threads()), ""),
        ("render Shapes (5000 + 1000 images)", f"{data_seconds:.1f} s", ""),
        ("full fine-tune: train images/s", f"{full.images_per_second:.0f}", "target >= 110"),
        (f"full fine-tune: time to val acc >= {args.target:.0%}", to_target, "target <= 60 s"),
        ("full fine-tune: best val acc", f"{full.best_val_accuracy:.2%}", ""),
        (f"head, naive frozen ({args.head_epochs} epochs)", f"{naive.seconds:.2f} s",
         f"val acc {naive.best_val_accuracy:.2%}"),
        (f"head, cached features ({args.head_epochs} epochs)", f"{cached.seconds:.2f} s",
         f"val acc {cached.best_val_accuracy:.2%}; features {cached.feature_seconds:.2f} s"),
        ("cached vs naive speed-up", f"{naive.seconds / cached.seconds:.1f}x", "target >= 4x"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>22}  note")
    print("-" * (width + 40))
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>22}  {note}")


if __name__ == "__main__":
    main()
