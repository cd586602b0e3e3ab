"""Relevance maps: one score per patch for one target, from every method the field uses, and two baselines.

Methods (:data:`METHODS`, one line each in :data:`METHOD_NOTES`):

- attention read directly: last-block CLS attention; attention rollout (Abnar & Zuidema 2020;
  mean fusion, and Gildenblat's max / min fusion with 90 % discarded);
- gradients through attention: gradient rollout (Chefer et al., ICCV 2021), relevance
  propagation (Chefer et al., CVPR 2021, :mod:`vitcore.explain.relevance`), LeGrad (torchcam);
- gradients of features / inputs: Grad-CAM on the last block's tokens (pytorch-grad-cam),
  gradient x input on the patch embeddings (Shrikumar et al. 2016, summed over D), Integrated
  Gradients (Captum);
- perturbation: occlusion (Zeiler & Fergus 2014, :mod:`vitcore.explain.perturb`).

Baselines (:data:`BASELINES`), always reported next to the methods: a seeded ``random`` map and a
``centre-bias`` map (a Gaussian around the image centre; Judd et al., ICCV 2009).

The target is a class (an index, or None for the prediction) or ``"similarity"`` (the cosine
similarity of the pooled features to the clean image's, or to a second photo's:
:mod:`vitcore.explain.targets`), so a feature backbone without a head (DINOv2) is explained too.
Larger = more relevant for every method. The model is only read: no mode, flag, hook or
``.grad`` is changed on it and nothing is copied (library methods run on a frozen view that
shares its tensors).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from . import libraries, perturb
from .relevance import check_relevance_model, chefer_relevance
from .targets import Scorer, as_target, scorer

__all__ = [
    "METHODS",
    "BASELINES",
    "ALL_METHODS",
    "ATTENTION_METHODS",
    "METHOD_NOTES",
    "check_model",
    "one_image",
    "as_map",
    "check_content",
    "unavailable_reason",
    "random_map",
    "centre_bias_map",
    "grad_x_input",
    "relevance_maps",
    "relevance_map",
]

METHODS: tuple[str, ...] = (
    "cls-attention",
    "rollout",
    "rollout-max",
    "rollout-min",
    "gradient-rollout",
    "chefer-lrp",
    "legrad",
    "grad-cam",
    "occlusion",
    "grad-x-input",
    "integrated-gradients",
)
BASELINES: tuple[str, ...] = ("random", "centre-bias")
ALL_METHODS: tuple[str, ...] = METHODS + BASELINES

METHOD_NOTES: dict[str, str] = {
    "cls-attention": "attention of the CLS token to each patch in the last block, mean of the heads",
    "rollout": "attention rollout, heads averaged (Abnar & Zuidema 2020); the same map for every class",
    "rollout-max": "attention rollout, max over heads, lowest 90% of weights discarded (Gildenblat 2020)",
    "rollout-min": "attention rollout, min over heads, lowest 90% of weights discarded (Gildenblat 2020)",
    "gradient-rollout": "attention weighted by its gradient for the target, rolled out (Chefer et al. 2021, ICCV)",
    "chefer-lrp": "relevance propagated back through every layer (LRP), times the attention gradient, rolled out "
                  "(Chefer et al. 2021, CVPR)",
    "legrad": "gradient of each block's own read-out with respect to its attention, averaged (LeGrad 2024, torchcam)",
    "grad-cam": "Grad-CAM on the tokens entering the last block's attention (pytorch-grad-cam)",
    "occlusion": "drop of the score when each patch alone is hidden (Zeiler & Fergus 2014)",
    "grad-x-input": "gradient of the score times the patch embedding, summed over D (Shrikumar et al. 2016)",
    "integrated-gradients": "gradients integrated from the mean-colour image to the image (Sundararajan et al. "
                            "2017, Captum), summed per patch",
    "random": "baseline: uniform random scores (seeded)",
    "centre-bias": "baseline: a Gaussian around the image centre (Judd et al. 2009)",
}

_ROLLOUTS = {"rollout": ("mean", 0.0), "rollout-max": ("max", 0.9), "rollout-min": ("min", 0.9)}
ATTENTION_METHODS = frozenset({"cls-attention", "gradient-rollout", "chefer-lrp", "legrad", *_ROLLOUTS})


# --------------------------------------------------------------------------- checks
def check_model(model: nn.Module) -> None:
    """Raise ValueError unless ``model`` is a vitcore ViT in eval mode."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "patch_embed") or not hasattr(model, "blocks"):
        raise ValueError(
            f"{type(model).__name__} is not a vitcore VisionTransformer; convert it first "
            "(vitcore.from_torchvision / vitcore.from_hf)"
        )
    if model.training:
        raise ValueError(
            "the model is in training mode (dropout would make every score random); call model.eval() once "
            "after loading it: these functions never switch a shared model's mode"
        )


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def one_image(model: nn.Module, image: Any) -> torch.Tensor:
    """(C, H, W) or (1, C, H, W) -> (1, C, H, W) on the model's device, checked against the model."""
    if isinstance(image, torch.Tensor) and image.ndim == 3:
        image = image[None]
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected one normalised image (C, H, W) or (1, C, H, W), got {shape}; loop over a batch")
    config = model.config
    _, c, h, w = image.shape
    p = config.patch_size
    if c != config.in_channels:
        raise ValueError(f"the model expects {config.in_channels} channels but the image has {c}; convert it to RGB")
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of patch size {p}; resize it to the model's input size")
    return image.detach().to(_device(model), torch.float32)


