"""Forward latency of vitcore against torchvision, and of tiny against this machine's matmul peak.

Everything is measured in one run, so the printed ratios compare like with like:

    python benchmarks/forward.py [--reps 10] [--threads N]

Targets (issue 2): fused base <= 1.05x torchvision vit_b_16, explicit <= 1.15x, tiny >= 65%
of the fp32 matmul peak measured here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from explorer.pipeline import cost_summary
from vitcore import VisionTransformer, ViTConfig


def median_seconds(fn, reps: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` over ``reps`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_gflops(reps: int) -> float:
    """Best sustained fp32 GEMM rate on this machine (a square 1024-2048 matmul)."""
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        t = median_seconds(lambda a=a, b=b: a @ b, reps)
        best = max(best, 2 * n**3 / t / 1e9)
    return best


def main() -> None:
    """Print the latency table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per cell (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from torchvision.models import vit_b_16

    tv = vit_b_16().eval()
    base = VisionTransformer(ViTConfig.preset("base")).eval()
    base_explicit = base.with_config(fused_attention=False)  # the same parameters, the explicit path
    tiny = VisionTransformer(ViTConfig.preset("tiny")).eval()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peak = matmul_peak_gflops(args.reps)
    print(f"fp32 matmul peak measured now: {peak:.1f} GFLOP/s\n")
    print(f"{'model':<28}{'batch':>6}{'ms':>10}{'vs torchvision':>16}")
    rows = []
    with torch.inference_mode():
        for batch in (1, 8):
            x = torch.randn(batch, 3, 224, 224)
            t_tv = median_seconds(lambda x=x: tv(x), args.reps)
            t_fused = median_seconds(lambda x=x: base(x), args.reps)
            t_explicit = median_seconds(lambda x=x: base_explicit(x), args.reps)
            for name, t in (("torchvision vit_b_16", t_tv), ("vitcore base fused", t_fused),
                            ("vitcore base explicit", t_explicit)):
                print(f"{name:<28}{batch:>6}{t * 1e3:>10.1f}{t / t_tv:>15.2f}x")
            rows.append((batch, t_fused / t_tv, t_explicit / t_tv))
        print()
        tiny_flops = cost_summary(tiny.config)["gflops"]
        for batch in (1, 8):
            x = torch.randn(batch, 3, 224, 224)
            t = median_seconds(lambda x=x: tiny(x), args.reps)
            rate = batch * tiny_flops / t
            share = rate / peak
            print(f"vitcore tiny fused, batch {batch}: {t * 1e3:.1f} ms = {rate:.1f} GFLOP/s = {share:.0%} of peak")
    print()
    for batch, fused, explicit in rows:
        print(f"batch {batch}: fused {fused:.2f}x (target <= 1.05), explicit {explicit:.2f}x (target <= 1.15)")


if __name__ == "__main__":
    main()
