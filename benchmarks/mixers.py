"""Replacing attention: each token mixer trained on Shapes for the same number of steps, and what it costs.

For every ``ViTConfig.token_mixer``:

1. accuracy: a micro ViT (32x32 Shapes, patch 8, T = 17) trained from scratch with ``vitcore.fit``
   for the same number of epochs (the same optimiser steps on the same seeded data: a complete
   cosine schedule each). The result does not depend on how busy the machine is.
2. cost: parameters, GFLOPs (2 x multiply-accumulates) and latency (batch 1, median) of a tiny
   ViT (D 192, 12 blocks, 3 heads, patch 16, random weights) at 224 px (T = 197) and 448 px
   (T = 785). The models take turns within each round, so latencies are written as ratios to
   attention's in the same run (``× attention``), which a change of load affects alike; the
   448/224 ratio shows how each cost grows when the token count grows 4x.

The MLP mixer is tied to its token count, so its 448 px model is a different model (more
parameters); the others run the same weights at both sizes. The table ends with the machine,
date and load it was measured on.

Usage: python benchmarks/mixers.py [--epochs 10] [--per-class 400] [--threads 2] [--train-threads 1] [--readme]
(--readme writes the table into README.md between the ``mixers:`` markers.)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch

from vitcore import VisionTransformer, ViTConfig
from vitcore.data import shapes_bundle
from vitcore.model.config import TOKEN_MIXERS
from vitcore.model.mixers import mixer_cost
from vitcore.train import fit

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- mixers:start -->", "<!-- mixers:end -->"


def model_macs(config: ViTConfig) -> int:
    """Multiply-accumulates of one image: patch embedding, L x (mixer + MLP), head (norms left out)."""
    P, D, L = config.patch_size, config.dim, config.depth
    N = config.num_patches
    T = N + config.num_prefix_tokens
    embed = N * config.in_channels * P * P * D
    block = mixer_cost(config, T)["macs"] + 2 * T * D * config.mlp_dim
    return embed + L * block + D * config.num_classes


def latencies_ms(configs: dict, rounds: int = 5) -> dict[str, float]:
    """Median wall time of one batch-1 forward pass (no_grad) of each config's model.

    The models take turns within each round, so a change in machine load during the run (a shared
    machine) affects all of them alike instead of whichever happened to run then.
    """
    models, inputs = {}, {}
    for key, config in configs.items():
        torch.manual_seed(0)
        models[key] = VisionTransformer(config).eval()
        inputs[key] = torch.randn(1, 3, *config.image_size)
    times: dict[str, list[float]] = {key: [] for key in configs}
    with torch.no_grad():
        for i in range(rounds + 1):
            for key, model in models.items():
                t0 = time.perf_counter()
                model(inputs[key])
                if i >= 1:  # round 0 warms up
                    times[key].append(time.perf_counter() - t0)
    return {key: 1000 * statistics.median(t) for key, t in times.items()}


def train_accuracy(name: str, data, epochs: int) -> dict:
    """Validation accuracy of a micro ViT with this mixer after ``epochs`` epochs (a fixed number of steps)."""
    config = ViTConfig.preset("micro", token_mixer=name, num_classes=data.num_classes)
    model = VisionTransformer(config)
    model.reset_parameters(torch.Generator().manual_seed(0))  # the same start for every run of the benchmark
    result = fit(model, data, strategy="full", epochs=epochs, lr=3e-3, seed=0, device="cpu")
    return {
        "val_accuracy": result.best_val_accuracy,
        "steps": len(result.steps),
        "seconds": result.seconds,
        "params_micro": sum(p.numel() for p in model.parameters()),
    }


def machine_line(load_before: tuple[float, float, float], threads: int) -> str:
    """Where and when the table was measured: CPU, cores, date, load average before and after, threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    load_after = os.getloadavg()
    return (f"Measured on {cpu} ({os.cpu_count()} cores), {datetime.date.today().isoformat()}, load average "
            f"{load_before[0]:.1f} before and {load_after[0]:.1f} after; latency with {threads} threads, "
            f"torch {torch.__version__}.")


def table(rows: list[dict], epochs: int, machine: str = "") -> str:
    """The Markdown table written into the README (latency as a ratio to attention at the same size)."""
    steps = rows[0]["steps"] if rows else 0
    base = next((r for r in rows if r["mixer"] == "attention"), rows[0]) if rows else {}
    lines = [
        f"| mixer | val acc (micro, {epochs} epochs = {steps} steps) | params micro | params tiny 224 | "
        "GFLOPs 224 | GFLOPs 448 | ×FLOPs | latency 224 (× attention) | latency 448 (× attention) | ×latency |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['mixer']} | {r['val_accuracy']:.1%} | {r['params_micro'] / 1e3:.0f} k | "
            f"{r['params_224'] / 1e6:.2f} M | {r['gflops_224']:.2f} | {r['gflops_448']:.2f} | "
            f"{r['gflops_448'] / r['gflops_224']:.1f} | {r['ms_224'] / base['ms_224']:.2f} | "
            f"{r['ms_448'] / base['ms_448']:.2f} | {r['ms_448'] / r['ms_224']:.1f} |"
        )
    if base:
        machine = (f"{machine} " if machine else "") + (
            f"Attention itself: {base['ms_224']:.0f} ms at 224 px, {base['ms_448']:.0f} ms at 448 px.")
    return "\n".join(lines + ([f"\n{machine}"] if machine else []))


def write_readme(text: str) -> None:
    """Replace the table between the markers (added at the end of the README the first time)."""
    readme = README.read_text()
    block = f"{START}\n{text}\n{END}"
    if START in readme and END in readme:
        readme = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, readme, flags=re.S)
    else:
        readme = readme.rstrip("\n") + f"\n\n{block}\n"
    README.write_text(readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per mixer (the same steps for all)")
    parser.add_argument("--per-class", type=int, default=400, help="training images per class (5 classes)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the latency measurement")
    parser.add_argument("--train-threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--mixers", nargs="*", default=list(TOKEN_MIXERS), choices=TOKEN_MIXERS)
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args()
    load_before = os.getloadavg()
    torch.set_num_threads(args.train_threads)
    data = shapes_bundle(32, per_class_train=args.per_class, per_class_val=100, batch_size=64, seed=0)
    rows = []
    for name in args.mixers:
        row = {"mixer": name, **train_accuracy(name, data, args.epochs)}
        rows.append(row)
        print(f"{name:10s} val {row['val_accuracy']:.3f}, {row['steps']} steps, {row['seconds']:.0f} s", flush=True)
    torch.set_num_threads(args.threads)
    configs = {(name, size): ViTConfig.preset("tiny", image_size=size, token_mixer=name)
               for name in args.mixers for size in (224, 448)}
    latency = latencies_ms(configs)
    for row in rows:
        for size in (224, 448):
            config = configs[row["mixer"], size]
            row[f"params_{size}"] = sum(p.numel() for p in VisionTransformer(config).parameters())
            row[f"gflops_{size}"] = 2 * model_macs(config) / 1e9
            row[f"ms_{size}"] = latency[row["mixer"], size]
    text = table(rows, args.epochs, machine_line(load_before, args.threads))
    print(text)
    if args.readme:
        write_readme(text)


if __name__ == "__main__":
    main()
