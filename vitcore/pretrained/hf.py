"""Hugging Face ViT / DeiT / DINO as vitcore models."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ViTConfig
from ..model import VisionTransformer
from .common import (
    HF_DEFAULT_MEAN,
    HF_DEFAULT_STD,
    _build,
    _check_patch_conv,
    _layer_norm,
    _linear,
    _mlp_ratio,
    _strip_prefix,
)

__all__ = ["from_hf", "load_hf"]

# Hugging Face classes we reproduce exactly, by model_type.
_HF_ARCHITECTURES = {
    "vit": ("ViTModel", "ViTForImageClassification"),
    "deit": ("DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"),
}
_HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _hf_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode()) or os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES")


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1


def _hf_cached(repo_id: str, filename: str) -> str | None:
    """The cached path of ``filename`` in ``repo_id``, or None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # an id that is not a valid repo name: nothing can be cached under it
        return None
    return found if isinstance(found, str) else None


def _hf_locate(id_or_path: str, download: bool) -> tuple[str, bool, str | None]:
    """(what to pass to from_pretrained, local_files_only, preprocessor_config.json path or None).

    Runs before transformers is imported, so a missing model fails in well under a second.
    """
    text = _strip_prefix(id_or_path, "hf:")
    folder = Path(text).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"{folder} has no config.json; save the model there with model.save_pretrained('{folder}')"
            )
        if not any((folder / f).is_file() for f in _HF_WEIGHT_FILES):
            raise ValueError(f"{folder} has a config.json but no weights; expected one of {list(_HF_WEIGHT_FILES)}")
        pre = folder / "preprocessor_config.json"
        return str(folder), True, str(pre) if pre.is_file() else None
    if _looks_like_path(text) or Path(text).exists():
        raise ValueError(
            f"the folder {text!r} does not exist (or is not a folder); give a Hugging Face model folder or id"
        )

    local_only = not download or _hf_offline()
    config = _hf_cached(text, "config.json")
    weights = [f for f in _HF_WEIGHT_FILES if _hf_cached(text, f)]
    if local_only and (config is None or not weights):
        missing = "config.json" if config is None else f"a weights file (one of {list(_HF_WEIGHT_FILES)})"
        how = (
            "HF_HUB_OFFLINE is set; unset it to download"
            if _hf_offline()
            else "pass download=True to fetch it, or run `hf download " + text + "`"
        )
        raise ValueError(
            f"the Hugging Face model {text!r} is not in the local cache ({missing} missing under "
            f"{Path(_hf_cache_dir()) / ('models--' + text.replace('/', '--'))}); {how}, "
            f"or give a local folder saved with save_pretrained"
        )
    return text, local_only, _hf_cached(text, "preprocessor_config.json")


def load_hf(id_or_path: str, download: bool = False) -> nn.Module:
    """A Hugging Face ViT / DeiT from a local folder or cached id (eager attention, safe weights only)."""
    where, local_only, _ = _hf_locate(id_or_path, download)
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(where, local_files_only=local_only)
    except Exception as err:
        raise ValueError(f"could not read the config of {where!r}: {err}") from err
    model_type = getattr(config, "model_type", None)
    if model_type not in _HF_ARCHITECTURES:
        raise ValueError(
            f"{where!r} is a {model_type!r} model; vitcore reproduces the Hugging Face model types "
            f"{list(_HF_ARCHITECTURES)}"
        )
    supported = _HF_ARCHITECTURES[model_type]
    architecture = (getattr(config, "architectures", None) or [supported[0]])[0]
    if architecture not in supported:
        raise ValueError(f"{where!r} is a {architecture}; vitcore reproduces {list(supported)}")
    try:
        return (
            getattr(transformers, architecture)
            .from_pretrained(
                where,
                local_files_only=local_only,
                attn_implementation="eager",  # attentions come back as matrices, as vitcore's probe sees them
                weights_only=True,  # a pickled .bin is unpickled only as tensors
                trust_remote_code=False,
                dtype=torch.float32,
            )
            .eval()
        )
    except Exception as err:
        raise ValueError(
            f"could not load the weights of {where!r}: {err}. A damaged safetensors file or a pickled file with "
            f"code is refused; download it again or re-save it with save_pretrained (safetensors)"
        ) from err


def _hf_parts(hf: nn.Module) -> tuple[nn.Module, str, nn.Module | None, nn.Module | None]:
    """(base model, architecture, class head, distillation head) of a supported HF model."""
    architecture = type(hf).__name__
    model_type = getattr(getattr(hf, "config", None), "model_type", None)
    if model_type not in _HF_ARCHITECTURES or architecture not in _HF_ARCHITECTURES[model_type]:
        known = [a for archs in _HF_ARCHITECTURES.values() for a in archs]
        raise ValueError(f"expected one of the Hugging Face classes {known}, got {architecture}")
    if architecture in ("ViTModel", "DeiTModel"):
        return hf, architecture, None, None
    base = hf.vit if model_type == "vit" else hf.deit
    if architecture == "DeiTForImageClassificationWithTeacher":
        return base, architecture, hf.cls_classifier, hf.distillation_classifier
    return base, architecture, hf.classifier, None


def _hf_config(hf_config: Any, distilled: bool, num_classes: int, distilled_head: bool = True) -> ViTConfig:
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
        mlp_ratio=_mlp_ratio(c.hidden_size, c.intermediate_size),
        dropout=float(c.hidden_dropout_prob),
        attention_dropout=float(c.attention_probs_dropout_prob),
        qkv_bias=bool(c.qkv_bias),
        layer_norm_eps=float(c.layer_norm_eps),
        distilled=distilled,
        distilled_head=distilled_head,
    )


