"""The Trust view: every method's map, its deletion / insertion curves, areas, and the randomisation strip.

Streamlit-free: numbers in, rows and plotly figures out. The heavy parts (maps, curves, the
randomisation check) run one method at a time so the page can cache each per (model, image,
class, method) and move a progress bar between them. The model is only read (see
:mod:`vitcore.explain.faithfulness`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from explorer import state as S
from explorer.figures import head_maps
from explorer.models import LoadedModel
from vitcore.explain import faithfulness as FA
from vitcore.explain import maps as MAPS
from vitcore.explain import perturb
from vitcore.explain.targets import Scorer, SimilarityTarget, as_target, scorer

__all__ = [
    "METHODS",
    "FILLS",
    "RUN_KEY",
    "RANDOMIZE_KEY",
    "INTRO",
    "CURVES_TEXT",
    "RANDOMIZATION_TEXT",
    "METHODS_TEXT",
    "FILL_LABELS",
    "SIMILARITY",
    "STEPS",
    "CAPTURE_METHODS",
    "SIMILARITY_TEXT",
    "available_methods",
    "taught_model_name",
    "make_target",
    "bound_target",
    "method_map",
    "method_maps",
    "method_curves",
    "all_curves",
    "method_randomization",
    "area_rows",
    "localisation_rows",
    "randomization_rows",
    "maps_figure",
    "curves_figure",
    "randomization_figure",
]

METHODS: tuple[str, ...] = FA.ALL_METHODS  # the methods, then the random and centre-bias baselines
FILLS: tuple[str, ...] = FA.FILLS
FILL_LABELS: dict[str, str] = {"mean": "data-set mean colour", "black": "black", "blur": "blurred", "noise": "noise",
                               "image": "the photo's mean colour"}
SIMILARITY = "similarity"  # the target of a head-less model (and a choice for every model)
STEPS = 8  # deletion / insertion steps: on a 16x16 (DINOv2 at 224 px) or 8x8 grid, whole rows per step
CAPTURE_METHODS = ("cls-attention", "rollout", "rollout-max", "rollout-min")  # read one shared capture

# session-state keys of the Trust page (to join the others in explorer/state.py)
RUN_KEY = S.TRUST_RUN  # (spec, image key, class, fill, steps) of the last "compute" click
RANDOMIZE_KEY = S.TRUST_RANDOMIZE  # (spec, image key, class) of the last randomisation click

INTRO = """
**Can you trust this map?** A relevance map claims that some patches matter more than others for
one class. Here every claim is tested the same way, next to two maps that know nothing: a
**random** map and a **centre-bias** map (everything is in the middle).

- **Good:** removing the patches the map ranks first makes the class probability *collapse*
  (small deletion area), revealing them first on an empty canvas makes it *climb* (large
  insertion area), clearly better than random; and the map *changes* when the model's weights
  are replaced by random ones.
- **Bad:** curves no better than the random map, or a map that looks the same for a random
  model: then it shows the image (edges, the object) rather than what the model uses.
"""

CURVES_TEXT = """
Deletion (left): patches are removed from most to least relevant, lower is better. Insertion
(right): patches are revealed in that order on a canvas filled with the chosen fill, higher is
better. The fill matters (removing pixels makes images the model never saw, Rong et al. 2022):
compare methods only under the same fill, and always with the **random** line (dashed).
"""

RANDOMIZATION_TEXT = """
**Sanity check** (Adebayo et al. 2018): the model's weights are re-initialised from the head
down, block by block, and each method's map is recomputed. ρ is the Spearman rank correlation
with the trained model's map (1 = same ranking). A trustworthy method's ρ drops towards 0 as more
of the model becomes random; a map whose ρ stays high does not depend on what the model learned.
Rollout and raw attention never read the classifier head, so they stay at ρ = 1 when only the head
is random; the random and centre-bias maps ignore the model entirely, which is what failing looks like.
"""

METHODS_TEXT = "\n".join(f"- **{name}**: {note}" for name, note in FA.METHOD_NOTES.items()) + (
    "\n\nRemoved patches (occlusion, curves) and Integrated Gradients' starting image use one vocabulary of "
    "fills: " + "; ".join(f"**{k}**: {v}" for k, v in perturb.FILL_NOTES.items()) + ".")


SIMILARITY_TEXT = """
**No class to explain?** This model has no classifier head: it turns a photo into features. So the
maps explain the representation itself: the **cosine similarity of the CLS features to the clean
photo's** (1 for the photo as it is; removing the patches that matter most should make it drop
fast). Pick a second photo to ask instead *why are these two alike?*
"""


def taught_model_name(session_models: Mapping[str, bytes] | None) -> str | None:
    """The newest model taught on the Teach page in this session ("taught #N ..."), or None."""
    names = [name for name in (session_models or {}) if str(name).startswith("taught #")]
    return names[-1] if names else None


def make_target(choice: int | str, reference: torch.Tensor | None = None) -> int | str | SimilarityTarget:
    """The page's choice (a class index or "similarity") as a vitcore target; ``reference`` a second photo."""
    if choice == SIMILARITY:
        return SimilarityTarget(reference) if reference is not None else SIMILARITY
    return int(choice)


