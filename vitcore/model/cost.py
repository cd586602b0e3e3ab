"""What a ViT costs, from its config alone: exact parameter counts (nothing is built).

:func:`vitcore.model.mixers.mixer_cost` gives the per-block term of each token mixer.
"""

from __future__ import annotations

from .config import ViTConfig
from .mixers import mixer_cost

__all__ = ["mixer_cost", "parameter_count"]


def parameter_count(config: ViTConfig) -> int:
    """Exact number of weights of ``VisionTransformer(config)``, from the config alone (nothing is built).

    Used to size a model before building it (checkpoint budgets, the app's guards and cost tables).
    """
    D, C, P, M, K = config.dim, config.in_channels, config.patch_size, config.mlp_dim, config.num_classes
    embed = D * C * P * P + D  # patch conv
    tokens = config.num_prefix_tokens * D  # CLS, distillation and register tokens
    positions = (config.num_pos_prefix_tokens + config.num_patches) * D  # E_pos
    block = 2 * 2 * D + mixer_cost(config)["params"] + D * M + M + M * D + D  # two LayerNorms, mixer, MLP
    head = config.pool_dim * K + K if K else 0
    head_dist = D * K + K if K and config.distilled and config.distilled_head else 0
    return embed + tokens + positions + config.depth * block + 2 * D + head + head_dist
