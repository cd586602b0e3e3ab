"""torchvision's VisionTransformer (vit_b_16 ... vit_h_14) as a vitcore model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..model.config import ViTConfig
from ..model.vit import VisionTransformer
from .common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_vit,
    check_patch_conv,
    layer_norm_of,
    linear_state,
    mlp_ratio_for,
    strip_prefix,
)

__all__ = ["TORCHVISION_NAMES", "from_torchvision", "load_torchvision", "torchvision_weights_cached"]

TORCHVISION_NAMES = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")


def torchvision_weights(name: str, weights: Any) -> Any:
    """The torchvision WeightsEnum member meant by ``weights`` (member, 'DEFAULT', 'IMAGENET1K_V1', full name)."""
    from torchvision.models import get_model_weights

    enum_cls = get_model_weights(name)
    if isinstance(weights, enum_cls):
        return weights
    choices = ["DEFAULT", *(m.name for m in enum_cls)]
    if isinstance(weights, str):
        key = strip_prefix(weights, enum_cls.__name__ + ".")
        if key == "DEFAULT":
            return enum_cls.DEFAULT
        if key in enum_cls.__members__:
            return enum_cls[key]
    raise ValueError(f"weights={weights!r} are not weights of torchvision's {name}; choose one of {choices}")


def _torchvision_checkpoint_path(weights: Any) -> Path:
    """Where torch.hub caches this weights file: ``torch.hub.get_dir()/checkpoints/<file name of the URL>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def torchvision_weights_cached(name: str, weights: Any = "DEFAULT") -> bool:
    """Whether the weights file of torchvision's ``name`` is already in the torch.hub cache."""
    name = strip_prefix(name, "torchvision:")
    if name not in TORCHVISION_NAMES:
        raise ValueError(f"unknown torchvision ViT {name!r}; choose one of {list(TORCHVISION_NAMES)}")
    return _torchvision_checkpoint_path(torchvision_weights(name, weights)).is_file()


def load_torchvision(name: str, weights: Any = None, download: bool = False) -> nn.Module:
    """torchvision's ``name`` (vit_b_16, ...) with ``weights`` read from the torch.hub cache (or None: random)."""
    import torchvision.models as tvm

    name = strip_prefix(name, "torchvision:")
    if name not in TORCHVISION_NAMES:
        raise ValueError(f"unknown torchvision ViT {name!r}; choose one of {list(TORCHVISION_NAMES)}")
    builder = getattr(tvm, name)
    if weights is None:
        return builder(weights=None).eval()

    weights = torchvision_weights(name, weights)
    path = _torchvision_checkpoint_path(weights)
    if not path.is_file() and not download:
        raise ValueError(
            f"the weights {weights} of torchvision's {name} are not in the cache: {path} is missing. "
            f"Download {weights.url} to that path (or pass download=True on a machine with internet); "
            f"set TORCH_HOME to use another cache"
        )
    try:
        # torchvision's own path (load_state_dict_from_url -> torch.hub cache), but unpickling only tensors.
        state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as err:
        raise ValueError(
            f"could not read the weights {weights} from {path}: {err}. The file is damaged or holds pickled "
            f"code, which is refused (weights_only=True); delete it and download it again"
        ) from err
    # As torchvision's builder does for pretrained weights: head size and input size come from the meta.
    model = builder(weights=None, num_classes=len(weights.meta["categories"]), image_size=weights.meta["min_size"][0])
    model.load_state_dict(state)
    return model.eval()


def _torchvision_metadata(weights: Any, num_classes: int, image_size: int, source: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "source": source,
        "family": "torchvision",
        "weights": None,
        "class_names": [f"class_{i}" for i in range(num_classes)],
        "normalization": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        "image_size": (image_size, image_size),
        "resize_size": None,
    }
    if weights is not None:
        preset = weights.transforms()  # torchvision.transforms._presets.ImageClassification
        meta.update(
            weights=str(weights),
            class_names=list(weights.meta["categories"]),
            normalization={"mean": tuple(preset.mean), "std": tuple(preset.std)},
            image_size=(preset.crop_size[0], preset.crop_size[0]),
            resize_size=preset.resize_size[0],
        )
    return meta