def bound_target(loaded: LoadedModel, x: torch.Tensor, target) -> Scorer:
    """The target bound to the model once (a similarity target's reference features: one forward pass),
    to be shared by every method's map and the curves; a ValueError for a class outside the head."""
    return target if isinstance(target, Scorer) else scorer(loaded.model, x, as_target(target))


def available_methods(loaded: LoadedModel) -> tuple[list[str], dict[str, str]]:
    """(methods that can explain this model, {method: why not} for the others)."""
    reasons = {m: MAPS.unavailable_reason(loaded.model, m) for m in METHODS}
    return [m for m in METHODS if reasons[m] is None], {m: r for m, r in reasons.items() if r is not None}


def _options(loaded: LoadedModel, x: torch.Tensor) -> dict:
    grid = loaded.model.grid_for(*x.shape[-2:])
    # boxes of 2x2 patches on large grids (DINOv2 at 224 px: 64 forward passes instead of 256)
    return {"normalization": (loaded.mean, loaded.std), "occlusion_block": 2 if min(grid) >= 12 else 1}


def method_map(loaded: LoadedModel, x: torch.Tensor, target, method: str, fill: str = "mean") -> np.ndarray:
    """One method's relevance map (gh, gw) for ``target`` (class index, "similarity" or a target object)."""
    return FA.relevance_map(loaded.model, x, target, method, fill=fill, **_options(loaded, x)).double().numpy()


def method_maps(loaded: LoadedModel, x: torch.Tensor, target, methods, fill: str = "mean") -> dict[str, np.ndarray]:
    """Several methods' maps in one call (the attention-reading methods share one capture)."""
    maps = FA.relevance_maps(loaded.model, x, target, list(methods), fill=fill, **_options(loaded, x))
    return {method: m.double().numpy() for method, m in maps.items()}


def method_curves(
    loaded: LoadedModel, x: torch.Tensor, target, method: str, relevance: np.ndarray, steps: int, fill: str
) -> dict[str, FA.Curve]:
    """Deletion and insertion curves of one map, all steps in one batch: {"deletion": Curve, "insertion": Curve}."""
    curves = FA.faithfulness_curves(loaded.model, x, {method: relevance}, target, steps=steps, fill=fill,
                                    normalization=(loaded.mean, loaded.std))
    return {kind: by_method[method] for kind, by_method in curves.items()}


def all_curves(
    loaded: LoadedModel, x: torch.Tensor, target, maps: Mapping[str, np.ndarray], steps: int, fill: str,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, FA.Curve]]:
    """Deletion and insertion curves of every map in shared batches: {method: {"deletion": Curve, "insertion": Curve}}.

    Same numbers as :func:`method_curves` per method; the clean and fully filled images run once
    for all maps. ``progress(done, total)`` counts perturbed images.
    """
    curves = FA.faithfulness_curves(loaded.model, x, dict(maps), target, steps=steps, fill=fill,
                                    normalization=(loaded.mean, loaded.std), progress=progress)
    return {method: {kind: curves[kind][method] for kind in curves} for method in maps}


def method_randomization(
    loaded: LoadedModel, x: torch.Tensor, target, method: str,
    progress: Callable[[float, str], None] | None = None,
) -> FA.RandomizationCheck:
    """The cascading randomisation check of one method (all stages)."""
    return FA.randomization_check(loaded.model, x, target, [method], progress=progress, **_options(loaded, x))