def check_content(image: torch.Tensor, patch_size: int) -> None:
    """Raise ValueError when every patch of the (1, C, H, W) image is the same (e.g. one flat colour).

    Then all patches carry the same evidence: any map could only show where a patch sits (the
    position embedding), not what it shows, and all rankings are equally (un)informative.
    """
    patches = torch.nn.functional.unfold(image.double(), patch_size, stride=patch_size)[0]  # (C*P*P, N)
    if patches.shape[1] > 1 and float((patches - patches[:, :1]).abs().max()) < 1e-6:
        raise ValueError(
            "every patch of this image is the same (one flat colour?): all patches carry the same evidence, so every "
            "method's map is equally meaningless - there is nothing to rank. Pick an image with something in it"
        )


def as_map(relevance: Any, grid: tuple[int, int], name: str = "relevance") -> torch.Tensor:
    """A (gh, gw) or (N,) map (tensor or array) -> (N,) float64 CPU tensor, checked."""
    gh, gw = grid
    t = torch.as_tensor(relevance).detach().cpu()
    if t.shape not in ((gh, gw), (gh * gw,)):
        raise ValueError(
            f"the {name} map has shape {tuple(t.shape)} but this model sees a {gh}x{gw} patch grid for this image; "
            f"pass one score per patch, shape ({gh}, {gw}) or ({gh * gw},)"
        )
    t = t.double().flatten()
    if not torch.isfinite(t).all():
        raise ValueError(f"the {name} map holds NaN or infinite values; compute it again or replace them")
    return t


def unavailable_reason(model: nn.Module, method: str) -> str | None:
    """Why ``method`` cannot explain this model (a sentence), or None when it can."""
    from ..model.attention import Attention

    if method not in ALL_METHODS:
        return f"unknown method {method!r}; choose from {list(ALL_METHODS)}"
    if method in ATTENTION_METHODS and not all(isinstance(b.attn, Attention) for b in model.blocks):
        mixer = getattr(model.config, "token_mixer", "another token mixer")
        return (f"{method!r} reads attention maps, but this model mixes tokens with {mixer!r}; use 'occlusion', "
                "'grad-x-input' or 'integrated-gradients'")
    if method == "chefer-lrp":
        try:
            check_relevance_model(model)
        except ValueError as exc:
            return str(exc)
    return None


