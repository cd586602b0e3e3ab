"""vitcore's inference paths against its peers on this CPU, interleaved in one run (issue 21).

    python benchmarks/peers.py [--reps 7] [--threads 2] [--modes fp32,bf16,int8,bf16+compile,...] [--skip-dinov2]

Every cell is timed round-robin (each model once per round, so drifting load on a shared machine
hits all alike); the medians are reported, and ratios are taken between medians of the same run.

1. Forward, batch 1 and 8, random weights: torchvision vit_b_16, Hugging Face ViTModel (base),
   vitcore ViT-B/16 on each path of ``vitcore.optimize``; timm vit_tiny_patch16_224 against
   vitcore ViT-Tiny on each path; timm vit_small_patch14_dinov2 (224 px) beside them.
2. Capture-all overhead at batch 1: ``vitcore.capture(model, x)`` (every layer and head) over the
   plain forward of the same path, ViT-Tiny and ViT-B.
3. DINOv2 ViT-S/14 (the real pretrained weights): a new photo -> its full trace at 224 px
   (preprocessing + capture), fp32 against the best path.

Compilation happens in ``vitcore.optimize`` before any timing; its seconds are printed.
Targets: ViT-B/16 batch 1 best path <= 0.67x torchvision; ViT-Tiny <= 0.8x timm; DINOv2 trace
<= 0.6x fp32; capture overhead <= 8 % (tiny) and <= 3 % (base). The last line reads
``vitcore best / torchvision fp32 (ViT-B/16, batch 1): 0.NN``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import vitcore
from vitcore import VisionTransformer, ViTConfig


def interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, timed round-robin ``reps`` rounds after ``warmup`` rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def hf_vit(config: ViTConfig) -> torch.nn.Module:
    """A randomly initialised transformers ViTModel of the same size (SDPA attention, its default)."""
    from transformers import ViTConfig as HFConfig
    from transformers import ViTModel

    hf = HFConfig(hidden_size=config.dim, num_hidden_layers=config.depth, num_attention_heads=config.heads,
                  intermediate_size=config.mlp_dim, image_size=config.image_size[0], patch_size=config.patch_size)
    return ViTModel(hf, add_pooling_layer=False).eval()


def paths(model: VisionTransformer, modes: list[str], shapes: list[tuple[int, ...]]) -> dict[str, torch.nn.Module]:
    """``vitcore.optimize`` of ``model`` on each mode, compiled for ``shapes``; prints what each cost."""
    out = {}
    for mode in modes:
        start = time.perf_counter()
        fast = vitcore.optimize(model, mode, shapes=shapes)
        print(f"  optimize({mode!r}): {time.perf_counter() - start:.1f} s; {fast.optimization.describe()}", flush=True)
        out[f"vitcore {mode}"] = fast
    return out


def forward_table(title: str, peers: dict[str, torch.nn.Module], ours: dict[str, torch.nn.Module], reference: str,
                  reps: int) -> dict[int, dict[str, float]]:
    """Interleaved forward medians at batch 1 and 8, printed against ``reference``."""
    print(f"\n{title}")
    print(f"{'model':<34}{'batch':>6}{'ms':>10}{'vs ' + reference:>28}")
    result = {}
    for batch in (1, 8):
        x = torch.randn(batch, 3, 224, 224)
        fns = {}
        for name, m in {**peers, **ours}.items():
            if "HF" in name:
                fns[name] = lambda m=m, x=x: m(pixel_values=x)
            else:
                fns[name] = lambda m=m, x=x: m(x)
        with torch.inference_mode():
            med = interleaved(fns, reps if batch == 1 else max(3, reps // 2))
        for name, t in med.items():
            print(f"{name:<34}{batch:>6}{t * 1e3:>10.1f}{t / med[reference]:>27.2f}x")
        result[batch] = med
    return result


def capture_overhead(name: str, models: dict[str, torch.nn.Module], reps: int) -> dict[str, float]:
    """Capture-all over the plain forward of the same path, batch 1."""
    x = torch.randn(1, 3, 224, 224)
    fns = {}
    for label, m in models.items():
        fns[f"{label} forward"] = lambda m=m: m(x)
        fns[f"{label} capture"] = lambda m=m: vitcore.capture(m, x)
    with torch.no_grad():
        med = interleaved(fns, reps)
    out = {}
    for label in models:
        over = med[f"{label} capture"] / med[f"{label} forward"] - 1
        out[label] = over
        print(f"  {name} {label:<24} forward {med[f'{label} forward'] * 1e3:7.1f} ms, capture-all "
              f"{med[f'{label} capture'] * 1e3:7.1f} ms: {over:+.1%}")
    return out


def dinov2_trace(modes: list[str], reps: int) -> tuple[str, float] | None:
    """A new photo -> full trace at 224 px on DINOv2 ViT-S/14: fp32 against each path; returns (best, ratio)."""
    from explorer.samples import sample_images
    from vitcore.data.images import Preprocessing
    from vitcore.model.optimize import fidelity

    try:
        model, meta = vitcore.dinov2_small()
    except ValueError as err:
        print(f"\nDINOv2 skipped: {err}")
        return None
    pre = Preprocessing.from_dict(meta["preprocessing"])
    photos = list(sample_images().values())
    print("\nDINOv2 ViT-S/14, new photo -> full trace at 224 px (preprocess + capture of all 12 layers, 6 heads)")
    fast = {"fp32": model}
    fast.update({m: p for m, p in zip(modes, paths(model, modes, [(1, 3, 224, 224)]).values()) if m != "fp32"})
    batch = pre.batch(photos)
    for mode, m in fast.items():
        if mode != "fp32":
            print(f"  fidelity {mode}: {fidelity(model, m, batch)}")
    counter = iter(range(10**9))

    def trace(m: torch.nn.Module) -> object:
        photo = photos[next(counter) % len(photos)]  # a different photo each call, as students upload them
        return vitcore.capture(m, pre(photo)[None])

    med = interleaved({mode: (lambda m=m: trace(m)) for mode, m in fast.items()}, reps)
    for mode, t in med.items():
        print(f"  {mode:<16} {t * 1e3:7.1f} ms  {t / med['fp32']:.2f}x fp32")
    best = min((m for m in med if m != "fp32"), key=med.get, default="fp32")
    return best, med[best] / med["fp32"]


def main() -> None:
    """Print the tables, the verdicts and the last line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7, help="timed rounds per cell (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the app's setting: 2)")
    parser.add_argument("--modes", default="fp32,bf16,int8,compile,int8+compile,bf16+compile",
                        help="vitcore.optimize modes to time (the compiled ones take minutes to build)")
    parser.add_argument("--skip-dinov2", action="store_true", help="skip the DINOv2 trace section")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows while compiling, also when piped to a file
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", category=UserWarning)
    modes = [m for m in args.modes.split(",") if m]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {torch.backends.cpu.get_cpu_capability()}"
          f", load average {load:.2f} at start; medians of interleaved rounds")
    import timm
    from torchvision.models import vit_b_16

    shapes = [(1, 3, 224, 224), (8, 3, 224, 224)]
    verdicts = []

    print("\nViT-B/16: building and compiling")
    base = VisionTransformer(ViTConfig.preset("base")).eval()
    peers = {"torchvision vit_b_16 fp32": vit_b_16().eval(), "HF ViTModel base fp32": hf_vit(base.config)}
    ours = paths(base, modes, shapes)
    b = forward_table("ViT-B/16 forward", peers, ours, "torchvision vit_b_16 fp32", args.reps)
    tv = b[1]["torchvision vit_b_16 fp32"]
    best_b = min(ours, key=lambda k: b[1][k])
    ratio_b = b[1][best_b] / tv
    verdicts.append(f"ViT-B/16 batch 1: {best_b} {ratio_b:.2f}x torchvision (target <= 0.67)")

    print("\nViT-Tiny and ViT-S/14: building and compiling")
    tiny = VisionTransformer(ViTConfig.preset("tiny")).eval()
    peers = {"timm vit_tiny_patch16_224 fp32": timm.create_model("vit_tiny_patch16_224", pretrained=False).eval(),
             "timm vit_small_patch14_dinov2": timm.create_model("vit_small_patch14_dinov2", pretrained=False,
                                                                img_size=224).eval()}
    ours_t = paths(tiny, modes, shapes)
    t = forward_table("ViT-Tiny forward (timm's DINOv2 ViT-S/14 at 224 px for scale)", peers, ours_t,
                      "timm vit_tiny_patch16_224 fp32", args.reps)
    best_t = min(ours_t, key=lambda k: t[1][k])
    verdicts.append(f"ViT-Tiny batch 1: {best_t} {t[1][best_t] / t[1]['timm vit_tiny_patch16_224 fp32']:.2f}x timm "
                    "(target <= 0.8)")

    print("\nCapture-all overhead, batch 1 (capture of every layer and head over the same path's forward)")
    for name, models, target in (("tiny", ours_t, 0.08), ("base", ours, 0.03)):
        chosen = {k: v for k, v in models.items() if k in ("vitcore fp32", best_t if name == "tiny" else best_b)}
        over = capture_overhead(name, chosen, args.reps)
        for label, value in over.items():
            verdicts.append(f"capture overhead {name} ({label}): {value:+.1%} (target <= {target:.0%})")

    if not args.skip_dinov2:
        result = dinov2_trace([m for m in modes if m != "fp32"], args.reps)
        if result:
            verdicts.append(f"DINOv2 trace at 224 px: {result[0]} {result[1]:.2f}x fp32 (target <= 0.6)")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average {load:.2f} at the end")
    print("\n".join(verdicts))
    print(f"vitcore best / torchvision fp32 (ViT-B/16, batch 1): {ratio_b:.2f}")


if __name__ == "__main__":
    main()
