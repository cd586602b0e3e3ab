"""Bring your own ViT: torchvision and Hugging Face Vision Transformers as vitcore models.

Every converter copies the reference's tensors into a :class:`~vitcore.model.VisionTransformer`
whose config says the same thing (width, depth, heads, MLP width, LayerNorm eps, qkv bias,
prefix tokens), so the converted model computes the same function; :func:`verify` measures it.

Weight files are read only through safetensors or ``torch.load(weights_only=True)``, and nothing
is downloaded unless ``download=True``: a missing file is reported at once, with the path where
it would be cached.

Name mapping (reference -> vitcore), the same for every block ``i``::

    torchvision                          Hugging Face ViT / DeiT                   vitcore
    conv_proj                            embeddings.patch_embeddings.projection    patch_embed.proj
    class_token                          embeddings.cls_token                      cls_token
    -                                    embeddings.distillation_token (DeiT)      dist_token
    encoder.pos_embedding                embeddings.position_embeddings            pos_embedding
    encoder.layers[i].ln_1               layers[i].layernorm_before                blocks[i].norm1
    ...self_attention.in_proj_*          cat(q_proj, k_proj, v_proj)               blocks[i].attn.qkv
    ...self_attention.out_proj           layers[i].attention.o_proj                blocks[i].attn.proj
    encoder.layers[i].ln_2               layers[i].layernorm_after                 blocks[i].norm2
    ...mlp[0], mlp[3]                    layers[i].mlp.fc1, fc2                    blocks[i].mlp.fc1, fc2
    encoder.ln                           layernorm                                 norm
    heads.head                           classifier / cls_classifier               head
    -                                    distillation_classifier (DeiT)            head_dist
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from .config import ViTConfig
from .model import VisionTransformer

__all__ = [
    "TORCHVISION_NAMES",
    "from_hf",
    "from_torchvision",
    "load_hf",
    "load_torchvision",
    "torchvision_weights_cached",
    "verify",
]

TORCHVISION_NAMES = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageClassification preset
IMAGENET_STD = (0.229, 0.224, 0.225)
HF_DEFAULT_MEAN = (0.5, 0.5, 0.5)  # Hugging Face's IMAGENET_STANDARD_MEAN / STD, ViTImageProcessor's default
HF_DEFAULT_STD = (0.5, 0.5, 0.5)

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


# --------------------------------------------------------------------------- shared helpers
def _strip_prefix(name: str, prefix: str) -> str:
    return name[len(prefix) :] if name.startswith(prefix) else name


def _mlp_ratio(dim: int, mlp_dim: int) -> float:
    """mlp_ratio such that ViTConfig.mlp_dim == mlp_dim, or a ValueError if no float gives it."""
    ratio = mlp_dim / dim
    if int(dim * ratio) != mlp_dim:
        raise ValueError(
            f"MLP width {mlp_dim} cannot be written as int({dim} * mlp_ratio); vitcore's ViTConfig needs an "
            f"explicit mlp_dim field to reproduce this model"
        )
    return ratio


def _build(config: ViTConfig, state: dict[str, torch.Tensor], like: torch.Tensor) -> VisionTransformer:
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


def _linear(prefix: str, linear: nn.Linear) -> dict[str, torch.Tensor]:
    out = {f"{prefix}.weight": linear.weight.detach()}
    if linear.bias is not None:
        out[f"{prefix}.bias"] = linear.bias.detach()
    return out


def _layer_norm(module: nn.Module, what: str) -> nn.LayerNorm:
    if not isinstance(module, nn.LayerNorm) or module.weight is None or module.bias is None:
        raise ValueError(f"{what} is {type(module).__name__}, not an affine nn.LayerNorm; vitcore cannot reproduce it")
    return module


def _check_patch_conv(conv: nn.Module, what: str) -> nn.Conv2d:
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


# --------------------------------------------------------------------------- torchvision
def _torchvision_weights(name: str, weights: Any) -> Any:
    """The torchvision WeightsEnum member meant by ``weights`` (member, 'DEFAULT', 'IMAGENET1K_V1', full name)."""
    from torchvision.models import get_model_weights

    enum_cls = get_model_weights(name)
    if isinstance(weights, enum_cls):
        return weights
    choices = ["DEFAULT", *(m.name for m in enum_cls)]
    if isinstance(weights, str):
        key = _strip_prefix(weights, enum_cls.__name__ + ".")
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
    name = _strip_prefix(name, "torchvision:")
    if name not in TORCHVISION_NAMES:
        raise ValueError(f"unknown torchvision ViT {name!r}; choose one of {list(TORCHVISION_NAMES)}")
    return _torchvision_checkpoint_path(_torchvision_weights(name, weights)).is_file()


def load_torchvision(name: str, weights: Any = None, download: bool = False) -> nn.Module:
    """torchvision's ``name`` (vit_b_16, ...) with ``weights`` read from the torch.hub cache (or None: random)."""
    import torchvision.models as tvm

    name = _strip_prefix(name, "torchvision:")
    if name not in TORCHVISION_NAMES:
        raise ValueError(f"unknown torchvision ViT {name!r}; choose one of {list(TORCHVISION_NAMES)}")
    builder = getattr(tvm, name)
    if weights is None:
        return builder(weights=None).eval()

    weights = _torchvision_weights(name, weights)
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
    conv = _check_patch_conv(tv.conv_proj, "conv_proj")
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
    norm = _layer_norm(tv.encoder.ln, "encoder.ln")
    config = ViTConfig(
        image_size=tv.image_size,
        patch_size=tv.patch_size,
        in_channels=conv.in_channels,
        num_classes=head.out_features,
        dim=tv.hidden_dim,
        depth=len(layers),
        heads=attn0.num_heads,
        mlp_ratio=_mlp_ratio(tv.hidden_dim, tv.mlp_dim),
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
        **_linear("norm", norm),
        **_linear("head", head),
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
        state.update(_linear(f"{p}.norm1", _layer_norm(layer.ln_1, f"layer {i} ln_1")))
        state.update(_linear(f"{p}.norm2", _layer_norm(layer.ln_2, f"layer {i} ln_2")))
        fc1, act, fc2 = layer.mlp[0], layer.mlp[1], layer.mlp[3]
        if not (isinstance(act, nn.GELU) and act.approximate == "none"):
            raise ValueError(f"encoder layer {i}: the MLP activation is {act!r}; vitcore uses exact nn.GELU()")
        state.update(_linear(f"{p}.mlp.fc1", fc1))
        state.update(_linear(f"{p}.mlp.fc2", fc2))
    return _build(config, state, like=conv.weight)


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
        name = _strip_prefix(model_or_name, "torchvision:")
        tv = load_torchvision(name, weights, download=download)
        resolved = None if weights is None else _torchvision_weights(name, weights)
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


# --------------------------------------------------------------------------- Hugging Face
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
    config = _hf_config(hf.config, distilled, num_classes,
                        distilled_head=architecture != "DeiTForImageClassification")

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


# --------------------------------------------------------------------------- verification
def _is_torchvision_vit(module: nn.Module) -> bool:
    return type(module).__name__ == "VisionTransformer" and type(module).__module__.startswith("torchvision.")


@torch.no_grad()
def _reference_outputs(reference: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(logits or None, final normalised tokens (B, T, D)) of a torchvision / Hugging Face / vitcore model."""
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
    if hasattr(reference, "config") and hasattr(reference, "base_model"):
        base, _, _, _ = _hf_parts(reference)
        seen = []
        hook = base.layernorm.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            out = reference(pixel_values=images, interpolate_pos_encoding=True)
        finally:
            hook.remove()
        return getattr(out, "logits", None), seen[0]
    raise ValueError(
        f"cannot verify against {type(reference).__name__}; give the torchvision or Hugging Face model it came from"
    )


@torch.no_grad()
def verify(model: VisionTransformer, reference: nn.Module, images: torch.Tensor) -> float:
    """Max |difference| of logits and of final hidden states between ``model`` and the model it came from.

    ``reference`` is a torchvision VisionTransformer, a Hugging Face ViT / DeiT (run with
    ``interpolate_pos_encoding=True``, so any size that is a multiple of P works) or another
    vitcore model. Both run in eval mode (restored afterwards) on their own device.
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