def _convert_torchvision(tv: nn.Module) -> VisionTransformer:
    from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

    if not isinstance(tv, TorchvisionViT):
        raise ValueError(
            f"expected a torchvision.models.VisionTransformer or a name in {list(TORCHVISION_NAMES)}, "
            f"got {type(tv).__name__}"
        )
    conv = check_patch_conv(tv.conv_proj, "conv_proj")
    if "pre_logits" in tv.heads._modules:
        raise ValueError(
            "this torchvision ViT has a pre-logits layer (representation_size is set: Linear + Tanh before the "
            "head), which vitcore's single linear head does not reproduce; build it with representation_size=None"
        )
    head = tv.heads.head
    if not isinstance(head, nn.Linear) or head.out_features == 0:
        raise ValueError(f"the torchvision head must be an nn.Linear with at least one class, got {head!r}")

    layers = list(tv.encoder.layers)
    attn0 = layers[0].self_attention
    norm = layer_norm_of(tv.encoder.ln, "encoder.ln")
    config = ViTConfig(
        image_size=tv.image_size,
        patch_size=tv.patch_size,
        in_channels=conv.in_channels,
        num_classes=head.out_features,
        dim=tv.hidden_dim,
        depth=len(layers),
        heads=attn0.num_heads,
        mlp_ratio=mlp_ratio_for(tv.hidden_dim, tv.mlp_dim),
        dropout=float(tv.dropout),
        attention_dropout=float(tv.attention_dropout),
        qkv_bias=attn0.in_proj_bias is not None,
        layer_norm_eps=norm.eps,
    )

    state: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": conv.weight.detach(),
        "patch_embed.proj.bias": conv.bias.detach(),
        "cls_token": tv.class_token.detach(),  # (1, 1, D)
        "pos_embedding": tv.encoder.pos_embedding.detach(),  # (1, 1+N, D)
        **linear_state("norm", norm),
        **linear_state("head", head),
    }
    for i, layer in enumerate(layers):
        mha = layer.self_attention
        if not mha._qkv_same_embed_dim or mha.in_proj_weight is None or mha.bias_k is not None:
            raise ValueError(f"encoder layer {i}: only a plain nn.MultiheadAttention (packed in_proj) is supported")
        p = f"blocks.{i}"
        state[f"{p}.attn.qkv.weight"] = mha.in_proj_weight.detach()  # (3D, D), rows (three h d) as vitcore's
        if mha.in_proj_bias is not None:
            state[f"{p}.attn.qkv.bias"] = mha.in_proj_bias.detach()
        out_proj = mha.out_proj
        state[f"{p}.attn.proj.weight"] = out_proj.weight.detach()
        state[f"{p}.attn.proj.bias"] = (
            out_proj.bias.detach() if out_proj.bias is not None else torch.zeros_like(out_proj.weight[:, 0])
        )
        state.update(linear_state(f"{p}.norm1", layer_norm_of(layer.ln_1, f"layer {i} ln_1")))
        state.update(linear_state(f"{p}.norm2", layer_norm_of(layer.ln_2, f"layer {i} ln_2")))
        fc1, act, fc2 = layer.mlp[0], layer.mlp[1], layer.mlp[3]
        if not (isinstance(act, nn.GELU) and act.approximate == "none"):
            raise ValueError(f"encoder layer {i}: the MLP activation is {act!r}; vitcore uses exact nn.GELU()")
        state.update(linear_state(f"{p}.mlp.fc1", fc1))
        state.update(linear_state(f"{p}.mlp.fc2", fc2))
    return build_vit(config, state, like=conv.weight)


def from_torchvision(
    model_or_name: nn.Module | str, weights: Any = None, download: bool = False
) -> tuple[VisionTransformer, dict[str, Any]]:
    """A torchvision ViT (module, or name such as "vit_b_16" with optional weights) as (vitcore model, metadata).

    ``weights`` is a torchvision weights enum member or its name ("IMAGENET1K_V1", "DEFAULT",
    "ViT_B_16_Weights.IMAGENET1K_V1"); it is read from the torch.hub cache, and a missing file is
    a ValueError naming the path unless ``download=True``. ``None`` gives random initialisation.
    Metadata: source, family, weights, class_names, normalization {mean, std}, image_size,
    resize_size.
    """
    if isinstance(model_or_name, str):
        name = strip_prefix(model_or_name, "torchvision:")
        tv = load_torchvision(name, weights, download=download)
        resolved = None if weights is None else torchvision_weights(name, weights)
        source = f"torchvision:{name}"
    elif isinstance(model_or_name, nn.Module):
        if weights is not None:
            raise ValueError("weights= applies to a model name such as 'vit_b_16'; a module already holds its weights")
        tv, resolved, source = model_or_name, None, f"torchvision:{type(model_or_name).__name__}"
    else:
        raise ValueError(f"expected a torchvision VisionTransformer or a name in {list(TORCHVISION_NAMES)}")
    model = _convert_torchvision(tv)
    meta = _torchvision_metadata(resolved, model.config.num_classes, tv.image_size, source)
    return model, meta