def area_rows(curves: Mapping[str, Mapping[str, FA.Curve]], fill: str) -> list[dict]:
    """One table row per method: both areas, their difference, and whether both beat the random map."""
    random = curves.get("random")
    rows = []
    for method, pair in curves.items():
        deletion, insertion = pair["deletion"].auc, pair["insertion"].auc
        row = {
            "method": method,
            "deletion AUC ↓": round(deletion, 4),
            "insertion AUC ↑": round(insertion, 4),
            "insertion − deletion ↑": round(insertion - deletion, 4),
        }
        if random is not None and method != "random":
            better = deletion < random["deletion"].auc and insertion > random["insertion"].auc
            row["beats random on both"] = "yes" if better else "no"
        else:
            row["beats random on both"] = "(baseline)" if method == "random" else ""
        row["fill"] = fill
        rows.append(row)
    return rows


def localisation_rows(maps: Mapping[str, np.ndarray], mask: np.ndarray) -> list[dict]:
    """Pointing game and mask share of every map against the object's mask (Shapes images)."""
    return [
        {
            "method": method,
            "pointing game (max on the object)": "hit" if FA.pointing_game(m, mask) else "miss",
            "share of the map inside the object": round(FA.mask_share(m, mask), 3),
        }
        for method, m in maps.items()
    ]


def randomization_rows(checks: Mapping[str, FA.RandomizationCheck]) -> list[dict]:
    """One row per method: rho at every stage and the verdict."""
    rows = []
    for method, check in checks.items():
        row = {"method": method}
        row.update({f"ρ {stage}": round(rho, 2) for stage, rho in zip(check.stages, check.spearman[method])})
        row["verdict"] = check.verdict(method)
        rows.append(row)
    return rows


def _unit(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def maps_figure(maps: Mapping[str, np.ndarray]) -> go.Figure:
    """Every map in one row, each scaled to [0, 1] (only the ranking matters to the curves)."""
    names = list(maps)
    fig = head_maps(np.stack([_unit(maps[n]) for n in names]), names, cols=len(names), zmax=1.0)
    fig.update_layout(height=220)
    return fig


_BASELINE_STYLE = {"random": dict(color="black", dash="dash"), "centre-bias": dict(color="grey", dash="dot")}


def curves_figure(curves: Mapping[str, Mapping[str, FA.Curve]]) -> go.Figure:
    """Deletion (left) and insertion (right) curves of every method, baselines dashed."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("deletion: lower is better", "insertion: higher is better"))
    for method, pair in curves.items():
        line = _BASELINE_STYLE.get(method, {})
        for col, kind in ((1, "deletion"), (2, "insertion")):
            c = pair[kind]
            fig.add_trace(go.Scatter(
                x=c.fractions.numpy(), y=c.probabilities.numpy(), mode="lines+markers", name=method,
                legendgroup=method, showlegend=col == 1, line=line or None, marker=dict(size=4),
                hovertemplate=f"{method}<br>{kind} %{{x:.0%}}<br>p = %{{y:.3f}}<extra></extra>",
            ), row=1, col=col)
    first = next(iter(curves.values()))["deletion"]
    fig.update_xaxes(title_text="share of patches removed", tickformat=".0%", row=1, col=1)
    fig.update_xaxes(title_text="share of patches revealed", tickformat=".0%", row=1, col=2)
    label = "cosine similarity" if first.target == SIMILARITY else f"p(class {first.target})"
    fig.update_yaxes(title_text=label, rangemode="tozero", row=1, col=1)
    fig.update_layout(height=340, margin=dict(l=0, r=0, t=40, b=0), legend=dict(orientation="h", y=-0.25))
    return fig


def randomization_figure(check: FA.RandomizationCheck, method: str) -> go.Figure:
    """The strip: the method's map at every stage of the cascade, titled with rho."""
    maps = np.stack([_unit(m.numpy()) for m in check.maps[method]])
    titles = [f"{stage}: ρ={rho:.2f}" for stage, rho in zip(check.stages, check.spearman[method])]
    fig = head_maps(maps, titles, cols=len(titles), zmax=1.0)
    fig.update_layout(height=220)
    return fig
