"""DINOv2 ViT-S/14 (vitcore.pretrained.dinov2): converter time, and a new image's full trace at 224 and 448 px.

    python benchmarks/dinov2.py [--reps 5] [--threads 2]

1. Converter: ``dinov2_small()`` into an empty temporary cache (sha256 of the 97 MB ONNX file,
   parse, convert, write safetensors), then the cached load that every later call does.
2. New image -> full trace: a photo (skimage's chelsea, 451x300) through DINOv2's preprocessing
   (short side to 256 / 512 bicubically, centre crop 224 / 448, ImageNet mean/std) and
   ``vitcore.capture(model, x, qkv=True)`` (every layer's tokens, attention, q, k, v).
3. The views on that trace (DINO masks, PCA foreground, artifact tokens), for the app.

Targets (issue 11, 2 threads): full trace <= 1.5 s at 224, <= 6 s at 448. Times are medians of
``--reps`` runs after one warm-up; the load average is printed because the project machines are
shared (a load above the core count slows every number here). On an oversubscribed machine,
OpenMP's default spin-waiting makes 2-thread runs many times slower than 1 thread; run with
``OMP_WAIT_POLICY=PASSIVE`` to see what the model costs rather than what the queue costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image

import vitcore
from vitcore.inspect import views
from vitcore.pretrained import dinov2

TARGETS = {224: 1.5, 448: 6.0}


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def preprocess(photo: Image.Image, size: int) -> torch.Tensor:
    """DINOv2's evaluation transform scaled to ``size``: short side to size * 256/224, centre crop, normalise."""
    w, h = photo.size
    short = round(size * 256 / 224)
    s = short / min(w, h)
    img = photo.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)  # (3, size, size)
    mean = torch.tensor(dinov2.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(dinov2.IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std)[None]  # (1, 3, size, size)


def timed(fn, reps: int, warmup: int = 1) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds of this process) of each of ``reps`` runs after ``warmup`` runs."""
    out = []
    for i in range(warmup + reps):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        if i >= warmup:
            out.append((time.perf_counter() - wall, time.process_time() - cpu))
    return out


def show(label: str, runs: list[tuple[float, float]], target: float | None = None) -> None:
    """Median and minimum wall time, median CPU time, and the target verdict.

    On a machine with more runnable threads than cores, wall time measures the queue. The CPU
    time this process used bounds what the wall time is on an idle machine (one of its threads
    is always running), so the verdict reads the smaller of median wall and median CPU time.
    """
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    line = f"{label:<48} wall median {wall:6.3f} s  min {min(r[0] for r in runs):6.3f} s  cpu {cpu:6.3f} s"
    if target is not None:
        line += f"   target <= {target:.1f} s: {'PASS' if min(wall, cpu) <= target else 'FAIL'}"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"DINOv2 ViT-S/14, torch {torch.__version__}, {args.threads} threads; {load()}")

    # 1. converter
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        path = dinov2.locate_onnx()
        dinov2.sha256_of(path)
        sha = time.perf_counter() - start
        start, cpu = time.perf_counter(), time.process_time()
        model, meta = dinov2.dinov2_small(cache_dir=cache)
        first, first_cpu = time.perf_counter() - start, time.process_time() - cpu
        assert meta["loaded_from"] == "onnx"
        cached = timed(lambda: dinov2.dinov2_small(cache_dir=cache), args.reps, warmup=0)
    print(f"{'first call: sha256 + parse + convert + save':<48} wall {first:13.3f} s  cpu {first_cpu:6.3f} s"
          f"   (sha256 alone {sha:.3f} s)")
    show("later calls: load the cached safetensors", cached)
    print(f"{'cached load / first call (same run)':<48} {statistics.median(r[0] for r in cached) / first:.3f}"
          "   target < 1 (the cache pays off)")

    # 2. new image -> full trace
    import skimage.data

    photo = Image.fromarray(skimage.data.chelsea())
    results = {}
    for size in (224, 448):
        tokens = 1 + (size // 14) ** 2
        results[size] = timed(lambda size=size: vitcore.capture(model, preprocess(photo, size), qkv=True), args.reps)
        show(f"new image -> full trace at {size} px ({tokens} tokens)", results[size], TARGETS[size])
    trace = vitcore.capture(model, preprocess(photo, 224), qkv=True)
    print(f"{'full trace at 224 holds':<48} {trace.nbytes() / 1e6:6.1f} MB")

    # 3. the views on a 224 trace
    def all_views() -> None:
        views.dino_attention_masks(trace)
        with torch.no_grad():
            features = model.norm(trace.tokens[-1])  # (1, 257, 384)
        views.pca_foreground(features, trace.grid)
        views.artifact_tokens(trace)

    show("views at 224 (DINO masks + PCA + artifacts)", timed(all_views, args.reps))
    print(load())


if __name__ == "__main__":
    main()
