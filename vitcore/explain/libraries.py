"""Maps from the libraries practitioners know: Captum, pytorch-grad-cam and torchcam, on vitcore models.

- **Integrated Gradients** (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks",
  ICML 2017) with ``captum.attr.IntegratedGradients``: the path integral of the score's gradient
  from a baseline image (a :mod:`~vitcore.explain.perturb` fill, the data set's mean colour by
  default) to the image, times the difference; per-pixel attributions summed over channels and
  over each patch. Completeness: the patch scores add up to score(image) - score(baseline).
- **Grad-CAM** (Selvaraju et al., ICCV 2017) with ``pytorch_grad_cam.GradCAM`` on the tokens
  that enter the last block's attention (its first LayerNorm's output, as pytorch-grad-cam's
  ViT tutorial does: after the last block only the CLS token reaches the head, so its patch
  tokens have no gradient), reshaped to a (D, gh, gw) feature map; ReLU(sum_k w_k A_k) with w_k
  the spatial mean of the gradient, scaled to [0, 1] by the library.
- **LeGrad** (Bousselham et al., "LeGrad: An Explainability Method for Vision Transformers via
  Feature Formation Sensitivity", 2024) with ``torchcam.methods.LeGrad``: for every block the
  score read from that block's tokens (final LayerNorm, pooling and head applied to them),
  differentiated with respect to the block's attention; positive gradients averaged over heads,
  queries and blocks.

The libraries hook modules and call ``.backward()``, so they never see the shared model: they
run on :func:`~vitcore.explain.targets.frozen_view` (new module objects over the model's own
tensors, no copy, ``requires_grad=False``), with adapters that expose what each library expects
(torchcam wants torchvision-style blocks with an ``nn.MultiheadAttention``, built here over the
same tensors). Every hook lives inside the library's context manager and dies with the view.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import nn

from ..model.attention import Attention
from .perturb import fill_image
from .targets import Scorer, frozen_view

__all__ = ["integrated_gradients", "grad_cam", "legrad", "patch_sums", "IG_STEPS"]

IG_STEPS = 16  # Gauss-Legendre points of Integrated Gradients (Captum's default is 50; 16 keeps 224 px at seconds)


def patch_sums(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Per-pixel attributions (1, C, H, W) -> one sum per patch (gh, gw)."""
    summed = pixels[0].sum(dim=0)  # (H, W)
    return rearrange(summed, "(gh p) (gw q) -> gh gw (p q)", p=patch_size, q=patch_size).sum(-1)  # (gh, gw)


def integrated_gradients(score: Scorer, image: torch.Tensor, *, fill: str = "mean", steps: int = IG_STEPS,
                         normalization: Any = None, batch_size: int = 16,
                         return_delta: bool = False) -> torch.Tensor | tuple[torch.Tensor, float]:
    """Captum's Integrated Gradients of ``score`` from the ``fill`` baseline, summed per patch: (gh, gw).

    ``return_delta``: also Captum's convergence delta, sum(attributions) - (score(image) -
    score(baseline)) (0 when the ``steps``-point integral has converged; one extra forward pass of 2 images).
    """
    from captum.attr import IntegratedGradients

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps={steps!r} must be an integer >= 2 (points on the path from the baseline)")
    x = image.detach()
    P = score.model.config.patch_size
    baseline = fill_image(x, fill, patch_size=P, normalization=normalization)  # (1, C, H, W)
    ig = IntegratedGradients(score)  # only torch.autograd.grad with respect to the inputs: no hook, no .grad
    out = ig.attribute(x, baselines=baseline, n_steps=steps, internal_batch_size=batch_size,
                       return_convergence_delta=return_delta)
    attributions, delta = out if return_delta else (out, None)
    patches = patch_sums(attributions.detach().double(), P).float().cpu()
    return (patches, float(delta.reshape(-1)[0])) if return_delta else patches


# --------------------------------------------------------------------------- Grad-CAM
class _TappedModel(nn.Module):
    """The view's forward with an identity "tap" on the tokens entering the last block's attention."""

    def __init__(self, score: Scorer) -> None:
        super().__init__()
        self.score = score
        self.tap = nn.Identity()  # pytorch-grad-cam hooks this (our own module, not the model's)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        model = self.score.model
        images = images.detach().requires_grad_(True)  # a leaf: the frozen view's weights need no gradient
        grid = model.grid_for(*images.shape[-2:])
        x = model.embed(images)  # (B, T, D)
        for block in model.blocks[:-1]:
            x = block(x, grid)
        last = model.blocks[-1]
        x = x + last.attn(self.tap(last.norm1(x)), grid)  # (B, T, D) the last block, its LN1 output tapped
        x = x + last.mlp(last.norm2(x))
        return self.score.outputs_from_tokens(model.norm(x))  # (B, K)


