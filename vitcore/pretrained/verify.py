"""How far a converted model is from the model it came from."""

from __future__ import annotations

import torch
from torch import nn

from ..model.vit import VisionTransformer
from .hf_convert import hf_parts

__all__ = ["verify"]


def _is_torchvision_vit(module: nn.Module) -> bool:
    return type(module).__name__ == "VisionTransformer" and type(module).__module__.startswith("torchvision.")


@torch.no_grad()
def _reference_outputs(reference: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(logits or None, final normalised tokens (B, T, D)) of a torchvision / Hugging Face / timm / vitcore model."""
    if isinstance(reference, VisionTransformer):
        tokens = reference.forward_features(images)  # (B, T, D)
        return reference.forward_head(tokens), tokens
    if _is_torchvision_vit(reference):
        size = reference.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(
                f"torchvision's VisionTransformer accepts only {size}x{size} inputs, got "
                f"{images.shape[-2]}x{images.shape[-1]}; verify at that size"
            )
        seen: list[torch.Tensor] = []
        hook = reference.encoder.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            logits = reference(images)  # (B, C)
        finally:
            hook.remove()
        return logits, seen[0]  # (B, T, D) after encoder.ln
    if type(reference).__module__.startswith("timm."):
        pe = reference.patch_embed
        if not reference.dynamic_img_size and pe.strict_img_size and tuple(images.shape[-2:]) != tuple(pe.img_size):
            raise ValueError(
                f"this timm model accepts only {pe.img_size[0]}x{pe.img_size[1]} inputs, got "
                f"{images.shape[-2]}x{images.shape[-1]}; verify at that size or create it with dynamic_img_size=True"
            )
        tokens = reference.forward_features(images)  # (B, T, D) after the final norm
        return reference.forward_head(tokens), tokens  # logits (B, C), or pooled features (B, D) without a head
    if hasattr(reference, "config") and hasattr(reference, "base_model"):
        base, _, _, _ = hf_parts(reference)
        seen = []
        hook = base.layernorm.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            # ViT / DeiT keep their trained grid unless asked; DINOv2 always interpolates (no such argument)
            extra = {} if reference.config.model_type.startswith("dinov2") else {"interpolate_pos_encoding": True}
            out = reference(pixel_values=images, **extra)
        finally:
            hook.remove()
        return getattr(out, "logits", None), seen[0]
    raise ValueError(
        f"cannot verify against {type(reference).__name__}; give the torchvision or Hugging Face model it came from"
    )


@torch.no_grad()
def verify(model: VisionTransformer, reference: nn.Module, images: torch.Tensor) -> float:
    """Max |difference| of logits and of final hidden states between ``model`` and the model it came from.

    ``reference`` is a torchvision VisionTransformer, a Hugging Face ViT / DeiT / DINOv2 (ViT and DeiT run with
    ``interpolate_pos_encoding=True``, so any size that is a multiple of P works), a timm ViT or
    another vitcore model. Both run in eval mode (restored afterwards) on their own device.
    """
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"model must be a vitcore VisionTransformer, got {type(model).__name__}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("images must be a (B, C, H, W) tensor; add a batch axis with x[None]")
    modes = (model.training, reference.training)
    model.eval()
    reference.eval()
    try:
        ref_param = next(reference.parameters())
        ref_logits, ref_tokens = _reference_outputs(reference, images.to(ref_param.device, ref_param.dtype))
        param = next(model.parameters())
        tokens = model.forward_features(images.to(param.device, param.dtype))  # (B, T, D)
        logits = model.forward_head(tokens)  # (B, C) or (B, D) without head
    finally:
        model.train(modes[0])
        reference.train(modes[1])
    if tokens.shape != ref_tokens.shape:
        raise ValueError(f"hidden states differ in shape: {tuple(tokens.shape)} vs {tuple(ref_tokens.shape)}")
    diff = (tokens.float().cpu() - ref_tokens.float().cpu()).abs().max().item()
    if ref_logits is not None:
        if logits.shape != ref_logits.shape:
            raise ValueError(f"logits differ in shape: {tuple(logits.shape)} vs {tuple(ref_logits.shape)}")
        diff = max(diff, (logits.float().cpu() - ref_logits.float().cpu()).abs().max().item())
    return float(diff)
