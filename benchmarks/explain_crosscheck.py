"""Cross-check vitcore's explanations against the libraries the field trusts, on the same model and image.

    python benchmarks/explain_crosscheck.py [--images 3] [--threads 2]

On the bundled Shapes model (64 px, 8x8 patches) and Shapes validation images, each row is one
method or metric computed by vitcore and by a reference with the same settings, and the largest
absolute difference over the images:

    occlusion (mean / blur fill)   vitcore.explain.perturb.occlusion  vs  captum.attr.Occlusion
    gradient x input               vitcore.explain.maps.grad_x_input  vs  captum.attr.InputXGradient
    deletion (pixel flipping)      faithfulness deletion curve        vs  quantus.PixelFlipping
    region perturbation (MoRF)     faithfulness "positive" curve      vs  quantus.RegionPerturbation
    randomisation (Spearman)       randomization.spearman             vs  quantus.MPRT
    rollout                        inspect.analysis.attention_rollout vs  a NumPy float64 forward + rollout

Settings made equal (the README's explanations section lists the differences): the fill is the
data set's mean colour, 0 in the normalised space, which is Quantus's ``perturb_baseline=0.0`` and
Captum's ``baselines=0``; Quantus flips features of the attribution broadcast over the channels
and wants its step to divide H * W, so its step is one channel of one patch and every C-th point
of its curve is one of ours (one whole patch per step); Quantus's
curves start after the first step (ours at the clean image) and its areas use dx = 1 per step
(ours the share of patches removed); Quantus's MPRT normalises and takes absolute values by
default (both off here) and randomises module by module with ``reset_parameters`` (our check
randomises block by block with our initialiser), so the MPRT row feeds both the same models.
The last line reads ``cross-check: K of N equal within 1e-4``.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch

import vitcore
from vitcore.explain import faithfulness as FA
from vitcore.explain import maps as M
from vitcore.explain import perturb
from vitcore.explain.randomization import spearman
from vitcore.explain.targets import scorer

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "assets" / "shapes_micro.safetensors"
TOLERANCE = 1e-4


def load_shapes(n: int):
    """The bundled model (eval) and n Shapes validation images (normalised, (C, H, W))."""
    from vitcore.data import ShapesDataset

    model, _ = vitcore.load_checkpoint(BUNDLED)
    model.eval()
    ds = ShapesDataset(n, model.config.image_size, seed=10_007)
    return model, [ds.tensors[i] for i in range(n)]


def pixel_map(patch_map: torch.Tensor, patch_size: int) -> np.ndarray:
    """(gh, gw) -> (1, 1, H, W): each patch's score on all its pixels (what pixel-level libraries take)."""
    up = patch_map.double().repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1)
    return up[None, None].numpy()


# --------------------------------------------------------------------------- rows
def occlusion_rows(model, x: torch.Tensor, fill: str) -> float:
    from captum.attr import Occlusion

    x = x[None]
    P = model.config.patch_size
    score = scorer(model, x, None)
    ours = M.relevance_map(model, x, score, "occlusion", fill=fill)  # (gh, gw)
    baseline = perturb.fill_image(x, fill, patch_size=P)  # (1, C, H, W)
    with torch.no_grad():
        theirs = Occlusion(model).attribute(x, sliding_window_shapes=(3, P, P), strides=(3, P, P),
                                            baselines=baseline, target=score.index)  # (1, C, H, W)
    return float((ours.double() - theirs[0, 0, ::P, ::P].double()).abs().max())


def grad_x_input_row(model, x: torch.Tensor) -> float:
    from captum.attr import InputXGradient

    x = x[None]
    score = scorer(model, x, None)
    grid = model.grid_for(*x.shape[-2:])
    ours = M.grad_x_input(score, x)  # (N,)

    def from_embeddings(emb: torch.Tensor) -> torch.Tensor:  # (1, N, D) -> (1,)
        return score.from_tokens(model.norm(_blocks(model, model.embed_patches(emb, grid, dropout=False), grid)))

    with torch.no_grad():
        emb = model.patch_embed(x)
    theirs = InputXGradient(from_embeddings).attribute(emb).sum(-1)[0]  # (N,)
    return float((ours.double() - theirs.double()).abs().max())


