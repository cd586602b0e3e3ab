"""Cross-checked randomisation: Adebayo et al. 2018's sanity check for saliency maps, and how alike two maps are.

**Model-parameter randomisation** (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS
2018, Sec. 3): re-initialise the weights cascading from the head down, block by block, and
compare each map with the trained model's map (Spearman rank correlation and SSIM, Wang et al.
2004). A map that stays the same when the weights it claims to explain are random is not
explaining them. Randomised variants are new modules whose untouched tensors *are* the model's
tensors (shared storage) and whose randomised blocks hold fresh tensors: the model itself is
never written, hooked or copied.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .maps import ALL_METHODS, check_model, one_image, relevance_maps
from .targets import ClassTarget, as_target, scorer

__all__ = [
    "RandomizationCheck",
    "randomization_stages",
    "randomized_model",
    "randomization_check",
    "randomization_verdict",
    "spearman",
    "ssim",
]


# --------------------------------------------------------------------------- similarity of maps
def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, ties given their average rank."""
    order = torch.sort(v, stable=True).indices
    _, inverse, counts = torch.unique_consecutive(v[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0)  # last position (1-based) of each group of equal values
    average = (ends - counts + 1 + ends).double() / 2  # (groups,)
    ranks = torch.empty(v.numel(), dtype=torch.float64)
    ranks[order] = average[inverse]
    return ranks


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of two maps of the same shape (ties: average ranks), in [-1, 1].

    Identical maps give exactly 1; a constant map against a different one gives 0 (no ranking to compare).
    """
    x = torch.as_tensor(a).detach().cpu().double().flatten()
    y = torch.as_tensor(b).detach().cpu().double().flatten()
    if x.shape != y.shape:
        raise ValueError(f"maps of shapes {tuple(torch.as_tensor(a).shape)} and {tuple(torch.as_tensor(b).shape)} "
                         "cannot be compared; compute both on the same image")
    if torch.equal(x, y):
        return 1.0
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(rx.norm() * ry.norm())
    return float(rx @ ry) / denominator if denominator > 0 else 0.0


def _unit_range(m: torch.Tensor) -> torch.Tensor:
    low, high = m.min(), m.max()
    return (m - low) / (high - low) if high > low else torch.zeros_like(m)


def ssim(a: Any, b: Any, window: int = 7) -> float:
    """Structural similarity (Wang et al. 2004) of two (gh, gw) maps, each min-max scaled to [0, 1] first.

    Uniform ``window`` x ``window`` windows (shrunk to the grid when it is smaller), no padding,
    C1 = 0.01^2 and C2 = 0.03^2 for a data range of 1; the mean over windows. Identical maps give 1.
    """
    x = torch.as_tensor(a).detach().cpu().double()
    y = torch.as_tensor(b).detach().cpu().double()
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"ssim compares two (gh, gw) maps of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = _unit_range(x)[None, None], _unit_range(y)[None, None]  # (1, 1, gh, gw)
    w = max(1, min(window, x.shape[-2], x.shape[-1]))
    mx, my = F.avg_pool2d(x, w, stride=1), F.avg_pool2d(y, w, stride=1)
    vx = F.avg_pool2d(x * x, w, stride=1) - mx**2
    vy = F.avg_pool2d(y * y, w, stride=1) - my**2
    cxy = F.avg_pool2d(x * y, w, stride=1) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


# --------------------------------------------------------------------------- randomisation
def randomization_stages(model: nn.Module) -> list[str]:
    """Stage names of the cascading check: "trained", "head", "block L-1", ..., "block 0", "embedding"."""
    return ["trained", "head", *(f"block {i}" for i in reversed(range(len(model.blocks)))), "embedding"]


def _stage_of(name: str) -> str:
    """Which stage a parameter / buffer name belongs to."""
    first = name.split(".", 1)[0]
    if first in ("head", "head_dist", "norm"):
        return "head"
    if first == "blocks":
        return f"block {name.split('.')[1]}"
    return "embedding"  # patch embedding, CLS / distillation / register tokens, position embedding


def _fresh_parameter(owner: nn.Module, pname: str, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A new tensor shaped like ``like``, initialised as VisionTransformer.reset_parameters would."""
    t = torch.empty(like.shape, dtype=torch.float32)

    def trunc(std: float) -> None:
        nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std, generator=generator)

    if isinstance(owner, nn.LayerNorm):
        t.fill_(1.0 if pname == "weight" else 0.0)
    elif pname == "bias":
        t.zero_()
    elif isinstance(owner, nn.Conv2d):  # the patch embedding: LeCun normal
        trunc(math.sqrt(1.0 / (owner.in_channels * owner.kernel_size[0] * owner.kernel_size[1])))
    else:  # linears, CLS / distillation / register tokens, position embedding, other mixers' weights
        trunc(0.02)
    return t.to(like.device, like.dtype)


class _Randomizer:
    """Fresh tensors per stage, drawn once from a seeded private generator and reused by later stages."""

    def __init__(self, model: nn.Module, seed: int) -> None:
        self.model, self.seed = model, int(seed)
        self.stages = randomization_stages(model)
        self.fresh: dict[str, dict[str, torch.Tensor]] = {}

    def tensors_for(self, stage: str) -> dict[str, torch.Tensor]:
        if stage not in self.fresh:
            index = self.stages.index(stage)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            out = {}
            for mname, module in self.model.named_modules():
                for pname, param in module.named_parameters(recurse=False):
                    full = f"{mname}.{pname}" if mname else pname
                    if _stage_of(full) == stage:
                        out[full] = _fresh_parameter(module, pname, param, generator)
            self.fresh[stage] = out
        return self.fresh[stage]

    def model_up_to(self, stage: str) -> nn.Module:
        """The model with every stage from "head" down to ``stage`` (inclusive) re-initialised."""
        if stage not in self.stages:
            raise ValueError(f"unknown stage {stage!r}; this model has {self.stages}")
        state = dict(self.model.state_dict())  # detached references to the model's tensors, no copy
        for s in self.stages[1 : self.stages.index(stage) + 1]:
            state.update(self.tensors_for(s))
        with torch.device("meta"):  # a module skeleton: no memory, no random numbers drawn
            variant = type(self.model)(self.model.config)
        variant.load_state_dict(state, assign=True)  # parameters now share the model's storage, or are fresh
        for name, buffer in self.model.named_buffers():  # non-persistent buffers are not in the state dict
            owner_name, _, bname = name.rpartition(".")
            owner = variant.get_submodule(owner_name) if owner_name else variant
            if getattr(owner, bname).is_meta:
                setattr(owner, bname, buffer)
        return variant.eval()


