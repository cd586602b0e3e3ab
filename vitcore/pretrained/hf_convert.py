"""A Hugging Face ViT / DeiT / DINO / DINOv2 module -> the vitcore model that computes the same function.

Which classes are reproduced (``HF_ARCHITECTURES``, ``HF_REFUSED``), the config mapping and the
weight mapping. Finding and loading the Hugging Face model: :mod:`vitcore.pretrained.hf`.

DINOv2 (Oquab et al. 2023) differs from the ViT of the paper in three ways, each reproduced:

- LayerScale after the attention and the MLP branch: folded into ``attn.proj`` and ``mlp.fc2``
  (see :func:`~vitcore.pretrained.common.linear_state_scaled`);
- register tokens (Darcet et al. 2023, ``Dinov2WithRegistersModel``): Hugging Face inserts them
  right after CLS, after the position embedding was added, so they carry none; vitcore's
  ``num_registers`` does the same;
- the position embedding is resized with ``F.interpolate(mode="bicubic", size=grid,
  align_corners=False)``: without antialias in ``Dinov2Model`` and with ``antialias=True`` in
  ``Dinov2WithRegistersModel`` (transformers 5.x), hence ``pos_interpolation``.

Name mapping for DINOv2 (block ``i``): ``encoder.layer[i].norm1 / norm2`` -> ``blocks[i].norm1 /
norm2``; ``attention.{q,k,v}_proj`` -> ``attn.qkv``; ``attention.o_proj`` x ``layer_scale1`` ->
``attn.proj``; ``mlp.fc1`` -> ``mlp.fc1``; ``mlp.fc2`` x ``layer_scale2`` -> ``mlp.fc2``;
``embeddings.register_tokens`` -> ``register_tokens``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..model.config import ViTConfig
from ..model.vit import VisionTransformer
from .common import build_vit, check_patch_conv, layer_norm_of, linear_state, linear_state_scaled, mlp_ratio_for

__all__ = ["DINOV2_TYPES", "HF_ARCHITECTURES", "HF_REFUSED", "convert_hf", "hf_parts"]

# Hugging Face classes we reproduce exactly, by model_type.
HF_ARCHITECTURES = {
    "vit": ("ViTModel", "ViTForImageClassification"),
    "deit": ("DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"),
    "dinov2": ("Dinov2Model",),
    "dinov2_with_registers": ("Dinov2WithRegistersModel",),
}
DINOV2_TYPES = ("dinov2", "dinov2_with_registers")
# Classes of a supported model type whose head vitcore cannot reproduce, with the reason.
HF_REFUSED = {
    "Dinov2ForImageClassification": "its head reads [CLS, mean of the patch tokens] concatenated (2D inputs)",
    "Dinov2WithRegistersForImageClassification": "its head reads [CLS, mean of the patch tokens] concatenated (2D "
    "inputs)",
}


def hf_parts(hf: nn.Module) -> tuple[nn.Module, str, nn.Module | None, nn.Module | None]:
    """(base model, architecture, class head, distillation head) of a supported HF model."""
    architecture = type(hf).__name__
    model_type = getattr(getattr(hf, "config", None), "model_type", None)
    if architecture in HF_REFUSED:
        raise ValueError(
            f"{architecture}: {HF_REFUSED[architecture]}, which vitcore's single linear head does not reproduce; "
            f"convert its backbone (model.{getattr(hf, 'base_model_prefix', 'dinov2')}) instead"
        )
    if model_type not in HF_ARCHITECTURES or architecture not in HF_ARCHITECTURES[model_type]:
        known = [a for archs in HF_ARCHITECTURES.values() for a in archs]
        raise ValueError(f"expected one of the Hugging Face classes {known}, got {architecture}")
    if architecture in ("ViTModel", "DeiTModel", "Dinov2Model", "Dinov2WithRegistersModel"):
        return hf, architecture, None, None
    base = hf.vit if model_type == "vit" else hf.deit
    if architecture == "DeiTForImageClassificationWithTeacher":
        return base, architecture, hf.cls_classifier, hf.distillation_classifier
    return base, architecture, hf.classifier, None


def _hf_config(
    hf_config: Any, distilled: bool, num_classes: int, mlp_dim: int, distilled_head: bool = True
) -> ViTConfig:
    c = hf_config
    patch = c.patch_size if isinstance(c.patch_size, int) else tuple(c.patch_size)
    if not isinstance(patch, int):
        if patch[0] != patch[1]:
            raise ValueError(f"patch_size={patch} is not square; vitcore uses square P x P patches")
        patch = patch[0]
    if c.hidden_act != "gelu":
        raise ValueError(f"hidden_act={c.hidden_act!r}; vitcore's MLP uses the exact GELU ('gelu')")
    head_dim = getattr(c, "head_dim", None)
    if head_dim is not None and head_dim * c.num_attention_heads != c.hidden_size:
        raise ValueError(f"head_dim={head_dim} x heads={c.num_attention_heads} != hidden_size={c.hidden_size}")
    image_size = c.image_size if isinstance(c.image_size, int) else tuple(c.image_size)
    return ViTConfig(
        image_size=image_size,
        patch_size=patch,
        in_channels=c.num_channels,
        num_classes=num_classes,
        dim=c.hidden_size,
        depth=c.num_hidden_layers,
        heads=c.num_attention_heads,
        mlp_ratio=mlp_ratio_for(c.hidden_size, mlp_dim),
        dropout=float(c.hidden_dropout_prob),
        attention_dropout=float(c.attention_probs_dropout_prob),
        qkv_bias=bool(c.qkv_bias),
        layer_norm_eps=float(c.layer_norm_eps),
        distilled=distilled,
        distilled_head=distilled_head,
        num_registers=int(getattr(c, "num_register_tokens", 0) or 0) if c.model_type == "dinov2_with_registers" else 0,
        # transformers 5.x: Dinov2Embeddings interpolates without antialias, the registers variant with it
        pos_interpolation="bicubic_antialias" if c.model_type == "dinov2_with_registers" else "bicubic",
    )


def convert_hf(hf: nn.Module) -> tuple[VisionTransformer, str]:
    """(vitcore model with the same weights, architecture name) of a supported Hugging Face module."""
    base, architecture, head, head_dist = hf_parts(hf)
    emb = base.embeddings
    distilled = getattr(emb, "distillation_token", None) is not None
    if head is not None and isinstance(head, nn.Linear):
        num_classes = head.out_features
    elif head is None or isinstance(head, nn.Identity):
        num_classes = 0
    else:
        raise ValueError(f"the classifier of this {architecture} is {head!r}, not a Linear")
    if architecture == "DeiTForImageClassificationWithTeacher" and num_classes == 0:
        raise ValueError("a DeiTForImageClassificationWithTeacher without labels averages two tokens; use DeiTModel")
    # DeiTForImageClassification's head reads only the CLS token (the distillation token still
    # attends); the teacher variant averages a CLS head and a distillation head.
    if hf.config.model_type in DINOV2_TYPES:
        return _convert_dinov2(hf), architecture
    mlp_dim = base.layers[0].mlp.fc1.out_features
    config = _hf_config(
        hf.config, distilled, num_classes, mlp_dim, distilled_head=architecture != "DeiTForImageClassification"
    )

    conv = check_patch_conv(emb.patch_embeddings.projection, "embeddings.patch_embeddings.projection")
    state: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": conv.weight.detach(),
        "patch_embed.proj.bias": conv.bias.detach(),
        "cls_token": emb.cls_token.detach(),  # (1, 1, D)
        "pos_embedding": emb.position_embeddings.detach(),  # (1, prefix+N, D)
        **linear_state("norm", layer_norm_of(base.layernorm, "layernorm")),
    }
    if distilled:
        state["dist_token"] = emb.distillation_token.detach()  # (1, 1, D)
    if num_classes:
        state.update(linear_state("head", head))
    if head_dist is not None:
        state.update(linear_state("head_dist", head_dist))
    for i, layer in enumerate(base.layers):
        attn, p = layer.attention, f"blocks.{i}"
        q, k, v = attn.q_proj, attn.k_proj, attn.v_proj
        # rows of each projection are (h d); stacked they are vitcore's (three h d)
        state[f"{p}.attn.qkv.weight"] = torch.cat([q.weight, k.weight, v.weight]).detach()  # (3D, D)
        if q.bias is not None:
            state[f"{p}.attn.qkv.bias"] = torch.cat([q.bias, k.bias, v.bias]).detach()  # (3D,)
        state.update(linear_state(f"{p}.attn.proj", attn.o_proj))
        state.update(linear_state(f"{p}.norm1", layer_norm_of(layer.layernorm_before, f"layer {i} layernorm_before")))
        state.update(linear_state(f"{p}.norm2", layer_norm_of(layer.layernorm_after, f"layer {i} layernorm_after")))
        state.update(linear_state(f"{p}.mlp.fc1", layer.mlp.fc1))
        state.update(linear_state(f"{p}.mlp.fc2", layer.mlp.fc2))

    return build_vit(config, state, like=conv.weight), architecture


def _convert_dinov2(hf: nn.Module) -> VisionTransformer:
    """Dinov2Model / Dinov2WithRegistersModel: LayerScale folded into the linears, registers after CLS."""
    c, emb, layers = hf.config, hf.embeddings, list(hf.encoder.layer)
    if getattr(c, "use_swiglu_ffn", False) or not hasattr(layers[0].mlp, "fc1"):
        raise ValueError(
            "this DINOv2 uses a SwiGLU MLP (use_swiglu_ffn=True, as DINOv2 giant does); vitcore's MLP is "
            "Linear-GELU-Linear, so only the small, base and large DINOv2 (plain MLP) can be converted"
        )
    config = _hf_config(c, False, 0, layers[0].mlp.fc1.out_features)
    conv = check_patch_conv(emb.patch_embeddings.projection, "embeddings.patch_embeddings.projection")
    state: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": conv.weight.detach(),
        "patch_embed.proj.bias": conv.bias.detach(),
        "cls_token": emb.cls_token.detach(),  # (1, 1, D)
        "pos_embedding": emb.position_embeddings.detach(),  # (1, 1+N, D): CLS and patches, none for registers
        **linear_state("norm", layer_norm_of(hf.layernorm, "layernorm")),
    }
    if config.num_registers:
        state["register_tokens"] = emb.register_tokens.detach()  # (1, R, D)
    for i, layer in enumerate(layers):
        attn, p = layer.attention, f"blocks.{i}"
        q, k, v = attn.q_proj, attn.k_proj, attn.v_proj
        state[f"{p}.attn.qkv.weight"] = torch.cat([q.weight, k.weight, v.weight]).detach()  # (3D, D)
        if q.bias is not None:
            state[f"{p}.attn.qkv.bias"] = torch.cat([q.bias, k.bias, v.bias]).detach()  # (3D,)
        # x + LS1(o_proj(a)) with LS1(y) = lambda1 * y  ==  x + o_proj'(a) with o_proj' = lambda1-scaled rows
        state.update(linear_state_scaled(f"{p}.attn.proj", attn.o_proj, layer.layer_scale1.lambda1))
        state.update(linear_state(f"{p}.norm1", layer_norm_of(layer.norm1, f"layer {i} norm1")))
        state.update(linear_state(f"{p}.norm2", layer_norm_of(layer.norm2, f"layer {i} norm2")))
        state.update(linear_state(f"{p}.mlp.fc1", layer.mlp.fc1))
        state.update(linear_state_scaled(f"{p}.mlp.fc2", layer.mlp.fc2, layer.layer_scale2.lambda1))
    return build_vit(config, state, like=conv.weight)