def _blocks(model, tokens, grid):
    for block in model.blocks:
        tokens = block(tokens, grid)
    return tokens


def pixel_flipping_row(model, x: torch.Tensor) -> tuple[float, float]:
    """Largest difference of the curve points and of the area (after rescaling Quantus's).

    Quantus flips ``features_in_step`` features of the attribution broadcast to (C, H, W), and
    asks that step to divide H * W: one channel of one patch (P * P) per step, so every third
    step of Quantus's curve ends on a whole patch removed, which is one step of ours.
    """
    import quantus

    P = model.config.patch_size
    grid = model.grid_for(*x.shape[-2:])
    n = grid[0] * grid[1]
    C = x.shape[0]
    score = scorer(model, x[None], None)
    relevance = M.relevance_map(model, x, score, "occlusion")  # (gh, gw), no ties on a real image
    ours = FA.deletion_curve(model, x, relevance, score.index, steps=n, fill="mean")  # one patch per step
    metric = quantus.PixelFlipping(features_in_step=P * P, perturb_baseline=0.0, normalise=False, abs=False,
                                   disable_warnings=True)
    theirs = np.asarray(metric(model=model, x_batch=x[None].numpy(), y_batch=np.array([score.index]),
                               a_batch=pixel_map(relevance, P), softmax=True, device="cpu")[0])  # (C * n,)
    whole = theirs[C - 1 :: C]  # (n,) after 1, 2, ..., n whole patches
    curve = float(np.abs(ours.probabilities[1:].numpy() - whole).max())
    quantus_auc = float(np.trapezoid(whole, dx=1))
    rescaled = (quantus_auc + (ours.probabilities[0].item() + whole[0]) / 2) / n  # ours spans 0..1 from clean
    return curve, abs(ours.auc - rescaled)


def region_perturbation_row(model, x: torch.Tensor) -> float:
    import quantus

    P = model.config.patch_size
    grid = model.grid_for(*x.shape[-2:])
    n = grid[0] * grid[1]
    score = scorer(model, x[None], None)
    relevance = M.relevance_map(model, x, score, "grad-x-input")
    ours = FA.perturbation_curve(model, x, relevance, score.index, order="positive",
                                 fractions=[k / n for k in range(n + 1)], fill="mean")
    metric = quantus.RegionPerturbation(patch_size=P, regions_evaluation=n, order="morf", perturb_baseline=0.0,
                                        normalise=False, abs=False, disable_warnings=True)
    theirs = np.asarray(metric(model=model, x_batch=x[None].numpy(), y_batch=np.array([score.index]),
                               a_batch=pixel_map(relevance, P), softmax=True, device="cpu")[0])  # (n,) p0 - p_k
    drops = (ours.probabilities[0] - ours.probabilities[1:]).numpy()
    return float(np.abs(drops - theirs).max())


def mprt_row(model, x: torch.Tensor, method: str = "grad-x-input") -> float:
    """Quantus's MPRT scores vs our spearman of our maps on the same randomised models (Quantus's generator)."""
    import copy

    import quantus
    from quantus.helpers.model.pytorch_model import PyTorchModel

    P = model.config.patch_size
    model = copy.deepcopy(model)  # Quantus re-initialises a deep copy; the test model is ours to copy
    target = scorer(model, x[None], None).index

    def explain(model, inputs, targets, **_):  # shifted to be positive: Quantus refuses all-negative maps
        maps = [M.relevance_map(model.eval(), torch.as_tensor(i), int(t), method) for i, t in zip(inputs, targets)]
        return np.concatenate([pixel_map(m.double() - m.double().min() + 1, P) for m in maps])  # rho ignores it

    metric = quantus.MPRT(normalise=False, abs=False, seed=42, disable_warnings=True)
    theirs = metric(model=model, x_batch=x[None].numpy(), y_batch=np.array([target]), a_batch=None,
                    explain_func=explain, device="cpu")
    original = M.relevance_map(model, x, target, method)
    worst = 0.0
    for name, variant in PyTorchModel(model, channel_first=True).get_random_layer_generator("top_down", 42):
        ours = spearman(original, M.relevance_map(variant.eval(), x, target, method))
        worst = max(worst, abs(ours - theirs[name][0]))
    return worst