# --------------------------------------------------------------------------- baselines
def random_map(grid: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Baseline: uniform random scores (gh, gw) from a private generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.rand(tuple(grid), generator=generator)


def centre_bias_map(grid: tuple[int, int]) -> torch.Tensor:
    """Baseline: exp(-d^2 / 2 sigma^2), d the distance of a patch centre to the image centre, (gh, gw).

    sigma is a quarter of the shorter grid side (in patches): photographers, and data sets, put
    objects near the middle (Judd et al., "Learning to Predict Where Humans Look", ICCV 2009).
    """
    gh, gw = grid
    rows = torch.arange(gh, dtype=torch.float64) - (gh - 1) / 2  # (gh,)
    cols = torch.arange(gw, dtype=torch.float64) - (gw - 1) / 2  # (gw,)
    d2 = rows[:, None] ** 2 + cols[None, :] ** 2  # (gh, gw)
    sigma = max(min(gh, gw) / 4, 0.5)
    return torch.exp(-d2 / (2 * sigma**2)).float()


# --------------------------------------------------------------------------- methods
def grad_x_input(score: Scorer, x: torch.Tensor) -> torch.Tensor:
    """sum_D (d score / d e_i) * e_i over the patch embeddings e_i = x_p^i E, (N,)."""
    model = score.model
    grid = model.grid_for(x.shape[-2], x.shape[-1])
    with torch.no_grad():
        emb = model.patch_embed(x)  # (1, N, D)
    emb = emb.detach().requires_grad_(True)  # a leaf of our own: the model's parameters get no .grad
    with torch.enable_grad():
        tokens = model.embed_patches(emb, grid, dropout=False)  # (1, T, D)
        for block in model.blocks:
            tokens = block(tokens, grid)
        (grad,) = torch.autograd.grad(score.from_tokens(model.norm(tokens))[0], emb)  # (1, N, D)
    return (grad * emb.detach()).sum(dim=-1)[0]  # (N,)


def _attention_trace(model: nn.Module, x: torch.Tensor):
    from ..inspect.capture import capture

    return capture(model, x)


def relevance_maps(
    model: nn.Module,
    image: torch.Tensor,
    target: Any = None,
    methods: Iterable[str] = ALL_METHODS,
    *,
    seed: int = 0,
    fill: str = "mean",
    normalization: Any = None,
    occlusion_block: int = 1,
    ig_steps: int = libraries.IG_STEPS,
) -> dict[str, torch.Tensor]:
    """Relevance of every patch for ``target``, one (gh, gw) CPU map per method.

    ``target``: a class index, None (the predicted class), ``"similarity"`` (to the clean image's
    features), a :mod:`vitcore.explain.targets` object or a bound :class:`Scorer`. ``methods``
    from :data:`ALL_METHODS` (see :data:`METHOD_NOTES`); the attention methods share one capture.
    ``seed`` seeds the ``random`` baseline; ``fill`` (:data:`vitcore.explain.perturb.FILLS`) is
    what occlusion hides patches with and Integrated Gradients' baseline; ``occlusion_block`` > 1
    occludes boxes of that many patches per side (fewer forward passes on large grids).
    """
    check_model(model)
    methods = list(methods)
    for method in methods:
        reason = unavailable_reason(model, method)
        if reason is not None:
            raise ValueError(reason)
    x = one_image(model, image)
    P = model.config.patch_size
    grid = model.grid_for(x.shape[-2], x.shape[-1])
    check_content(x, P)
    score = target if isinstance(target, Scorer) else scorer(model, x, as_target(target))
    trace = _attention_trace(model, x) if any(m in ("cls-attention", *_ROLLOUTS) for m in methods) else None
    out: dict[str, torch.Tensor] = {}
    for method in methods:
        if method == "cls-attention":
            p = trace.num_prefix_tokens
            row = trace.attention[-1, 0].double().mean(dim=0)[0, p:]  # (N,) CLS row of the last block, heads averaged
            out[method] = row.reshape(grid).float()
        elif method in _ROLLOUTS:
            from ..inspect.analysis import attention_rollout

            fusion, discard = _ROLLOUTS[method]
            out[method] = attention_rollout(trace, head_fusion=fusion, discard_ratio=discard)[0]
        elif method == "gradient-rollout":
            from ..inspect.analysis import gradient_rollout

            out[method] = gradient_rollout(model, x, score=score.from_tokens)[0]
        elif method == "chefer-lrp":
            out[method] = chefer_relevance(model, x, score)
        elif method == "legrad":
            out[method] = libraries.legrad(score, x)
        elif method == "grad-cam":
            out[method] = libraries.grad_cam(score, x)
        elif method == "occlusion":
            out[method] = perturb.occlusion(score, x, grid, P, fill=fill, block=occlusion_block,
                                            normalization=normalization, seed=seed)
        elif method == "grad-x-input":
            out[method] = grad_x_input(score, x).reshape(grid).float().cpu()
        elif method == "integrated-gradients":
            out[method] = libraries.integrated_gradients(score, x, fill=fill, steps=ig_steps,
                                                         normalization=normalization)
        elif method == "random":
            out[method] = random_map(grid, seed)
        else:  # centre-bias
            out[method] = centre_bias_map(grid)
    return {name: m.detach().cpu().reshape(grid).float() for name, m in out.items()}


def relevance_map(model: nn.Module, image: torch.Tensor, target: Any = None, method: str = "gradient-rollout",
                  **options: Any) -> torch.Tensor:
    """One method's (gh, gw) map; see :func:`relevance_maps`."""
    return relevance_maps(model, image, target, [method], **options)[method]
