"""timm's Vision Transformers (``vit_*``, ``deit_*``, ``deit3_*``, ``*dinov2*``) as vitcore models.

timm's ``VisionTransformer`` is a superset of the paper's model; what vitcore cannot compute the
same way is refused with the name of the option (no class token, fc_norm, attention pooling,
qk-norm, SwiGLU, pre-norm, ...). Three timm options are reproduced exactly by rewriting tensors:

- LayerScale (``init_values``, DeiT III and DINOv2): folded into ``attn.proj`` and ``mlp.fc2``;
- ``no_embed_class=True`` (DeiT III, DINOv2 with registers): CLS (and the distillation token) get
  no position embedding, so their rows of vitcore's ``pos_embedding`` are zero;
- register tokens (``reg_tokens``, placed right after CLS like vitcore's): when timm's position
  embedding has rows for them (``no_embed_class=False``), those rows are constants that are never
  interpolated, so they are added into vitcore's ``register_tokens`` once.

timm resizes the position embedding with ``resample_abs_pos_embed``: ``F.interpolate(mode="bicubic",
size=grid, align_corners=False, antialias=True)``, hence ``pos_interpolation="bicubic_antialias"``
(used on inputs of another size when the timm model has ``dynamic_img_size=True``).

Name mapping (block ``i``): ``patch_embed.proj`` -> ``patch_embed.proj``; ``cls_token``,
``dist_token``, ``reg_token`` -> ``cls_token``, ``dist_token``, ``register_tokens``; ``pos_embed``
-> ``pos_embedding``; ``blocks[i].norm1 / attn.qkv / norm2 / mlp.fc1`` -> the same names;
``blocks[i].attn.proj`` x ``ls1`` -> ``blocks[i].attn.proj``; ``blocks[i].mlp.fc2`` x ``ls2`` ->
``blocks[i].mlp.fc2``; ``norm`` -> ``norm``; ``head`` / ``head_dist`` -> ``head`` / ``head_dist``.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import torch
from torch import nn

from ..model.config import ViTConfig
from ..model.vit import VisionTransformer
from .common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_vit,
    check_patch_conv,
    linear_state,
    linear_state_scaled,
    mlp_ratio_for,
)

__all__ = ["TIMM_PATTERNS", "from_timm"]

# Model names from_timm builds by name (any timm VisionTransformer module is accepted as such).
TIMM_PATTERNS = ("vit_*", "deit_*", "deit3_*", "*dinov2*")


def _is_identity(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _refuse(what: str, how: str = "") -> None:
    raise ValueError(f"this timm model uses {what}, which vitcore's VisionTransformer does not reproduce{how}")


def _check_timm_vit(tm: nn.Module) -> None:
    """Raise a ValueError naming the first option of ``tm`` that vitcore cannot compute the same way."""
    from timm.layers import Attention, LayerScale, Mlp, PatchEmbed
    from timm.models.vision_transformer import Block

    if tm.cls_token is None:
        _refuse("no class token (class_token=False)", "; vitcore's sequence always starts with CLS")
    if tm.attn_pool is not None:
        _refuse(f"attention pooling (global_pool={tm.global_pool!r})")
    if tm.global_pool not in ("token", "avg"):
        _refuse(f"global_pool={tm.global_pool!r}", "; vitcore pools with 'token' (CLS) or 'avg' (mean of patches)")
    if not _is_identity(tm.fc_norm):
        _refuse("fc_norm (the final LayerNorm after pooling)", "; vitcore normalises the tokens before pooling")
    if tm.global_pool == "avg" and tm.pool_include_prefix:
        _refuse("pool_include_prefix=True (prefix tokens in the average)")
    if _is_identity(tm.norm):
        _refuse("no final norm (final_norm=False)")
    if not _is_identity(tm.norm_pre):
        _refuse("a LayerNorm before the blocks (pre_norm=True, CLIP style)")
    if tm.pos_embed is None:
        _refuse("no learned position embedding (pos_embed='none')")
    pe = tm.patch_embed
    if type(pe) is not PatchEmbed:
        _refuse(f"the patch embedding {type(pe).__name__} (e.g. a convolutional hybrid stem)")
    if not _is_identity(pe.norm):
        _refuse(f"a norm in the patch embedding ({type(pe.norm).__name__})")
    if pe.dynamic_img_pad:
        _refuse("dynamic_img_pad=True (padding images to a multiple of the patch)")
    for i, block in enumerate(tm.blocks):
        if type(block) is not Block:
            _refuse(f"blocks of type {type(block).__name__} (block {i})", "; only timm's pre-norm Block is")
        attn, mlp = block.attn, block.mlp
        if type(attn) is not Attention:
            _refuse(f"attention {type(attn).__name__} (block {i})")
        if not (_is_identity(attn.q_norm) and _is_identity(attn.k_norm)):
            _refuse(f"qk-norm (qk_norm=True, block {i})")
        if not _is_identity(attn.norm):
            _refuse(f"a norm on the attention output (scale_attn_norm=True, block {i})")
        if getattr(attn, "gate", None) is not None:
            _refuse(f"a gated attention output (block {i})")
        if attn.num_heads * attn.head_dim != tm.embed_dim:
            _refuse(f"heads x head_dim = {attn.num_heads} x {attn.head_dim} != embed_dim {tm.embed_dim} (block {i})")
        if type(mlp) is not Mlp:
            what = "SwiGLU" if "glu" in type(mlp).__name__.lower() else type(mlp).__name__
            _refuse(f"a {what} MLP ({type(mlp).__name__}, block {i})", "; vitcore's MLP is Linear-GELU-Linear")
        if not (isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "none"):
            _refuse(f"the MLP activation {mlp.act!r} (block {i})", "; vitcore uses the exact nn.GELU()")
        if not _is_identity(mlp.norm):
            _refuse(f"a norm inside the MLP (scale_mlp_norm=True, block {i})")
        if not isinstance(mlp.fc1, nn.Linear) or not isinstance(mlp.fc2, nn.Linear):
            _refuse(f"a convolutional MLP (block {i})")
        for name in ("ls1", "ls2"):
            ls = getattr(block, name)
            if not (_is_identity(ls) or type(ls) is LayerScale):
                _refuse(f"{name} of type {type(ls).__name__} (block {i})")
    norms = [tm.norm] + [n for b in tm.blocks for n in (b.norm1, b.norm2)]
    if any(not isinstance(n, nn.LayerNorm) or n.weight is None or n.bias is None for n in norms):
        kinds = sorted({type(n).__name__ for n in norms})
        _refuse(f"norm layers {kinds}", "; vitcore uses affine nn.LayerNorm")
    if len({n.eps for n in norms}) != 1:
        _refuse(f"LayerNorms with different eps {sorted({n.eps for n in norms})}")
    biases = {b.attn.qkv.bias is not None for b in tm.blocks}
    if len(biases) != 1:
        _refuse("qkv bias in some blocks only")
    if getattr(tm, "dist_token", None) is not None:
        if tm.reg_token is not None:
            _refuse("both a distillation token and register tokens")
        if tm.num_classes == 0:
            _refuse(
                "num_classes=0 with a distillation token (its features average the CLS and distillation tokens)",
                "; give it num_classes > 0",
            )


def _position_state(tm: nn.Module, distilled: bool, registers: int) -> dict[str, torch.Tensor]:
    """vitcore's pos_embedding (CLS/dist rows + patch rows) and register tokens from timm's pos_embed."""
    pos = tm.pos_embed.detach()  # (1, L, D)
    n_pos_prefix = 1 + int(distilled)  # CLS (+ dist): the prefix rows vitcore's pos_embedding has
    out: dict[str, torch.Tensor] = {}
    if tm.no_embed_class:
        # timm adds pos_embed to the patches only, then prepends CLS (dist, registers) untouched.
        prefix_pos = pos.new_zeros(1, n_pos_prefix, pos.shape[-1])  # (1, p, D): adding zero changes nothing
        patch_pos = pos  # (1, N, D)
        register_pos = None
    else:
        # timm prepends [CLS, (dist | registers)] and then adds pos_embed to every token.
        prefix_pos = pos[:, :n_pos_prefix]  # (1, p, D)
        register_pos = pos[:, 1 : 1 + registers] if registers else None  # (1, R, D), never interpolated by timm
        patch_pos = pos[:, tm.num_prefix_tokens :]  # (1, N, D)
    out["pos_embedding"] = torch.cat([prefix_pos, patch_pos], dim=1)  # (1, p+N, D)
    if registers:
        reg = tm.reg_token.detach()  # (1, R, D)
        out["register_tokens"] = reg + register_pos if register_pos is not None else reg  # constant: fold once
    return out


def _convert_timm(tm: nn.Module) -> VisionTransformer:
    _check_timm_vit(tm)
    conv = check_patch_conv(tm.patch_embed.proj, "patch_embed.proj")
    distilled = getattr(tm, "dist_token", None) is not None
    registers = int(tm.num_reg_tokens or 0)
    blocks = list(tm.blocks)
    b0 = blocks[0]
    head = tm.head
    num_classes = head.out_features if isinstance(head, nn.Linear) else 0
    if not (isinstance(head, nn.Linear) or _is_identity(head)):
        _refuse(f"a head of type {type(head).__name__}")
    config = ViTConfig(
        image_size=tuple(tm.patch_embed.img_size),
        patch_size=conv.kernel_size[0],
        in_channels=conv.in_channels,
        num_classes=num_classes,
        dim=tm.embed_dim,
        depth=len(blocks),
        heads=b0.attn.num_heads,
        mlp_ratio=mlp_ratio_for(tm.embed_dim, b0.mlp.fc1.out_features),
        dropout=float(b0.mlp.drop1.p),
        attention_dropout=float(b0.attn.attn_drop.p),
        qkv_bias=b0.attn.qkv.bias is not None,
        pool="cls" if tm.global_pool == "token" else "mean",
        layer_norm_eps=float(tm.norm.eps),
        distilled=distilled,
        num_registers=registers,
        pos_interpolation="bicubic_antialias",  # timm's resample_abs_pos_embed: bicubic, antialias=True
    )
    state: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": conv.weight.detach(),
        "patch_embed.proj.bias": conv.bias.detach(),
        "cls_token": tm.cls_token.detach(),  # (1, 1, D)
        **_position_state(tm, distilled, registers),
        **linear_state("norm", tm.norm),
    }
    if distilled:
        state["dist_token"] = tm.dist_token.detach()  # (1, 1, D)
    if num_classes:
        state.update(linear_state("head", head))
        if distilled:
            state.update(linear_state("head_dist", tm.head_dist))
    for i, block in enumerate(blocks):
        p, attn, mlp = f"blocks.{i}", block.attn, block.mlp
        gamma1 = None if _is_identity(block.ls1) else block.ls1.gamma  # LayerScale: x + gamma * branch(x)
        gamma2 = None if _is_identity(block.ls2) else block.ls2.gamma
        state.update(linear_state(f"{p}.norm1", block.norm1))
        state.update(linear_state(f"{p}.attn.qkv", attn.qkv))  # rows (three h d), as vitcore's
        state.update(linear_state_scaled(f"{p}.attn.proj", attn.proj, gamma1))
        state.update(linear_state(f"{p}.norm2", block.norm2))
        state.update(linear_state_scaled(f"{p}.mlp.fc1", mlp.fc1, None))  # bias=False (proj_bias=False) -> zeros
        state.update(linear_state_scaled(f"{p}.mlp.fc2", mlp.fc2, gamma2))
    return build_vit(config, state, like=conv.weight)


def _timm_metadata(tm: nn.Module, model: VisionTransformer, source: str) -> dict[str, Any]:
    import timm.data

    data = timm.data.resolve_model_data_config(tm)
    h, w = model.config.image_size
    crop_pct = float(data.get("crop_pct") or 1.0)
    num_classes = model.config.num_classes
    class_names = [f"class_{i}" for i in range(num_classes)]
    subset = timm.data.infer_imagenet_subset(tm)
    if subset is not None:
        info = timm.data.ImageNetInfo(subset)
        if info.num_classes() == num_classes:
            class_names = [info.index_to_description(i) for i in range(num_classes)]
    notes = []
    if any(not _is_identity(b.ls1) for b in tm.blocks):
        notes.append("LayerScale is folded into attn.proj and mlp.fc2 (exact)")
    if tm.no_embed_class:
        notes.append("no_embed_class: CLS carries no position embedding (zero rows in pos_embedding)")
    if tm.num_reg_tokens:
        notes.append(f"{tm.num_reg_tokens} register tokens after CLS")
    if not tm.dynamic_img_size:
        notes.append(f"timm itself accepts only {h}x{w} inputs (dynamic_img_size=False); vitcore interpolates")
    return {
        "source": source,
        "family": "timm",
        "architecture": type(tm).__name__,
        "class_names": class_names,
        "normalization": {
            "mean": tuple(float(m) for m in data.get("mean", IMAGENET_MEAN)),
            "std": tuple(float(s) for s in data.get("std", IMAGENET_STD)),
        },
        "image_size": (h, w),
        "resize_size": (math.floor(h / crop_pct), math.floor(w / crop_pct)),  # timm's eval transform: resize, crop
        "interpolation": data.get("interpolation", "bicubic"),
        "notes": notes,
    }


def from_timm(model_or_name: nn.Module | str, **create_kwargs: Any) -> tuple[VisionTransformer, dict[str, Any]]:
    """A timm ViT (module, or model name with random weights) as (vitcore model, metadata).

    A name ("vit_small_patch16_224", "deit_tiny_distilled_patch16_224",
    "vit_small_patch14_reg4_dinov2", ...; optionally "timm:" in front) must match one of
    :data:`TIMM_PATTERNS`; it is built with ``timm.create_model(name, pretrained=False,
    **create_kwargs)`` (e.g. ``img_size=224, num_classes=10, dynamic_img_size=True``), so nothing is
    downloaded: load trained weights into the timm module and pass the module. Options vitcore
    cannot reproduce raise a ValueError naming them. Metadata: source, family, architecture,
    class_names, normalization {mean, std}, image_size, resize_size, interpolation, notes.
    """
    import timm

    if isinstance(model_or_name, str):
        name = model_or_name.removeprefix("timm:")
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in TIMM_PATTERNS):
            raise ValueError(f"timm model {name!r} is not one vitcore converts; names must match {list(TIMM_PATTERNS)}")
        if create_kwargs.pop("pretrained", False):
            raise ValueError(
                "from_timm builds timm models with random weights (nothing is downloaded); load the weights into "
                "the timm model yourself (model.load_state_dict) and pass the module"
            )
        try:
            tm = timm.create_model(name, pretrained=False, **create_kwargs)
        except RuntimeError as err:  # timm's "Unknown model"
            raise ValueError(f"timm has no model {name!r}: {err}") from err
        source = f"timm:{name}"
    elif isinstance(model_or_name, nn.Module):
        if create_kwargs:
            raise ValueError(f"{sorted(create_kwargs)} apply to a timm model name; a module is converted as it is")
        tm = model_or_name
        source = f"timm:{getattr(tm, 'pretrained_cfg', {}).get('architecture') or type(tm).__name__}"
    else:
        raise ValueError(f"expected a timm VisionTransformer or a model name, got {type(model_or_name).__name__}")
    kinds = ("VisionTransformer", "VisionTransformerDistilled")
    if type(tm).__name__ not in kinds or not type(tm).__module__.startswith("timm."):
        raise ValueError(f"expected one of timm's {list(kinds)}, got {type(tm).__module__}.{type(tm).__name__}")
    model = _convert_timm(tm)
    return model, _timm_metadata(tm, model, source)