def randomized_model(model: nn.Module, stage: str, seed: int = 0) -> nn.Module:
    """A new module: ``model`` with its weights re-initialised from the head down to ``stage`` (cascading).

    Adebayo et al. 2018's cascading randomisation. ``stage`` is one of :func:`randomization_stages`
    ("trained" re-initialises nothing). The untouched parameters are the model's own tensors
    (shared storage, never written); the randomised ones are drawn as in
    ``VisionTransformer.reset_parameters`` (truncated normal, LayerNorm to 1/0, biases 0) from a
    private ``torch.Generator`` seeded per stage, so the same seed gives the same weights and the
    global random state is never touched.
    """
    check_model(model)
    return _Randomizer(model, seed).model_up_to(stage)


@dataclass
class RandomizationCheck:
    """Maps of a model re-initialised stage by stage, and how similar each is to the trained map."""

    stages: list[str]  # "trained", "head", "block L-1", ..., "embedding"
    target: int | str  # the class explained, or "similarity"
    maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # method -> one (gh, gw) map per stage
    spearman: dict[str, list[float]] = field(default_factory=dict)  # method -> rho(trained map, stage map)
    ssim: dict[str, list[float]] = field(default_factory=dict)  # method -> SSIM(trained map, stage map)

    def verdict(self, method: str, threshold: float = 0.5) -> str:
        """"passes" or "fails: ..." for one method; see :func:`randomization_verdict`."""
        return randomization_verdict(self.stages, self.spearman[method], threshold)


def randomization_verdict(stages: list[str], rhos: Iterable[float], threshold: float = 0.5) -> str:
    """Summary of a cascading check: a map fails when it stays similar while the weights go random.

    ``rhos`` are Spearman correlations with the trained map, one per stage (from "trained"),
    e.g. averaged over images. Fails when their mean over the randomised stages is at least
    ``threshold``; adds "class-agnostic" when the map does not change at all with a random head
    (rollout and raw attention never read the head).
    """
    rhos = [float(r) for r in rhos]
    stages = list(stages)
    if len(rhos) != len(stages) or len(stages) < 2 or stages[0] != "trained":
        raise ValueError("pass one correlation per stage, starting with 'trained' and at least one randomised stage")
    mean = sum(rhos[1:]) / (len(rhos) - 1)
    text = f"fails (mean rho {mean:.2f} >= {threshold})" if mean >= threshold else f"passes (mean rho {mean:.2f})"
    if "head" in stages and rhos[stages.index("head")] > 0.99:
        text += "; class-agnostic: unchanged by a random head"
    return text


def randomization_check(
    model: nn.Module,
    image: torch.Tensor,
    target: Any = None,
    methods: Iterable[str] = ALL_METHODS,
    *,
    seed: int = 0,
    stages: Iterable[str] | None = None,
    progress: Callable[[float, str], None] | None = None,
    **options: Any,
) -> RandomizationCheck:
    """Adebayo et al. 2018's cascading model-parameter randomisation test for each method.

    For every stage (default all of :func:`randomization_stages`) the maps are recomputed on
    :func:`randomized_model` for the same image and class (the trained model's prediction when
    ``target`` is None) and compared with the "trained" stage's maps, which are computed the same
    way on an unrandomised variant (so an unchanged model gives rho = SSIM = 1 exactly). The
    baselines do not depend on the model: they show what failing looks like. ``progress(share,
    message)`` is called after each stage. A ``"similarity"`` target compares each variant's
    features with its own features of the clean image (or of the reference photo). ``options``
    go to :func:`~vitcore.explain.maps.relevance_maps` (fill, occlusion_block, ...).
    """
    check_model(model)
    x = one_image(model, image)
    methods = list(methods)
    goal = as_target(target)
    if isinstance(goal, ClassTarget):  # the trained model's class, kept for every variant
        goal = ClassTarget(scorer(model, x, goal).index)
    t = goal.index if isinstance(goal, ClassTarget) else "similarity"
    randomizer = _Randomizer(model, seed)
    chosen = list(randomizer.stages) if stages is None else list(stages)
    unknown = [s for s in chosen if s not in randomizer.stages]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; this model has {randomizer.stages}")
    if "trained" not in chosen:
        chosen.insert(0, "trained")
    chosen.sort(key=randomizer.stages.index)
    check = RandomizationCheck(stages=chosen, target=t)
    for i, stage in enumerate(chosen):
        variant = randomizer.model_up_to(stage)
        maps = relevance_maps(variant, x, goal, methods, seed=seed, **options)
        del variant
        for name, m in maps.items():
            check.maps.setdefault(name, []).append(m)
            reference = check.maps[name][0]
            check.spearman.setdefault(name, []).append(spearman(reference, m))
            check.ssim.setdefault(name, []).append(ssim(reference, m))
        if progress is not None:
            progress((i + 1) / len(chosen), stage)
    return check
