"""Fine-tuning strategies: which parameters of a model train, LoRA adapters, fresh heads.

- ``"full"``: every parameter.
- ``"head"``: the classification head only (a linear probe).
- ``"last_k"``: the last ``k`` encoder blocks, the final LayerNorm and the head.
- ``"lora"``: low-rank adapters (``peft``) on every block's attention ``qkv``/``proj`` and MLP
  ``fc1``/``fc2``, plus the head; merged back into plain linears when training ends.
"""

from __future__ import annotations

import re

from torch import nn

from ..model.vit import VisionTransformer

__all__ = [
    "DEFAULT_LR",
    "LORA_TARGETS",
    "STRATEGIES",
    "base_model",
    "check_strategy",
    "head_names",
    "lora_targets",
    "merge_lora",
    "prepare_model",
    "replace_head",
    "set_train_mode",
    "trainable_parameter_names",
    "trainable_parameters",
]

STRATEGIES = ("full", "head", "last_k", "lora")
# peft matches a string target with re.fullmatch against each module's qualified name.
LORA_TARGETS = r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"
DEFAULT_LR = {"full": 1e-3, "last_k": 1e-3, "head": 5e-3, "lora": 2e-3}


def head_names(model: nn.Module) -> list[str]:
    """Names of the classifier modules: ViT ``head`` (+ ``head_dist``), else ``fc`` or ``head``."""
    if isinstance(model, VisionTransformer):
        if not isinstance(model.head, nn.Linear):
            raise ValueError("this ViT has no classification head (num_classes=0); build it with num_classes > 0")
        return ["head"] + (["head_dist"] if model.head_dist is not None else [])
    for name in ("fc", "head"):
        if isinstance(getattr(model, name, None), nn.Module):
            return [name]
    raise ValueError(
        f"{type(model).__name__} has no classifier named 'fc' or 'head'; fit() trains a VisionTransformer or a "
        "classifier whose last layer is .fc (e.g. torchvision resnet18) or .head"
    )


def check_strategy(model: nn.Module, strategy: str, last_k: int) -> None:
    """Raise ValueError unless ``strategy`` (and ``last_k``) can be applied to ``model``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {list(STRATEGIES)}")
    if strategy in ("last_k", "lora") and not isinstance(model, VisionTransformer):
        raise ValueError(
            f"strategy={strategy!r} needs a vitcore VisionTransformer; a {type(model).__name__} trains with "
            "'full' or 'head'"
        )
    if strategy == "last_k":
        depth = len(model.blocks)  # type: ignore[arg-type]
        if not isinstance(last_k, int) or not 1 <= last_k <= depth:
            raise ValueError(f"last_k={last_k!r} must be between 1 and the depth {depth}")


def trainable_parameter_names(model: nn.Module, strategy: str = "full", last_k: int = 2) -> list[str]:
    """Names of the model's own parameters that ``strategy`` trains ("lora" adds adapters on top of its head)."""
    check_strategy(model, strategy, last_k)
    names = [n for n, _ in model.named_parameters()]
    if strategy == "full":
        return names
    prefixes = tuple(f"{h}." for h in head_names(model))
    if strategy == "last_k":
        depth = len(model.blocks)  # type: ignore[arg-type]
        prefixes += (*(f"blocks.{i}." for i in range(depth - last_k, depth)), "norm.")
    return [n for n in names if n.startswith(prefixes)]


def lora_targets(model: nn.Module) -> list[nn.Linear]:
    """The linears that receive LoRA adapters (attention qkv/proj and MLP fc1/fc2 of every block)."""
    return [m for n, m in model.named_modules() if re.fullmatch(LORA_TARGETS, n) and isinstance(m, nn.Linear)]


def trainable_parameters(model: nn.Module, strategy: str = "full", last_k: int = 2, lora_rank: int = 8) -> int:
    """How many scalars ``strategy`` trains: the named parameters, plus r * (in + out) per LoRA linear."""
    params = dict(model.named_parameters())
    count = sum(params[n].numel() for n in trainable_parameter_names(model, strategy, last_k))
    if strategy == "lora":
        count += sum(lora_rank * (m.in_features + m.out_features) for m in lora_targets(model))
    return count


def prepare_model(
    model: nn.Module,
    strategy: str = "full",
    *,
    last_k: int = 2,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
) -> nn.Module:
    """Freeze what ``strategy`` does not train; for "lora" return the ``peft`` model wrapping ``model``."""
    names = set(trainable_parameter_names(model, strategy, last_k))
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
    if strategy != "lora":
        return model
    from peft import LoraConfig, get_peft_model

    if not isinstance(lora_rank, int) or lora_rank < 1:
        raise ValueError(f"lora_rank={lora_rank!r} must be a positive integer (8 is typical)")
    config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=LORA_TARGETS)
    wrapped = get_peft_model(model, config)  # freezes everything but the adapters
    for name, p in model.named_parameters():
        if name.startswith(tuple(f"{h}." for h in head_names(model))):
            p.requires_grad_(True)
    return wrapped


def replace_head(model: VisionTransformer, num_classes: int) -> VisionTransformer:
    """The same backbone with a fresh classification head for ``num_classes`` (new task).

    Returns ``model`` itself when the head already fits; otherwise a new model whose config says
    ``num_classes`` and whose every non-head weight is a copy of ``model``'s.
    """
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"replace_head needs a vitcore VisionTransformer, got {type(model).__name__}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} must be a positive integer")
    if model.config.num_classes == num_classes:
        return model
    new = VisionTransformer(model.config.replace(num_classes=num_classes))
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith(("head.", "head_dist."))}
    missing, unexpected = new.load_state_dict(backbone, strict=False)
    if unexpected or any(not k.startswith(("head.", "head_dist.")) for k in missing):
        raise ValueError(f"could not carry the backbone over: missing {missing}, unexpected {unexpected}")
    param = next(model.parameters())
    return new.to(param.device, param.dtype)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA adapters into their linears (W + B A * alpha / r); other models come back unchanged."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def base_model(model: nn.Module) -> nn.Module:
    """The plain model inside a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def set_train_mode(model: nn.Module, strategy: str, last_k: int) -> None:
    """Train mode for the parts that learn; frozen parts stay in eval (dropout off, BatchNorm stats fixed)."""
    base = base_model(model)
    if strategy in ("full", "lora"):
        model.train()
        return
    model.eval()
    for name in head_names(base):
        getattr(base, name).train()
    if strategy == "last_k":
        for block in base.blocks[len(base.blocks) - last_k :]:
            block.train()
        base.norm.train()
