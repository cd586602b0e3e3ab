"""The data-flow stages and the cost model behind the Home page and the playground."""

from __future__ import annotations

import pytest
import torch

from explorer.pipeline import cost_summary, param_count, shape_flow
from vitcore import VisionTransformer, ViTConfig


def test_shape_flow_matches_the_real_forward_pass():
    model = VisionTransformer(ViTConfig(image_size=(32, 48), patch_size=8, dim=24, depth=2, heads=2, num_classes=4))
    model.eval()
    x = torch.randn(2, 3, 32, 48)
    stages = shape_flow(model, x)
    shapes = {s.name: s.shape for s in stages}
    assert shapes == {
        "image": (2, 3, 32, 48),
        "patches": (2, 24, 192),
        "patch embeddings": (2, 24, 24),
        "+ CLS": (2, 25, 24),
        "+ position": (2, 25, 24),
        "blocks": (2, 25, 24),
        "CLS": (2, 24),
        "logits": (2, 4),
    }
    assert stages[1].shape_text == "[2, 24, 192]"


@pytest.mark.parametrize(
    "config",
    [
        ViTConfig.preset("base"),
        ViTConfig.preset("micro"),
        ViTConfig(image_size=(32, 64), patch_size=8, dim=24, depth=3, heads=2, num_classes=0, qkv_bias=False),
        ViTConfig(image_size=32, patch_size=4, dim=16, depth=1, heads=2, num_classes=3, distilled=True),
        ViTConfig(image_size=32, patch_size=4, dim=16, depth=1, heads=2, num_classes=3, distilled=True,
                  distilled_head=False),
    ],
)
def test_param_count_formula_is_exact(config):
    assert param_count(config) == sum(p.numel() for p in VisionTransformer(config).parameters())


def test_cost_summary_for_vit_b_16():
    cost = cost_summary(ViTConfig.preset("base"))
    assert cost["tokens"] == 197 and cost["patches"] == 196
    assert cost["params"] == 86_567_656
    # ViT-B/16 at 224: 17.6 GMACs (the "17.6 GFLOPs" of the DeiT tables), twice that in FLOPs
    assert 17.4 < cost["gmacs"] < 17.7
    assert cost["gflops"] == pytest.approx(2 * cost["gmacs"])
    assert cost["attention_mib"] == pytest.approx(12 * 12 * 197 * 197 * 4 / 2**20)
    # halving the patch size quadruples the tokens and raises the attention share
    fine = cost_summary(ViTConfig.preset("base", patch_size=8))
    assert fine["patches"] == 4 * cost["patches"]
    assert fine["attention_share"] > cost["attention_share"]
