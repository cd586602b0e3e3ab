"""Bring your own ViT: torchvision, Hugging Face and timm Vision Transformers as vitcore models.

Modules: ``common`` (shared helpers), ``torchvision``, ``hf`` (loading ViT, DeiT, DINO, DINOv2;
which sources an app may accept), ``hf_convert`` (a Hugging Face module -> vitcore weights),
``timm``, ``verify`` and ``downloads`` (fetching weights on an explicit call).

Every converter copies the reference's tensors into a :class:`~vitcore.model.VisionTransformer`
whose config says the same thing (width, depth, heads, MLP width, LayerNorm eps, qkv bias,
prefix tokens), so the converted model computes the same function; :func:`verify` measures it.

Weight files are read only through safetensors or ``torch.load(weights_only=True)``, and nothing
is downloaded unless asked (:func:`download`, or ``download=True``): a missing file is reported at
once, with the path where it would be cached.

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

from .common import HF_DEFAULT_MEAN, HF_DEFAULT_STD, IMAGENET_MEAN, IMAGENET_STD
from .downloads import cached_path, download, download_size
from .hf import MODELS_ROOT_ENV, from_hf, from_hf_source, load_hf, models_root_from_env, resolve_hf_source
from .timm import TIMM_PATTERNS, from_timm
from .torchvision import TORCHVISION_NAMES, from_torchvision, load_torchvision, torchvision_weights_cached
from .verify import verify

__all__ = [
    "HF_DEFAULT_MEAN",
    "HF_DEFAULT_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODELS_ROOT_ENV",
    "TIMM_PATTERNS",
    "TORCHVISION_NAMES",
    "cached_path",
    "download",
    "download_size",
    "from_hf",
    "from_hf_source",
    "from_timm",
    "from_torchvision",
    "load_hf",
    "load_torchvision",
    "models_root_from_env",
    "resolve_hf_source",
    "torchvision_weights_cached",
    "verify",
]