def _convert_hf(hf: nn.Module) -> tuple[VisionTransformer, str]:
    base, architecture, head, head_dist = _hf_parts(hf)
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
    config = _hf_config(hf.config, distilled, num_classes, distilled_head=architecture != "DeiTForImageClassification")

    conv = _check_patch_conv(emb.patch_embeddings.projection, "embeddings.patch_embeddings.projection")
    state: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": conv.weight.detach(),
        "patch_embed.proj.bias": conv.bias.detach(),
        "cls_token": emb.cls_token.detach(),  # (1, 1, D)
        "pos_embedding": emb.position_embeddings.detach(),  # (1, prefix+N, D)
        **_linear("norm", _layer_norm(base.layernorm, "layernorm")),
    }
    if distilled:
        state["dist_token"] = emb.distillation_token.detach()  # (1, 1, D)
    if num_classes:
        state.update(_linear("head", head))
    if head_dist is not None:
        state.update(_linear("head_dist", head_dist))
    for i, layer in enumerate(base.layers):
        attn, p = layer.attention, f"blocks.{i}"
        q, k, v = attn.q_proj, attn.k_proj, attn.v_proj
        # rows of each projection are (h d); stacked they are vitcore's (three h d)
        state[f"{p}.attn.qkv.weight"] = torch.cat([q.weight, k.weight, v.weight]).detach()  # (3D, D)
        if q.bias is not None:
            state[f"{p}.attn.qkv.bias"] = torch.cat([q.bias, k.bias, v.bias]).detach()  # (3D,)
        state.update(_linear(f"{p}.attn.proj", attn.o_proj))
        state.update(_linear(f"{p}.norm1", _layer_norm(layer.layernorm_before, f"layer {i} layernorm_before")))
        state.update(_linear(f"{p}.norm2", _layer_norm(layer.layernorm_after, f"layer {i} layernorm_after")))
        state.update(_linear(f"{p}.mlp.fc1", layer.mlp.fc1))
        state.update(_linear(f"{p}.mlp.fc2", layer.mlp.fc2))

    return _build(config, state, like=conv.weight), architecture


def _read_preprocessor(path: str | None) -> dict[str, Any]:
    """mean / std (and sizes) from a preprocessor_config.json, or Hugging Face's defaults."""
    out: dict[str, Any] = {"normalization": {"mean": HF_DEFAULT_MEAN, "std": HF_DEFAULT_STD}, "resize_size": None}
    if path is None:
        return out
    with open(path, encoding="utf-8") as f:
        pre = json.load(f)
    if pre.get("do_normalize", True):
        mean, std = pre.get("image_mean", HF_DEFAULT_MEAN), pre.get("image_std", HF_DEFAULT_STD)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    out["normalization"] = {"mean": tuple(float(m) for m in mean), "std": tuple(float(s) for s in std)}
    size = pre.get("size")
    if isinstance(size, dict) and "height" in size:
        out["resize_size"] = (int(size["height"]), int(size["width"]))
    elif isinstance(size, int):
        out["resize_size"] = (size, size)
    return out


def from_hf(model_or_id_or_path: nn.Module | str, download: bool = False) -> tuple[VisionTransformer, dict[str, Any]]:
    """A Hugging Face ViT / DeiT / DINO ViT (module, local folder or cached hub id) as (vitcore model, metadata).

    Supported: ViTModel (DINO; no head, so ``num_classes=0`` and the model returns CLS features;
    the optional pooler is not reproduced), ViTForImageClassification, DeiTModel,
    DeiTForImageClassification (class head on CLS only) and DeiTForImageClassificationWithTeacher
    (distillation token, the two heads averaged as at inference). A hub id is read from the local
    cache only, unless ``download=True`` and HF_HUB_OFFLINE is not set.
    Metadata: source, family, architecture, class_names (from id2label), normalization {mean, std}
    (preprocessor_config.json, else 0.5), image_size, resize_size, notes.
    """
    preprocessor = None
    if isinstance(model_or_id_or_path, str):
        _, _, preprocessor = _hf_locate(model_or_id_or_path, download)
        hf = load_hf(model_or_id_or_path, download=download)
        source = f"hf:{_strip_prefix(model_or_id_or_path, 'hf:')}"
    elif isinstance(model_or_id_or_path, nn.Module):
        hf = model_or_id_or_path
        name = getattr(hf, "name_or_path", "") or ""  # the folder or hub id it was loaded from, if any
        if name and (Path(name) / "preprocessor_config.json").is_file():
            preprocessor = str(Path(name) / "preprocessor_config.json")
        elif name and not _looks_like_path(name):
            preprocessor = _hf_cached(name, "preprocessor_config.json")
        source = f"hf:{name or type(hf).__name__}"
    else:
        raise ValueError("expected a Hugging Face ViT/DeiT model, a local folder or a hub id")

    model, architecture = _convert_hf(hf)
    num_classes = model.config.num_classes
    id2label = getattr(hf.config, "id2label", None) or {}
    labels = {int(k): str(v) for k, v in id2label.items()}
    class_names = [labels.get(i, f"class_{i}") for i in range(num_classes)]
    notes = []
    if getattr(hf, "pooler", None) is not None:
        notes.append("the Hugging Face pooler (dense + tanh on CLS) is not reproduced; compare last_hidden_state")
    if architecture == "DeiTForImageClassification":
        notes.append("DeiT without teacher: the head reads the CLS token only (head_dist is None)")
    meta: dict[str, Any] = {
        "source": source,
        "family": f"hf-{hf.config.model_type}",
        "architecture": architecture,
        "class_names": class_names,
        "image_size": model.config.image_size,
        **_read_preprocessor(preprocessor),
        "notes": notes,
    }
    return model, meta
