"""The options of a training run: one frozen, validated record shared by fit, fit_ignite, the CLI and the app."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .strategies import DEFAULT_LR, STRATEGIES

__all__ = ["FitOptions"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class FitOptions:
    """How to train; validated on construction (``ValueError`` saying what to change), immutable afterwards.

    ``epochs`` / ``max_seconds`` / ``max_steps`` are limits: whichever comes first ends the run.
    ``lr`` is the peak learning rate of AdamW (None: the strategy's default, ``DEFAULT_LR``), reached
    after a linear ``warmup`` (a fraction of the steps in [0, 1), or a step count) and followed by a
    cosine decay to 0 over ``epochs``. ``augment`` None uses the data bundle's setting;
    ``cache_features`` None caches the frozen backbone's features for strategy "head" without
    augmentation. ``seed`` seeds torch's global RNG (dropout, augmentation, LoRA init) and the data
    order; ``seed=None`` leaves the global RNG alone, as code in a server thread must (other
    sessions draw from it too), and shuffles the data with a private generator.
    """

    strategy: str = "full"  # "full" | "head" | "last_k" | "lora"
    last_k: int = 2  # blocks trained by "last_k"
    epochs: int = 10
    max_seconds: float | None = None
    max_steps: int | None = None
    lr: float | None = None
    weight_decay: float = 0.05
    warmup: float | int = 0.05
    label_smoothing: float = 0.0
    device: str | None = None  # None / "auto": cuda, then mps, then cpu
    seed: int | None = 0
    bf16: bool = False  # bfloat16 autocast
    augment: bool | None = None
    cache_features: bool | None = None
    batch_size: int | None = None  # None: the bundle's
    grad_clip: float | None = 1.0
    lora_rank: int = 8
    lora_alpha: float = 16.0
    restore_best: bool = True  # load the best validation weights into the returned model

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        check(self.strategy in STRATEGIES, f"unknown strategy {self.strategy!r}; choose one of {list(STRATEGIES)}")
        for name in ("last_k", "epochs", "lora_rank"):
            value = getattr(self, name)
            check(_is_int(value) and value >= 1, f"{name}={value!r} must be a positive integer")
        check(self.max_steps is None or (_is_int(self.max_steps) and self.max_steps >= 1),
              f"max_steps={self.max_steps!r} must be a positive integer or None")
        check(self.max_seconds is None or (_is_number(self.max_seconds) and self.max_seconds > 0),
              f"max_seconds={self.max_seconds!r} must be a positive number of seconds or None")
        check(self.lr is None or (_is_number(self.lr) and self.lr > 0),
              f"lr={self.lr!r} must be positive, e.g. {DEFAULT_LR.get(self.strategy, 1e-3)}")
        check(_is_number(self.weight_decay) and self.weight_decay >= 0,
              f"weight_decay={self.weight_decay!r} must be a number >= 0 (0.05 is usual)")
        warm_ok = (isinstance(self.warmup, float) and 0.0 <= self.warmup < 1.0) or (
            _is_int(self.warmup) and self.warmup >= 0)
        check(warm_ok, f"warmup={self.warmup!r} must be a fraction of the steps in [0, 1) or a number of steps")
        check(_is_number(self.label_smoothing) and 0.0 <= self.label_smoothing < 1.0,
              f"label_smoothing={self.label_smoothing!r} must be in [0, 1), e.g. 0.1")
        check(self.device is None or isinstance(self.device, str),
              f"device={self.device!r} must be a string such as 'cpu', 'cuda' or 'auto'")
        check(self.seed is None or _is_int(self.seed), f"seed={self.seed!r} must be an integer or None")
        for name in ("bf16", "restore_best"):
            check(isinstance(getattr(self, name), bool), f"{name}={getattr(self, name)!r} must be True or False")
        for name in ("augment", "cache_features"):
            value = getattr(self, name)
            check(value is None or isinstance(value, bool), f"{name}={value!r} must be True, False or None")
        check(self.batch_size is None or (_is_int(self.batch_size) and self.batch_size >= 1),
              f"batch_size={self.batch_size!r} must be a positive integer or None")
        check(self.grad_clip is None or (_is_number(self.grad_clip) and self.grad_clip > 0),
              f"grad_clip={self.grad_clip!r} must be a positive norm or None (no clipping)")
        check(_is_number(self.lora_alpha) and self.lora_alpha > 0, f"lora_alpha={self.lora_alpha!r} must be > 0")
        if self.cache_features and (self.strategy != "head" or self.augment):
            raise ValueError("cached features need strategy='head' and augment=False (the backbone must be frozen "
                             "and see the same images every epoch)")

    @classmethod
    def build(cls, options: FitOptions | None = None, **overrides: Any) -> FitOptions:
        """``options`` (or the defaults) with some fields changed; unknown names are refused with the valid ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}; valid options are {sorted(known)}")
        if options is not None and not isinstance(options, FitOptions):
            raise ValueError(f"options must be a FitOptions, got {type(options).__name__}")
        return replace(options or cls(), **overrides)

    def replace(self, **changes: Any) -> FitOptions:
        """A validated copy with some fields changed."""
        return FitOptions.build(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (stored with checkpoints and shown by the app)."""
        return asdict(self)
