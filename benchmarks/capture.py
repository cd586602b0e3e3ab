"""Cost of a full capture (all layers, all heads) against a plain forward pass, and against Hugging Face.

    python benchmarks/capture.py [--reps 5] [--base-reps 3] [--threads N]

For tiny and base at batch 1 and 8, in one run and interleaved round-robin (so drifting load on a
shared machine hits every variant alike), the median wall time of:

    vitcore plain forward, fused attention        model(x), F.scaled_dot_product_attention
    vitcore plain forward, explicit attention     model(x), softmax(QK^T/sqrt(d)) V
    vitcore capture(model, x)                     explicit path + every stage stored on CPU
    HF ViTModel eager, plain                      same sizes, random weights, no download
    HF ViTModel eager, output_attentions=True

Capture runs ``forward_intermediates`` (no flag, no hook: the model is shared read-only), with the
softmax written straight into the trace's preallocated tensor. Targets (issue 10), at batch 1:
capture <= 8 % over the plain fused forward on tiny and <= 3 % on base, and no slower than Hugging
Face's eager ``output_attentions=True`` forward of the same configuration. Batch 8 is reported too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from vitcore import VisionTransformer, ViTConfig, capture


def hf_model(config: ViTConfig) -> torch.nn.Module:
    """A randomly initialised transformers ViTModel of the same size, eager attention."""
    from transformers import ViTConfig as HFConfig
    from transformers import ViTModel

    hf = HFConfig(
        hidden_size=config.dim,
        num_hidden_layers=config.depth,
        num_attention_heads=config.heads,
        intermediate_size=config.mlp_dim,
        image_size=config.image_size[0],
        patch_size=config.patch_size,
        layer_norm_eps=config.layer_norm_eps,
    )
    return ViTModel._from_config(hf, attn_implementation="eager").eval()


def interleaved_times(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each function per round, timed round-robin ``reps`` times after ``warmup`` rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                times[name].append(elapsed)
    return times


def cell(config: ViTConfig, model: VisionTransformer, hf: torch.nn.Module, batch: int, reps: int, warmup: int):
    """Timings of the five variants on one (model, batch) cell."""
    x = torch.randn(batch, 3, *config.image_size)
    explicit = VisionTransformer(config.replace(fused_attention=False)).eval()
    explicit.load_state_dict(model.state_dict())

    def plain(net: VisionTransformer) -> torch.Tensor:
        with torch.no_grad():
            return net(x)

    def hf_forward(attentions: bool) -> object:
        with torch.no_grad():
            return hf(pixel_values=x, output_attentions=attentions)

    fns = {
        "fused": lambda: plain(model),
        "explicit": lambda: plain(explicit),
        "capture": lambda: capture(model, x),
        "hf": lambda: hf_forward(False),
        "hf_attn": lambda: hf_forward(True),
    }
    times = interleaved_times(fns, reps, warmup)
    return times, capture(model, x).nbytes() / 1e6


def main() -> None:
    """Print the overhead table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="timed rounds per cell (median reported)")
    parser.add_argument("--base-reps", type=int, default=3, help="timed rounds for base at batch 8 (slowest cell)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of interleaved rounds (ms)")
    print("overheads: median ratio, and in brackets the ratio of the best rounds (less sensitive to load)\n")
    header = (
        f"{'model':<6}{'B':>3}{'fused':>9}{'explicit':>9}{'capture':>9}{'vs explicit':>19}{'vs fused':>19}"
        f"{'HF plain':>10}{'HF attn':>9}{'HF overhead':>19}{'trace MB':>10}"
    )
    print(header)
    print("-" * len(header))
    verdicts = []
    started = time.perf_counter()
    for name in ("tiny", "base"):
        config = ViTConfig.preset(name)
        model = VisionTransformer(config).eval()
        hf = hf_model(config)
        for batch in (1, 8):
            slow = (name, batch) == ("base", 8)  # already warm from batch 1; seconds per forward here
            times, megabytes = cell(config, model, hf, batch, args.base_reps if slow else args.reps, 0 if slow else 1)
            med = {k: statistics.median(v) for k, v in times.items()}
            best = {k: min(v) for k, v in times.items()}

            def overhead(a: str, b: str, med=med, best=best) -> tuple[float, float]:
                return med[a] / med[b] - 1, best[a] / best[b] - 1

            vs_explicit, vs_fused, hf_overhead, vs_hf = (
                overhead("capture", "explicit"),
                overhead("capture", "fused"),
                overhead("hf_attn", "hf"),
                overhead("capture", "hf_attn"),
            )
            pair = "{:>+10.1%} ({:+.1%})".format
            ms = {k: f"{v * 1e3:>9.1f}" for k, v in med.items()}
            print(
                f"{name:<6}{batch:>3}{ms['fused']}{ms['explicit']}{ms['capture']}{pair(*vs_explicit):>19}"
                f"{pair(*vs_fused):>19} {ms['hf']}{ms['hf_attn']}{pair(*hf_overhead):>19}{megabytes:>10.1f}"
            )
            target = 0.08 if name == "tiny" else 0.03
            ok = vs_fused[0] <= target and vs_hf[0] <= 0.0
            verdicts.append(
                f"{name} batch {batch}: capture {vs_fused[0]:+.1%} vs fused forward (target <= {target:.0%}"
                f"{'' if batch == 1 else ', batch 1 only'}), capture / HF output_attentions {1 + vs_hf[0]:.2f}x "
                f"(target <= 1.00x) -> {'ok' if ok else 'MISSED'}"
            )
    print()
    print("\n".join(verdicts))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