def grad_cam(score: Scorer, image: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's Grad-CAM on the last block's tokens, at the patch grid (gh, gw), in [0, 1]."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    view = score.on(frozen_view(score.model))
    model = view.model
    grid = model.grid_for(*image.shape[-2:])
    prefix = model.num_prefix_tokens

    def reshape(tokens: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, D, gh, gw)
        return rearrange(tokens[:, prefix:], "b (gh gw) d -> b d gh gw", gh=grid[0], gw=grid[1])

    class _AtGrid(GradCAM):  # the CAM at the patch grid instead of resized to the image
        def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, int]:
            return grid[1], grid[0]

    tapped = _TappedModel(view)
    with _AtGrid(model=tapped, target_layers=[tapped.tap], reshape_transform=reshape) as cam:
        out = cam(input_tensor=image.detach(), targets=[ClassifierOutputTarget(view.output_index)])  # (1, gh, gw)
    return torch.as_tensor(out[0]).float()


# --------------------------------------------------------------------------- LeGrad
class _TorchvisionBlock(nn.Module):
    """A vitcore block seen as torchvision's EncoderBlock: ``ln_1``, ``self_attention`` (MHA), ``ln_2``, ``mlp``."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        attn: Attention = block.attn
        D = attn.proj.in_features
        with torch.device("meta"):
            mha = nn.MultiheadAttention(D, attn.heads, bias=True, batch_first=True)
        # q, k, v rows of vitcore's qkv are [q; k; v] with heads contiguous: MHA's in_proj layout
        mha.in_proj_weight = nn.Parameter(attn.qkv.weight, requires_grad=False)
        bias = attn.qkv.bias if attn.qkv.bias is not None else torch.zeros(3 * D, device=attn.qkv.weight.device)
        mha.in_proj_bias = nn.Parameter(bias, requires_grad=False)
        mha.out_proj.weight = nn.Parameter(attn.proj.weight, requires_grad=False)
        mha.out_proj.bias = nn.Parameter(attn.proj.bias, requires_grad=False)
        self.ln_1, self.self_attention, self.ln_2, self.mlp = block.norm1, mha.eval(), block.norm2, block.mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.self_attention(h, h, h, need_weights=False)[0]  # (B, T, D)
        return x + self.mlp(self.ln_2(x))  # (B, T, D)


class _TorchvisionStyle(nn.Module):
    """The frozen view as a torchvision-style ViT whose output is the scorer's (B, K)."""

    def __init__(self, score: Scorer) -> None:
        super().__init__()
        self.score = score
        self.layers = nn.ModuleList(_TorchvisionBlock(b) for b in score.model.blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.score.model.embed(images)  # (B, T, D)
        for layer in self.layers:
            x = layer(x)
        return self.project(x)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """The score read from any block's tokens: final LayerNorm, pooling, head (or similarity)."""
        return self.score.outputs_from_tokens(self.score.model.norm(tokens))  # (B, K)


def legrad(score: Scorer, image: torch.Tensor) -> torch.Tensor:
    """torchcam's LeGrad over every block, at the patch grid (gh, gw), not normalised."""
    from torchcam.methods import LeGrad

    others = sorted({type(b.attn).__name__ for b in score.model.blocks if not isinstance(b.attn, Attention)})
    if others:
        raise ValueError(f"LeGrad differentiates attention maps, but this model mixes tokens with {', '.join(others)}; "
                         "use 'occlusion', 'grad-x-input' or 'integrated-gradients'")
    view = score.on(frozen_view(score.model))
    model = view.model
    grid = model.grid_for(*image.shape[-2:])
    adapter = _TorchvisionStyle(view).eval()
    with torch.enable_grad(), LeGrad(adapter, list(adapter.layers), score_projection=adapter.project,
                                     prefix_tokens=model.num_prefix_tokens, grid_shape=tuple(grid)) as extractor:
        adapter(image.detach())
        cam = extractor(view.output_index, normalized=False)[0]  # (1, gh, gw)
    return cam[0].detach().float().cpu()
