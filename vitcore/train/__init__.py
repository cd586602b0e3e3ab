"""Fine-tuning: one step function shared by a plain PyTorch loop (:func:`fit`) and an ignite engine.

Strategies name exactly the parameters that train (see :func:`trainable_parameter_names`):

- ``"full"``: every parameter.
- ``"head"``: the classification head only (a linear probe). With augmentation off the frozen
  backbone runs once over the data and the head trains on the cached pooled features.
- ``"last_k"``: the last ``k`` encoder blocks, the final LayerNorm and the head.
- ``"lora"``: low-rank adapters (``peft``) on every block's attention ``qkv``/``proj`` and MLP
  ``fc1``/``fc2``, plus the head; merged back into plain linears when training ends.

Both loops run from any thread: there are no signal handlers, and a run stops when a callback
returns ``False`` or raises :class:`StopTraining`, or when the ``stop`` event is set.

Layout: :mod:`.options` (:class:`FitOptions`), :mod:`.step` (devices, the shared step, evaluation,
cached features), :mod:`.monitor` (results and bookkeeping), :mod:`.setup` (what both loops share),
:mod:`.loop` (:func:`fit`) and :mod:`.ignite` (:func:`fit_ignite`).
"""

from __future__ import annotations

from .ignite import fit_ignite
from .loop import fit
from .monitor import FitResult
from .options import FitOptions
from .step import StopTraining, TrainStep, evaluate, resolve_device
from .strategies import (
    DEFAULT_LR,
    LORA_TARGETS,
    STRATEGIES,
    merge_lora,
    prepare_model,
    replace_head,
    trainable_parameter_names,
    trainable_parameters,
)

__all__ = [
    "DEFAULT_LR",
    "LORA_TARGETS",
    "STRATEGIES",
    "FitOptions",
    "FitResult",
    "StopTraining",
    "TrainStep",
    "evaluate",
    "fit",
    "fit_ignite",
    "merge_lora",
    "prepare_model",
    "replace_head",
    "resolve_device",
    "trainable_parameter_names",
    "trainable_parameters",
]
