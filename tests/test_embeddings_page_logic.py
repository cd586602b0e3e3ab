"""explorer.embeddings: what the Embeddings page shows, from a trace of the bundled model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from explorer import embeddings as E
from explorer.models import ModelSpec, build_model
from vitcore import capture


@pytest.fixture(scope="module")
def loaded_and_trace():
    loaded = build_model(ModelSpec("bundled"))
    x = torch.randn(1, 3, *loaded.preprocessing.crop_size, generator=torch.Generator().manual_seed(3))
    return loaded, capture(loaded.model, x)


def test_patch_colours_are_the_token_pca_one_square_per_patch(loaded_and_trace):
    _, trace = loaded_and_trace
    gh, gw = trace.grid
    image = E.patch_colours(trace, 2, pixels_per_patch=4)
    assert image.shape == (gh * 4, gw * 4, 3) and image.min() >= 0.0 and image.max() <= 1.0
    tokens = trace.tokens[2][0, trace.num_prefix_tokens:].double()  # (N, D)
    centred = tokens - tokens.mean(0)
    first = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    component = (centred @ first).reshape(gh, gw).numpy()
    red = image[::4, ::4, 0]  # one value per patch, min-max scaled; the sign of a component is a convention
    scaled = (component - component.min()) / (component.max() - component.min())
    assert np.allclose(red, scaled, atol=1e-5) or np.allclose(red, 1 - scaled, atol=1e-5)
    assert np.all(image[1:4, 0:4] == image[0, 0])  # a flat square per patch
    with pytest.raises(ValueError, match="out of range"):
        E.patch_colours(trace, len(trace.tokens))


def test_filters_are_principal_components_and_leave_the_model_alone(loaded_and_trace):
    loaded, _ = loaded_and_trace
    before = loaded.model.patch_embed.proj.weight.detach().clone()
    comps = E.filters(loaded.model)
    cfg = loaded.config
    assert comps.shape == (E.filter_count(cfg), cfg.in_channels, cfg.patch_size, cfg.patch_size)
    flat = comps.reshape(len(comps), -1)
    assert np.allclose(flat @ flat.T, np.eye(len(comps)), atol=1e-5)  # orthonormal directions
    assert torch.equal(before, loaded.model.patch_embed.proj.weight)


def test_position_and_cls_similarity_are_cosines(loaded_and_trace):
    _, trace = loaded_and_trace
    gh, gw = trace.grid
    p = trace.num_prefix_tokens
    sim = E.position_similarity(trace)
    assert sim.shape == (gh * gw, gh, gw)
    assert np.allclose(sim.reshape(gh * gw, -1).diagonal(), 1.0, atol=1e-6)
    pos = trace.pos_embedding.reshape(-1, trace.pos_embedding.shape[-1])[p:]
    assert sim[3].reshape(-1)[5] == pytest.approx(float(F.cosine_similarity(pos[3], pos[5], dim=0)), abs=1e-5)
    cls = E.cls_similarity(trace)
    last = trace.tokens[-1][0]
    expected = F.cosine_similarity(last[p:], last[:1], dim=-1).reshape(gh, gw).numpy()
    assert cls.shape == (gh, gw) and np.allclose(cls, expected, atol=1e-5)
