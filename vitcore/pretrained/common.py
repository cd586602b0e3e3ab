"""Shared pieces of the converters: constants, the strict builder and small tensor-mapping helpers."""

from __future__ import annotations

import torch
from torch import nn

from ..model.config import ViTConfig
from ..model.vit import VisionTransformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageClassification preset
IMAGENET_STD = (0.229, 0.224, 0.225)
HF_DEFAULT_MEAN = (0.5, 0.5, 0.5)  # Hugging Face's IMAGENET_STANDARD_MEAN / STD, ViTImageProcessor's default
HF_DEFAULT_STD = (0.5, 0.5, 0.5)


def strip_prefix(name: str, prefix: str) -> str:
    return name[len(prefix) :] if name.startswith(prefix) else name


def mlp_ratio_for(dim: int, mlp_dim: int) -> float:
    """mlp_ratio such that ViTConfig.mlp_dim == mlp_dim, or a ValueError if no float gives it."""
    ratio = mlp_dim / dim
    if int(dim * ratio) != mlp_dim:
        raise ValueError(
            f"MLP width {mlp_dim} cannot be written as int({dim} * mlp_ratio); vitcore's ViTConfig needs an "
            f"explicit mlp_dim field to reproduce this model"
        )
    return ratio


def build_vit(config: ViTConfig, state: dict[str, torch.Tensor], like: torch.Tensor) -> VisionTransformer:
    """A VisionTransformer holding exactly ``state``, on ``like``'s device and dtype.

    The model is built on the meta device (no random initialisation of possibly 600M
    parameters), then materialised and filled by a strict ``load_state_dict``, which copies:
    the converted model never shares storage with the reference.
    """
    with torch.device("meta"):
        model = VisionTransformer(config)
    model = model.to_empty(device=like.device).to(like.dtype)
    model.load_state_dict(state, strict=True)
    return model.eval()


def linear_state(prefix: str, linear: nn.Linear) -> dict[str, torch.Tensor]:
    out = {f"{prefix}.weight": linear.weight.detach()}
    if linear.bias is not None:
        out[f"{prefix}.bias"] = linear.bias.detach()
    return out


def layer_norm_of(module: nn.Module, what: str) -> nn.LayerNorm:
    if not isinstance(module, nn.LayerNorm) or module.weight is None or module.bias is None:
        raise ValueError(f"{what} is {type(module).__name__}, not an affine nn.LayerNorm; vitcore cannot reproduce it")
    return module


def check_patch_conv(conv: nn.Module, what: str) -> nn.Conv2d:
    ok = (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == conv.stride
        and conv.kernel_size[0] == conv.kernel_size[1]
        and conv.padding in ((0, 0), "valid")
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.bias is not None
    )
    if not ok:
        raise ValueError(
            f"{what} is {conv!r}; vitcore reproduces only a square non-overlapping patch convolution "
            f"(kernel = stride = P, with bias), not a convolutional stem"
        )
    return conv


def linear_state_scaled(prefix: str, linear: nn.Linear, scale: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """A linear followed by LayerScale (``y * scale``, Touvron et al. 2021) as one linear.

    LayerScale multiplies each output channel i of the branch by a learned scale: y_i * s_i with
    y_i = sum_j W_ij x_j + b_i. That is the linear map with rows W_i scaled by s_i and bias b_i * s_i,
    so folding it into the preceding linear (W <- s[:, None] * W, b <- s * b) is exact; vitcore's
    blocks then need no LayerScale of their own. A missing bias becomes zeros (vitcore's projections
    always carry one). ``scale=None`` copies the linear unchanged.
    """
    weight = linear.weight.detach()  # (out, in)
    bias = linear.bias.detach() if linear.bias is not None else torch.zeros_like(weight[:, 0])  # (out,)
    if scale is not None:
        scale = scale.detach().to(weight.dtype)  # (out,)
        weight, bias = scale[:, None] * weight, scale * bias
    return {f"{prefix}.weight": weight, f"{prefix}.bias": bias}
