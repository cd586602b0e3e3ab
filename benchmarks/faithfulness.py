"""Faithfulness scoreboard: every explanation method against a random and a centre-bias map, measured.

    python benchmarks/faithfulness.py [--images 200] [--steps 10] [--fill mean] [--threads 2]
        [--timing-threads 2] [--randomization-images N] [--lfw-checkpoint PATH [--lfw-data DIR]] [--skip-vits]

On Shapes validation images with the bundled model (assets/shapes_micro.safetensors), each method
(vitcore.explain.faithfulness.METHODS) explains the model's predicted class; per method the mean and a 95 %
interval (mean ± t·sd/√n over images) of:

    deletion AUC ↓, insertion AUC ↑       Petsiuk et al. 2018 (RISE), `--steps` steps, probability of the class
    positive AUC ↓, negative AUC ↑        Chefer et al. 2021: 0, 10, ..., 90 % removed, most / least relevant first
    pointing game ↑, mask share ↑         against the Shapes object masks
    Spearman rho per randomisation stage  Adebayo et al. 2018, cascading from the head down

with the random and centre-bias baselines in the same table. "Beats random" means the paired
per-image difference to the random map has a 95 % interval entirely on the good side, for both
deletion and insertion (the same test is reported against the centre-bias map). Removed patches
show `--fill` (reported, it changes the numbers; Rong et al. 2022). Nothing is tuned to make a
method win: settings are the library defaults.

`--lfw-checkpoint PATH` (a vitcore checkpoint with a few-shot head on LFW faces, e.g. DINOv2
ViT-S/14 + vitcore.train.fewshot.attach_head) adds the same table for that model on scikit-image's LFW
subset (or `--lfw-data`, a folder of class folders; its validation split), preprocessed with the
checkpoint's own record; no masks there, so no localisation. The last line is then its
``deletion AUC gradient-rollout/random: 0.NN`` (ratio of the two means; below 1 = better than
random). Without it the last line reports the same ratio for the Shapes model, labelled so.

Timing (issue target): all methods' deletion and insertion curves of one image with 10 steps,
<= 3 s for the Shapes model and <= 15 s for ViT-S/14 at 224 (random weights) on 2 threads
(`--timing-threads`; the scoreboard itself may use `--threads 1`, which suffers less when other
jobs share the cores). The load average is printed with the timings.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import vitcore
from vitcore.explain import faithfulness as FA

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "assets" / "shapes_micro.safetensors"
LOWER_IS_BETTER = {"deletion": True, "insertion": False, "positive": True, "negative": False,
                   "pointing game": False, "mask share": False}


def t_quantile(n: int) -> float:
    """Two-sided 95 % Student-t quantile for n - 1 degrees of freedom (1.96 when scipy is absent)."""
    try:
        from scipy import stats

        return float(stats.t.ppf(0.975, max(n - 1, 1)))
    except ImportError:
        return 1.96


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95 % interval."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, float("nan")
    return mean, t_quantile(n) * statistics.stdev(values) / math.sqrt(n)


@dataclass
class Scores:
    """Per-image values of every metric for every method, and the randomisation correlations."""

    metrics: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # metric -> method -> per image
    rho: dict[str, list[list[float]]] = field(default_factory=dict)  # method -> per image, one rho per stage
    ssim: dict[str, list[list[float]]] = field(default_factory=dict)
    stages: list[str] = field(default_factory=list)
    curve_seconds: list[float] = field(default_factory=list)  # all methods' deletion + insertion, per image
    map_seconds: list[float] = field(default_factory=list)  # all methods' maps, per image
    correct: int = 0
    images: int = 0

    def add(self, metric: str, method: str, value: float) -> None:
        self.metrics.setdefault(metric, {}).setdefault(method, []).append(float(value))


def score_model(model, samples, *, steps: int, fill: str, normalization, randomization_images: int,
                label: str) -> Scores:
    """Run every metric on (image, label, mask or None) samples."""
    scores = Scores()
    start = time.perf_counter()
    for i, (x, label_index, mask) in enumerate(samples):
        t0 = time.perf_counter()
        maps = FA.relevance_maps(model, x, None, FA.ALL_METHODS, seed=i)
        t1 = time.perf_counter()
        petsiuk = FA.faithfulness_curves(model, x, maps, None, kinds=("deletion", "insertion"), steps=steps,
                                         fill=fill, normalization=normalization)
        t2 = time.perf_counter()
        chefer = FA.faithfulness_curves(model, x, maps, None, kinds=("positive", "negative"), fill=fill,
                                        normalization=normalization)
        scores.map_seconds.append(t1 - t0)
        scores.curve_seconds.append(t2 - t1)
        target = petsiuk["deletion"]["random"].target
        scores.correct += int(target == label_index)
        scores.images += 1
        for curves in (petsiuk, chefer):
            for kind, by_method in curves.items():
                for method, curve in by_method.items():
                    scores.add(kind, method, curve.auc)
        if mask is not None:
            for method, m in maps.items():
                scores.add("pointing game", method, float(FA.pointing_game(m, mask)))
                scores.add("mask share", method, FA.mask_share(m, mask))
        if i < randomization_images:
            check = FA.randomization_check(model, x, target, FA.ALL_METHODS, seed=i)
            scores.stages = check.stages
            for method in FA.ALL_METHODS:
                scores.rho.setdefault(method, []).append(check.spearman[method])
                scores.ssim.setdefault(method, []).append(check.ssim[method])
        if (i + 1) % 20 == 0 or i + 1 == len(samples):
            print(f"  [{label}] {i + 1}/{len(samples)} images, {time.perf_counter() - start:.0f} s", flush=True)
    return scores


def beats(scores: Scores, method: str, metric: str, baseline: str = "random") -> bool:
    """Paired per-image difference to a baseline map: is its 95 % interval entirely on the good side?"""
    mine, base = scores.metrics[metric][method], scores.metrics[metric][baseline]
    diff = [a - b for a, b in zip(mine, base)]
    mean, half = mean_ci(diff)
    return mean + half < 0 if LOWER_IS_BETTER[metric] else mean - half > 0


def print_tables(scores: Scores, title: str, fill: str, steps: int) -> dict[str, str]:
    """The scoreboard and the randomisation table; returns each method's randomisation verdict."""
    n = scores.images
    print(f"\n## {title}: {n} images, model correct on {scores.correct}/{n}; explained class = prediction; "
          f"fill = {fill}; deletion/insertion in {steps} steps; mean ± 95% CI")
    metrics = [m for m in LOWER_IS_BETTER if m in scores.metrics]
    arrows = {m: "↓" if LOWER_IS_BETTER[m] else "↑" for m in metrics}
    header = (f"{'method':<18}" + "".join(f"{m + ' ' + arrows[m]:>20}" for m in metrics)
              + "  beats (del & ins): random, centre-bias")
    print(header)
    print("-" * len(header))
    for method in FA.ALL_METHODS:
        cells = []
        for metric in metrics:
            mean, half = mean_ci(scores.metrics[metric][method])
            cells.append(f"{mean:.3f} ± {half:.3f}")
        if method in FA.BASELINES:
            verdict = "(baseline)"
        else:
            verdict = ", ".join("yes" if both_curves(scores, method, b) else "no" for b in FA.BASELINES)
        print(f"{method:<18}" + "".join(f"{c:>20}" for c in cells) + f"  {verdict}")

    verdicts: dict[str, str] = {}
    if scores.rho:
        k = len(next(iter(scores.rho.values())))
        print(f"\nRandomisation check (Adebayo et al. 2018), cascading from the head down, {k} images: "
              "mean Spearman rho with the trained map (SSIM of the fully random model in the last column)")
        head = f"{'method':<18}" + "".join(f"{s:>11}" for s in scores.stages[1:]) + f"{'SSIM all':>10}  verdict"
        print(head)
        print("-" * (len(head) + 40))
        for method in FA.ALL_METHODS:
            per_stage = [statistics.fmean(r[j] for r in scores.rho[method]) for j in range(len(scores.stages))]
            last_ssim = statistics.fmean(s[-1] for s in scores.ssim[method])
            verdicts[method] = FA.randomization_verdict(scores.stages, per_stage)
            print(f"{method:<18}" + "".join(f"{r:>11.2f}" for r in per_stage[1:]) + f"{last_ssim:>10.2f}  "
                  f"{verdicts[method]}")
    return verdicts


