"""The one configuration object of a Vision Transformer (Dosovitskiy et al. 2021, Table 1)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = [
    "PATCH_SIZES", "POOLS", "POS_INTERPOLATIONS", "PRESETS", "TOKEN_MIXERS",
    "ViTConfig", "divisors", "valid_patch_sizes",
]


def divisors(n: int) -> list[int]:
    """All positive divisors of ``n`` in increasing order."""
    return [d for d in range(1, n + 1) if n % d == 0]


# Named architectures. "micro" is ours: small enough to fine-tune on 32x32 images in a lecture
# on two CPU cores; the others are the paper's / DeiT's sizes.
PRESETS: dict[str, dict[str, Any]] = {
    "micro": dict(image_size=32, patch_size=8, dim=96, depth=4, heads=4, mlp_ratio=2.0, num_classes=5),
    "tiny": dict(image_size=224, patch_size=16, dim=192, depth=12, heads=3),
    "small": dict(image_size=224, patch_size=16, dim=384, depth=12, heads=6),
    "base": dict(image_size=224, patch_size=16, dim=768, depth=12, heads=12),
    "large": dict(image_size=224, patch_size=16, dim=1024, depth=24, heads=16),
}


# Patch sizes the app offers (any divisor of the image works in the library).
PATCH_SIZES: tuple[int, ...] = (2, 4, 7, 8, 14, 16, 28, 32, 56)

# "bicubic": F.interpolate to the new grid size (Hugging Face ViT / DeiT, timm);
# "bicubic_antialias": the same with antialias=True (Hugging Face DINOv2 with registers, timm).
POS_INTERPOLATIONS = ("bicubic", "bicubic_antialias")

# What the head reads: "cls" the CLS token (the paper), "mean" the mean of the patch tokens,
# "cls+mean" both concatenated, (B, 2D) (a linear probe on DINOv2 features, Oquab et al. 2023).
POOLS = ("cls", "mean", "cls+mean")

# Token mixers a block can use (vitcore.model.mixers): softmax attention as in the paper, and the
# alternatives the tutorial asks about.
TOKEN_MIXERS = ("attention", "linear", "retention", "pooling", "mlp")


def valid_patch_sizes(image_size: tuple[int, int], candidates: tuple[int, ...] = PATCH_SIZES) -> list[int]:
    """Patch sizes among ``candidates`` that tile an (H, W) image exactly and are smaller than it."""
    h, w = image_size
    return [p for p in candidates if h % p == 0 and w % p == 0 and p < min(h, w)]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of a ViT; validated on construction, immutable afterwards."""

    image_size: tuple[int, int] = (224, 224)  # (H, W); an int means square; need not be square
    patch_size: int = 16  # P; H and W must be multiples of P
    in_channels: int = 3  # C
    num_classes: int = 1000  # size of the classification head; 0 means no head (features only)
    dim: int = 768  # D, the token width
    depth: int = 12  # L, number of encoder blocks
    heads: int = 12  # number of attention heads; must divide D
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * D
    dropout: float = 0.0  # dropout after embeddings and inside the MLP / attention output
    attention_dropout: float = 0.0  # dropout on the attention matrix
    qkv_bias: bool = True
    pool: str = "cls"  # see POOLS: what the head reads (CLS, mean of patch tokens, or both concatenated)
    layer_norm_eps: float = 1e-6
    fused_attention: bool = True  # scaled_dot_product_attention unless a map is asked; model.with_config to switch
    distilled: bool = False  # DeiT: an extra distillation token (attends like any token)
    distilled_head: bool = True  # with distilled: a second head on that token, logits averaged (DeiT)
    num_registers: int = 0  # register tokens after CLS (Darcet et al. 2023); they get no position embedding
    pos_interpolation: str = "bicubic"  # how E_pos is resized to another grid; see POS_INTERPOLATIONS
    token_mixer: str = "attention"  # what mixes tokens in each block; see TOKEN_MIXERS

    def __post_init__(self) -> None:
        size = self.image_size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        elif isinstance(size, (list, tuple)) and len(size) == 2:
            size = tuple(size)
        else:
            raise ValueError(f"image_size={self.image_size!r} must be an int or a (height, width) pair")
        _check(
            all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size),
            f"image_size={self.image_size!r} must hold positive integers",
        )
        object.__setattr__(self, "image_size", size)

        def positive_int(name: str, allow_zero: bool = False) -> None:
            value = getattr(self, name)
            low = 0 if allow_zero else 1
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value >= low,
                f"{name}={value!r} must be an integer >= {low}",
            )

        for name in ("patch_size", "in_channels", "dim", "depth", "heads"):
            positive_int(name)
        positive_int("num_classes", allow_zero=True)
        positive_int("num_registers", allow_zero=True)

        h, w = size
        p = self.patch_size
        if h % p or w % p:
            valid = [d for d in divisors(h) if w % d == 0]
            raise ValueError(
                f"image_size {h}x{w} is not a multiple of patch_size={p}; "
                f"patch sizes that fit are {valid}, or change the image size to a multiple of {p}"
            )
        _check(
            self.dim % self.heads == 0,
            f"dim={self.dim} is not divisible by heads={self.heads}; try heads in {divisors(self.dim)}",
        )
        _check(
            isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0 and int(self.dim * self.mlp_ratio) >= 1,
            f"mlp_ratio={self.mlp_ratio!r} must be a positive number (4.0 in the paper)",
        )
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            _check(
                isinstance(value, (int, float)) and 0.0 <= value < 1.0,
                f"{name}={value!r} must be in [0, 1)",
            )
        _check(self.pool in POOLS, f"pool={self.pool!r} must be 'cls' or 'mean', or 'cls+mean' for both concatenated")
        _check(
            not (self.pool == "cls+mean" and self.distilled and self.distilled_head),
            "pool='cls+mean' has no DeiT distillation head (it reads one token); set distilled_head=False",
        )
        _check(
            isinstance(self.layer_norm_eps, (int, float)) and 0 < self.layer_norm_eps < 1,
            f"layer_norm_eps={self.layer_norm_eps!r} must be a small positive number such as 1e-6",
        )
        _check(
            self.pos_interpolation in POS_INTERPOLATIONS,
            f"pos_interpolation={self.pos_interpolation!r} must be one of {list(POS_INTERPOLATIONS)}",
        )
        _check(
            self.token_mixer in TOKEN_MIXERS,
            f"token_mixer={self.token_mixer!r} is unknown; choose one of {list(TOKEN_MIXERS)}",
        )
        for name in ("qkv_bias", "fused_attention", "distilled", "distilled_head"):
            _check(isinstance(getattr(self, name), bool), f"{name}={getattr(self, name)!r} must be True or False")

    # ----------------------------------------------------------------- derived quantities
    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (gh, gw) = (H / P, W / P)."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def pool_dim(self) -> int:
        """Width of what the head reads: D, or 2D for ``pool="cls+mean"``."""
        return 2 * self.dim if self.pool == "cls+mean" else self.dim

    @property
    def num_patches(self) -> int:
        """N, the number of patch tokens."""
        gh, gw = self.grid_size
        return gh * gw

    @property
    def num_pos_prefix_tokens(self) -> int:
        """Prefix tokens that carry a position embedding: CLS and DeiT's distillation token."""
        return 1 + int(self.distilled)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: CLS, the distillation token (DeiT) and the registers."""
        return self.num_pos_prefix_tokens + self.num_registers

    @property
    def head_dim(self) -> int:
        """d = D / heads, the width of one attention head."""
        return self.dim // self.heads

    @property
    def mlp_dim(self) -> int:
        """Hidden width of the MLP."""
        return int(self.dim * self.mlp_ratio)

    # ----------------------------------------------------------------- constructors / IO
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ViTConfig:
        """A named architecture (micro, tiny, small, base, large) with fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def replace(self, **changes: Any) -> ViTConfig:
        """A validated copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of all fields."""
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    def to_json(self) -> str:
        """The config as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused with their names."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a dict of config fields, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ViTConfig fields {unknown}; valid fields are {sorted(known)}")
        data = dict(data)
        if isinstance(data.get("image_size"), list):
            data["image_size"] = tuple(data["image_size"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ViTConfig:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))
