"""The architecture: config, patch embedding, blocks, token mixers (attention among them) and cost.

Where is attention computed? ``attention.py``. What a forward keeps besides its output (maps,
q/k/v, MLP activations)? ``record.py``. The encoder of eq. (1)-(4)? ``vit.py``. Its
alternatives? ``mixers.py`` (the one registry and factory of token mixers). What a config costs
before anything is built? ``cost.py``.
"""

from .attention import Attention, AttentionProbe, ProjectedMixer, TokenMixer
from .config import PRESETS, TOKEN_MIXERS, ViTConfig
from .cost import mixer_cost, parameter_count
from .mixers import MIXER_LABELS, build_mixer
from .record import Record
from .vit import (
    MLP,
    Block,
    Intermediates,
    PatchEmbedding,
    VisionTransformer,
    conv_as_linear,
    interpolate_pos_embedding,
    patchify,
    unpatchify,
)

__all__ = [
    "MIXER_LABELS",
    "MLP",
    "PRESETS",
    "TOKEN_MIXERS",
    "Attention",
    "AttentionProbe",
    "Block",
    "Intermediates",
    "PatchEmbedding",
    "ProjectedMixer",
    "Record",
    "TokenMixer",
    "ViTConfig",
    "VisionTransformer",
    "build_mixer",
    "conv_as_linear",
    "interpolate_pos_embedding",
    "mixer_cost",
    "parameter_count",
    "patchify",
    "unpatchify",
]