def both_curves(scores: Scores, method: str, baseline: str) -> bool:
    return beats(scores, method, "deletion", baseline) and beats(scores, method, "insertion", baseline)


def summary(scores: Scores, verdicts: dict[str, str], title: str) -> None:
    methods = list(FA.METHODS)
    beat = [m for m in methods if both_curves(scores, m, "random")]
    beat_one = [m for m in methods if m not in beat and (beats(scores, m, "deletion") or beats(scores, m, "insertion"))]
    print(f"\n{title}: beat random on deletion and insertion: {', '.join(beat) or 'none'}")
    print(f"{title}: beat random on only one of the two: {', '.join(beat_one) or 'none'}")
    print(f"{title}: no better than random on either: "
          f"{', '.join(m for m in methods if m not in beat and m not in beat_one) or 'none'}")
    centre = [m for m in methods if both_curves(scores, m, "centre-bias")]
    print(f"{title}: also beat the centre-bias map on both: {', '.join(centre) or 'none'}")
    if verdicts:
        failed = [m for m in methods if verdicts[m].startswith("fails")]
        agnostic = [m for m in methods if "class-agnostic" in verdicts[m]]
        print(f"{title}: fail the randomisation check (mean rho >= 0.5 over the randomised stages): "
              f"{', '.join(failed) or 'none'}")
        print(f"{title}: unchanged by a random head (class-agnostic): {', '.join(agnostic) or 'none'}")