def rollout_reference(model, x: torch.Tensor) -> np.ndarray:
    """Abnar & Zuidema's rollout from a NumPy float64 forward of the weights (no vitcore forward code)."""
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    P, D, H = cfg.patch_size, cfg.dim, cfg.heads
    img = x.double().numpy()  # (C, H, W)
    C, h, w = img.shape
    gh, gw = h // P, w // P
    patches = img.reshape(C, gh, P, gw, P).transpose(1, 3, 0, 2, 4).reshape(gh * gw, C * P * P)
    emb = patches @ sd["patch_embed.proj.weight"].reshape(D, -1).T + sd["patch_embed.proj.bias"]
    z = np.concatenate([sd["cls_token"][0], emb]) + sd["pos_embedding"][0]  # (T, D), grid = the trained grid

    def layer_norm(t, prefix):
        mu, var = t.mean(-1, keepdims=True), t.var(-1, keepdims=True)
        return (t - mu) / np.sqrt(var + cfg.layer_norm_eps) * sd[prefix + ".weight"] + sd[prefix + ".bias"]

    def gelu(t):
        from math import erf, sqrt

        return t * 0.5 * (1 + np.vectorize(erf)(t / sqrt(2)))

    T = z.shape[0]
    rollout = np.eye(T)
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        a = layer_norm(z, b + "norm1")
        qkv = a @ sd[b + "attn.qkv.weight"].T + sd[b + "attn.qkv.bias"]  # (T, 3D)
        q, k, v = (qkv[:, j * D : (j + 1) * D].reshape(T, H, D // H).transpose(1, 0, 2) for j in range(3))
        logits = q @ k.transpose(0, 2, 1) / np.sqrt(D // H)  # (H, T, T)
        attn = np.exp(logits - logits.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        out = (attn @ v).transpose(1, 0, 2).reshape(T, D) @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        z = z + out
        m = gelu(layer_norm(z, b + "norm2") @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"])
        z = z + m @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
        flow = attn.mean(0) + np.eye(T)
        rollout = (flow / flow.sum(-1, keepdims=True)) @ rollout
    return rollout[0, 1:].reshape(gh, gw)


def rollout_row(model, x: torch.Tensor) -> float:
    ours = M.relevance_map(model, x, None, "rollout").double().numpy()
    return float(np.abs(ours - rollout_reference(model, x)).max())


def crosscheck(model, images) -> list[tuple[str, str, float]]:
    """(name, reference, largest difference over the images) per method / metric."""
    rows: dict[tuple[str, str], float] = {}

    def add(name: str, reference: str, value: float) -> None:
        rows[name, reference] = max(rows.get((name, reference), 0.0), value)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for x in images:
            add("occlusion, mean fill", "captum.attr.Occlusion", occlusion_rows(model, x, "mean"))
            add("occlusion, blur fill", "captum.attr.Occlusion", occlusion_rows(model, x, "blur"))
            add("gradient x input", "captum.attr.InputXGradient", grad_x_input_row(model, x))
            curve, area = pixel_flipping_row(model, x)
            add("deletion curve (pixel flipping)", "quantus.PixelFlipping", curve)
            add("deletion AUC (rescaled)", "quantus.PixelFlipping", area)
            add("region perturbation (MoRF)", "quantus.RegionPerturbation", region_perturbation_row(model, x))
            add("rollout", "NumPy float64 forward + rollout", rollout_row(model, x))
        add("randomisation, Spearman per layer", "quantus.MPRT", mprt_row(model, images[0]))
    return [(name, ref, value) for (name, ref), value in rows.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="Shapes validation images")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, images = load_shapes(args.images)
    rows = crosscheck(model, images)
    print(f"Cross-check on the bundled Shapes model, {len(images)} images, tolerance {TOLERANCE:g}")
    print(f"{'method / metric':<36}{'reference':<34}{'largest difference':>20}")
    for name, ref, value in rows:
        print(f"{name:<36}{ref:<34}{value:>20.2e}")
    equal = sum(value <= TOLERANCE for _, _, value in rows)
    print(f"cross-check: {equal} of {len(rows)} equal within {TOLERANCE:g}")
    return 0 if equal == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
