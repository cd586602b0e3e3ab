"""Saving and loading this project's checkpoints (safetensors + the preprocessing record)."""

from .checkpoint import load_checkpoint, save_checkpoint

__all__ = ["load_checkpoint", "save_checkpoint"]