def shapes_samples(n: int, image_size: tuple[int, int]):
    from vitcore.data import ShapesDataset

    # the validation split of vitcore.shapes_bundle (seed 0 + 10007), rendered alone: no training images needed
    ds = ShapesDataset(n, image_size, seed=10_007)
    return [(ds.tensors[i], int(ds.targets[i]), ds.masks[i]) for i in range(n)]


def lfw_samples(meta, folder: str | None, n: int):
    """(image, label, None) from an image folder's validation split, or scikit-image's LFW subset when no folder."""
    from vitcore.data.images import Preprocessing

    pre = Preprocessing.from_dict(meta["preprocessing"])  # load_checkpoint fills it in for old checkpoints
    normalization = (tuple(pre.mean), tuple(pre.std))
    if folder:
        data = vitcore.from_image_folder(folder, image_size=pre.crop_size, normalization=normalization,
                                         augment=False)
        val = data.datasets["val"]
        return [(val[i][0], int(val[i][1]), None) for i in range(min(n, len(val)))], normalization
    from vitcore.train.fewshot import lfw_subset

    images, labels, _ = lfw_subset()  # 100 faces, then 100 non-faces
    order = [i for pair in zip(range(100), range(100, 200)) for i in pair]  # alternate, so any n is balanced
    return [(pre(images[i]), labels[i], None) for i in order[:n]], normalization


def forward_seconds(model, x: torch.Tensor, images: int, batch_size: int = 64) -> float:
    """Seconds of plain batched forward passes over ``images`` copies of x: the floor for any curve code."""
    batch = x[None].expand(min(images, batch_size), -1, -1, -1).contiguous()
    start = time.perf_counter()
    with torch.no_grad():
        done = 0
        while done < images:
            model(batch[: min(batch_size, images - done)])
            done += batch_size
    return time.perf_counter() - start


def curve_forwards(steps: int) -> int:
    """Images the model runs for all maps' deletion + insertion curves: the clean and empty image once."""
    return len(FA.ALL_METHODS) * 2 * (steps - 1) + 2


def time_vits(steps: int, fill: str, reps: int) -> tuple[float, float, float]:
    """Seconds for all maps, all deletion + insertion curves, and the same number of plain forwards (ViT-S/14, 224)."""
    config = vitcore.ViTConfig.preset("small", patch_size=14)
    generator = torch.Generator().manual_seed(0)
    model = vitcore.VisionTransformer(config).eval()
    x = torch.randn(3, 224, 224, generator=generator)
    map_times, curve_times, plain_times = [], [], []
    for i in range(reps):
        t0 = time.perf_counter()
        maps = FA.relevance_maps(model, x, None, FA.ALL_METHODS, seed=i)
        t1 = time.perf_counter()
        FA.faithfulness_curves(model, x, maps, None, steps=steps, fill=fill,
                               normalization=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
        t2 = time.perf_counter()
        map_times.append(t1 - t0)
        curve_times.append(t2 - t1)
        plain_times.append(forward_seconds(model, x, curve_forwards(steps)))
    return statistics.median(map_times), statistics.median(curve_times), statistics.median(plain_times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="Shapes validation images (issue: 200)")
    parser.add_argument("--steps", type=int, default=10, help="deletion / insertion steps")
    parser.add_argument("--fill", default="mean", choices=FA.FILLS, help="what removed patches show")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for the scoreboard")
    parser.add_argument("--timing-threads", type=int, default=2, help="torch CPU threads for the timing targets")
    parser.add_argument("--randomization-images", type=int, default=None,
                        help="images for the randomisation check (default: all)")
    parser.add_argument("--lfw-checkpoint", help="vitcore checkpoint with a few-shot head on LFW faces")
    parser.add_argument("--lfw-data", help="folder of class folders to score the lfw head on (its validation "
                        "split); default: scikit-image's LFW subset (faces / not faces)")
    parser.add_argument("--lfw-images", type=int, default=40,
                        help="images for the lfw head (a ViT-S/14 needs ~600 forwards per image; the subset has 200)")
    parser.add_argument("--lfw-randomization-images", type=int, default=5,
                        help="images for the lfw head's randomisation check (14 stages x every method)")
    parser.add_argument("--skip-vits", action="store_true", help="skip the ViT-S/14 timing")
    parser.add_argument("--vits-reps", type=int, default=2, help="repetitions of the ViT-S/14 timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rand_n = args.images if args.randomization_images is None else args.randomization_images

    model, meta = vitcore.load_checkpoint(BUNDLED)
    model.eval()
    norm = meta["normalization"]
    normalization = (tuple(norm["mean"]), tuple(norm["std"]))
    print(f"Faithfulness scoreboard; torch {torch.__version__}, {torch.get_num_threads()} threads")
    shapes = score_model(model, shapes_samples(args.images, model.config.image_size), steps=args.steps, fill=args.fill,
                         normalization=normalization, randomization_images=rand_n, label="shapes")
    h, w = model.config.image_size
    gh, gw = model.config.grid_size
    verdicts = print_tables(shapes, f"Shapes micro ViT (bundled, {h}x{w}, {gh}x{gw} patches)", args.fill, args.steps)
    summary(shapes, verdicts, "Shapes")

    lfw = None
    if args.lfw_checkpoint:
        lfw_model, lfw_meta = vitcore.load_checkpoint(args.lfw_checkpoint)
        lfw_model.eval()
        samples, lfw_norm = lfw_samples(lfw_meta, args.lfw_data, args.lfw_images)
        lfw = score_model(lfw_model, samples, steps=args.steps, fill=args.fill, normalization=lfw_norm,
                          randomization_images=args.lfw_randomization_images, label="lfw")
        lfw_verdicts = print_tables(lfw, f"LFW few-shot head ({args.lfw_checkpoint})", args.fill, args.steps)
        summary(lfw, lfw_verdicts, "LFW")

    torch.set_num_threads(args.timing_threads)
    timing = shapes_samples(min(args.images, 5), model.config.image_size)
    curve_times = []
    for i, (x, _, _) in enumerate(timing):
        maps = FA.relevance_maps(model, x, None, FA.ALL_METHODS, seed=i)
        start = time.perf_counter()
        FA.faithfulness_curves(model, x, maps, None, steps=args.steps, fill=args.fill, normalization=normalization)
        curve_times.append(time.perf_counter() - start)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nTiming, one image, all {len(FA.ALL_METHODS)} maps' deletion + insertion curves "
          f"({args.steps} steps, batched, {torch.get_num_threads()} threads, load average {load}):")
    curves_s = statistics.median(curve_times)
    h, w = model.config.image_size
    print(f"  Shapes micro {h}x{w}: curves {curves_s:.3f} s (target <= 3 s: {'met' if curves_s <= 3 else 'MISSED'}; "
          f"median of {len(curve_times)} images); during the scoreboard ({args.threads} threads) curves took "
          f"{statistics.median(shapes.curve_seconds):.3f} s and the maps {statistics.median(shapes.map_seconds):.3f} s")
    plain = statistics.median(forward_seconds(model, x, curve_forwards(args.steps)) for x, _, _ in timing)
    print(f"  (the same {curve_forwards(args.steps)} images as plain batched forwards: {plain:.3f} s, "
          f"curves / plain = {curves_s / plain:.2f})")
    if not args.skip_vits:
        vits_maps, vits_curves, vits_plain = time_vits(args.steps, args.fill, args.vits_reps)
        print(f"  ViT-S/14 224x224 (random weights): curves {vits_curves:.2f} s "
              f"(target <= 15 s: {'met' if vits_curves <= 15 else 'MISSED'}; median of {args.vits_reps}); "
              f"the same {curve_forwards(args.steps)} images as plain forwards {vits_plain:.2f} s "
              f"(curves / plain = {vits_curves / vits_plain:.2f}); "
              f"computing the maps themselves {vits_maps:.2f} s (occlusion alone runs 256 forward passes)")

    final = lfw if lfw is not None else shapes
    ratio = statistics.fmean(final.metrics["deletion"]["gradient-rollout"]) / statistics.fmean(
        final.metrics["deletion"]["random"])
    if lfw is None:
        print("(no --lfw-checkpoint: the few-shot lfw head does not exist yet; the ratio below is the Shapes model's)")
        print(f"deletion AUC gradient-rollout/random: {ratio:.2f}  [Shapes micro model, not lfw]")
    else:
        print(f"deletion AUC gradient-rollout/random: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
