"""Analyses against hand-computed cases, invariances, and the models they read."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitcore import VisionTransformer, ViTConfig, capture
from vitcore.inspect.analysis import (
    attention_mass_in_mask,
    attention_rollout,
    cls_similarity,
    embedding_filters,
    gradient_rollout,
    mean_attention_distance,
    occlusion_map,
    occlusion_probe,
    patch_pca_rgb,
    position_embedding_similarity,
)

# Two layers, two heads, three tokens (CLS + two patches on a 1x2 grid). Rows are queries.
LAYER1 = [
    [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
    [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
]
LAYER2 = [
    [[0.2, 0.8, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
    [[0.0, 0.4, 0.6], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
]
HAND = torch.tensor([LAYER1, LAYER2])  # (L=2, H=2, T=3, T=3)


def small(**kw) -> ViTConfig:
    base = dict(image_size=(16, 24), patch_size=4, dim=32, depth=2, heads=2, mlp_ratio=2.0, num_classes=3)
    return ViTConfig(**{**base, **kw})


def hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


# ---------------------------------------------------------------- attention rollout
def test_rollout_mean_fusion_by_hand():
    # mean over heads, + I, rows / 2:
    #   layer 1 -> [[.75, .125, .125], [0, 1, 0], [0, 0, 1]]
    #   layer 2 -> [[.55, .3, .15], [.25, .75, 0], [0, .25, .75]]
    # CLS row of layer2 @ layer1 = .55 * [.75, .125, .125] + .3 * e1 + .15 * e2 = [.4125, .36875, .21875]
    expected = torch.tensor([[0.36875, 0.21875]])  # (gh=1, gw=2)
    out = attention_rollout(HAND, grid=(1, 2))
    assert out.shape == (1, 2)
    assert torch.allclose(out, expected, atol=1e-7)
    batched = attention_rollout(torch.stack([HAND, HAND.flip(-1).flip(-2)], dim=1), grid=(1, 2))  # (L, 2, H, T, T)
    assert batched.shape == (2, 1, 2) and torch.allclose(batched[0], expected, atol=1e-7)


def test_rollout_max_fusion_by_hand():
    # max over heads + I: layer 1 rows / [2.5, 2, 2] -> CLS row [.6, .2, .2]
    # layer 2: [[1.2, .8, .6], [1, 2, 0], [0, 1, 2]] / [2.6, 3, 3] -> CLS row [12, 8, 6] / 26
    # CLS row of the product: (12 * [.6, .2, .2] + 8 * e1 + 6 * e2) / 26 -> patches [10.4, 8.4] / 26
    out = attention_rollout(HAND, head_fusion="max", grid=(1, 2))
    assert torch.allclose(out, torch.tensor([[10.4 / 26, 8.4 / 26]]), atol=1e-7)
    low = attention_rollout(HAND, head_fusion="min", grid=(1, 2))
    assert not torch.allclose(low, out)


def test_rollout_discard_ratio_by_hand_never_drops_the_cls_column():
    # one layer, one head; non-CLS entries .6 .3 | .5 .2 | .15 .8: ratio 0.5 drops the 3 lowest (.15, .2, .3);
    # the CLS column (.1, .3, .05) stays although .05 is the smallest weight.
    a = torch.tensor([[[[0.1, 0.6, 0.3], [0.3, 0.5, 0.2], [0.05, 0.15, 0.8]]]])  # (L=1, H=1, 3, 3)
    out = attention_rollout(a, discard_ratio=0.5, grid=(1, 2))
    # CLS row: [.1 + 1, .6, 0] / 1.7
    assert torch.allclose(out, torch.tensor([[0.6 / 1.7, 0.0]]), atol=1e-7)
    keep_all = attention_rollout(a, grid=(1, 2))
    assert torch.allclose(keep_all, torch.tensor([[0.3, 0.15]]), atol=1e-7)  # [.6, .3] / 2
    with pytest.raises(ValueError, match=r"discard_ratio=1\.0 must be in \[0, 1\)"):
        attention_rollout(a, discard_ratio=1.0, grid=(1, 2))


def test_rollout_of_uniform_attention_is_uniform_on_non_square_grid_and_accepts_a_trace():
    T = 1 + 2 * 3
    uniform = torch.full((4, 2, 3, T, T), 1.0 / T)  # (L, B, H, T, T)
    out = attention_rollout(uniform, grid=(2, 3))
    assert out.shape == (2, 2, 3)
    assert torch.allclose(out, out[0, 0, 0].expand_as(out))
    with pytest.raises(ValueError, match=r"pass grid=\(gh, gw\)"):
        attention_rollout(uniform)
    with pytest.raises(ValueError, match="grid 3x3 has 9 patches but there are 6"):
        attention_rollout(uniform, grid=(3, 3))
    model = VisionTransformer(small()).eval()
    trace = capture(model, torch.randn(2, 3, 16, 24))
    from_trace = attention_rollout(trace)
    assert from_trace.shape == (2, 4, 6)
    assert torch.allclose(from_trace, attention_rollout(trace.attention, grid=(4, 6)))


# ---------------------------------------------------------------- gradient rollout
def _toy_task(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: a bright 4x4 square in the left half; class 1: in the right half (16x24 images)."""
    x = 0.1 * torch.randn(n, 3, 16, 24)
    y = torch.arange(n) % 2
    rows, cols = torch.randint(0, 3, (n,)) * 4, torch.randint(0, 3, (n,)) * 4 + 12 * y
    for i in range(n):
        x[i, :, rows[i] : rows[i] + 4, cols[i] : cols[i] + 4] += 2.0
    return x, y


@pytest.fixture(scope="module")
def trained_toy() -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(small(num_classes=2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is ~10x faster than two on a busy machine
    try:
        for _ in range(150):
            x, y = _toy_task(32)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    x, y = _toy_task(128)
    with torch.no_grad():
        accuracy = (model(x).argmax(-1) == y).float().mean().item()
    assert accuracy > 0.9, f"toy model did not learn the task (accuracy {accuracy:.2f})"
    model.zero_grad(set_to_none=True)
    return model


def test_gradient_rollout_depends_on_the_target_class(trained_toy):
    torch.manual_seed(1)
    x, _ = _toy_task(2)
    x[:, :, 4:8, 4:8] += 2.0  # a left square ...
    x[:, :, 8:12, 16:20] += 2.0  # ... and a right square in both images
    model = trained_toy
    assert model.config.fused_attention
    maps0, maps1 = gradient_rollout(model, x, 0), gradient_rollout(model, x, 1)
    assert maps0.shape == (2, 4, 6) and (maps0 >= 0).all()
    share0 = maps0 / maps0.sum(dim=(1, 2), keepdim=True)
    share1 = maps1 / maps1.sum(dim=(1, 2), keepdim=True)
    assert ((share0 - share1).abs().sum(dim=(1, 2)) > 0.5).all()  # the two classes point at different patches
    assert torch.allclose(gradient_rollout(model, x[0], 1), maps1[0], atol=1e-6)  # unbatched
    assert torch.allclose(gradient_rollout(model, x, [0, 1])[1], maps1[1], atol=1e-6)  # one target per image
    # the model is left as it was: eval, no hooks (so the fused path on a plain call), no .grad
    assert not model.training and hooks(model) == 0 and not any(b.attn.explicit(None) for b in model.blocks)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match=r"classes 0\.\.1"):
        gradient_rollout(model, x, 2)


def test_occlusion_map_of_the_toy_model_peaks_at_the_square(trained_toy):
    torch.manual_seed(2)
    x, y = _toy_task(4)
    for image, label in zip(x, y):
        omap = occlusion_map(trained_toy, image, target=int(label), fill="mean")
        brightest = image.mean(0).reshape(4, 4, 6, 4).mean(dim=(1, 3))  # (gh, gw) mean patch intensity
        assert omap.argmax() == brightest.argmax()


def test_gradient_rollout_matches_a_reference_computed_with_retain_grad(trained_toy):
    model = trained_toy
    x, _ = _toy_task(1)
    kept = []  # a hook on each probe makes its block form the matrix
    handles = [b.attn.probe.register_forward_hook(lambda m, a, out: kept.append(out)) for b in model.blocks]
    logits = model(x)
    for a in kept:
        a.retain_grad()
    logits[0, 1].backward()
    for h in handles:
        h.remove()
    model.zero_grad(set_to_none=True)
    R = torch.eye(kept[0].shape[-1])
    for a in kept:
        cam = (a.grad[0] * a[0]).clamp(min=0).mean(0)  # (T, T)
        R = R + cam @ R
    expected = R[0, 1:].reshape(4, 6).detach()
    assert torch.allclose(gradient_rollout(model, x, 1)[0], expected, atol=1e-5)


# ---------------------------------------------------------------- mean attention distance
def test_mean_distance_by_hand():
    P = 16  # the two patches of the 1x2 grid are 16 px apart
    # layer 1, head 0: patch 1 -> keys [.5 CLS, .5, 0] renormalised [1, 0] -> 0; patch 2 -> self -> 0; mean 0
    # patch queries of the layer tensors below (row 0, CLS, is ignored):
    a = torch.zeros(2, 2, 3, 3)
    a[0, 0, 1] = torch.tensor([0.5, 0.25, 0.25])  # renormalised [.5, .5] -> 8 px
    a[0, 0, 2] = torch.tensor([0.0, 0.0, 1.0])  # self -> 0 px           layer 1 head 0: mean 4
    a[0, 1, 1] = torch.tensor([0.0, 0.0, 1.0])  # other -> 16 px
    a[0, 1, 2] = torch.tensor([0.2, 0.4, 0.4])  # [.5, .5] -> 8 px       layer 1 head 1: mean 12
    a[1, 0, 1:] = torch.eye(3)[1:]  # identity -> 0                    layer 2 head 0: 0
    a[1, 1, 1] = torch.tensor([0.0, 0.0, 1.0])  # swap -> 16
    a[1, 1, 2] = torch.tensor([0.0, 1.0, 0.0])  # 16                    layer 2 head 1: 16
    a[:, :, 0] = torch.tensor([1.0, 0.0, 0.0])  # CLS query: excluded whatever it does
    expected = torch.tensor([[4.0, 12.0], [0.0, 16.0]])
    assert torch.allclose(mean_attention_distance(a, (1, 2), P), expected)
    batch = torch.stack([a, a], dim=1)  # (L, B, H, T, T)
    assert torch.allclose(mean_attention_distance(batch, (1, 2), P), expected)
    # HAND: layer 1 patches attend to themselves -> 0; layer 2 head 0: self -> 0; layer 2 head 1: patch 1
    # attends only to CLS (nothing left after renormalising: counts 0), patch 2 to patch 1 (16) -> mean 8
    assert torch.allclose(mean_attention_distance(HAND, (1, 2), P), torch.tensor([[0.0, 0.0], [0.0, 8.0]]))


def test_identity_attention_has_zero_distance_and_non_square_grid_uses_euclid():
    T = 1 + 2 * 3
    eye = torch.eye(T).expand(3, 2, 4, T, T)  # (L, B, H, T, T)
    assert torch.equal(mean_attention_distance(eye, (2, 3), 16), torch.zeros(3, 4))
    a = torch.eye(T).expand(1, 1, T, T).clone()  # (L=1, H=1, T, T)
    a[0, 0, 1] = 0.0
    a[0, 0, 1, T - 1] = 1.0  # patch (0, 0) looks only at patch (1, 2): sqrt(1 + 4) grid steps
    out = mean_attention_distance(a, (2, 3), 8)
    assert torch.allclose(out, torch.tensor([[math.sqrt(5) * 8 / 6]]))


# ---------------------------------------------------------------- Fig. 7 and token maps
def test_position_embedding_similarity_non_square():
    pos = torch.randn(1, 1 + 12, 16)  # (1, prefix+N, D) on a 3x4 grid
    sim = position_embedding_similarity(pos, (3, 4))
    assert sim.shape == (12, 3, 4)
    flat = sim.reshape(12, 12)
    assert torch.allclose(torch.diagonal(flat), torch.ones(12), atol=1e-6)
    assert torch.allclose(flat, flat.T, atol=1e-6)
    expected = F.cosine_similarity(pos[0, 1 + 5], pos[0, 1 + 7], dim=0)  # patch (1, 1) vs patch (1, 3)
    assert torch.allclose(sim[5, 1, 3], expected, atol=1e-6)
    two_prefix = position_embedding_similarity(torch.cat([pos[0, :1], pos[0]]), (3, 4), num_prefix_tokens=2)
    assert torch.allclose(two_prefix, sim)


def test_embedding_filters_exact_stable_and_order_invariant():
    model = VisionTransformer(small(patch_size=4, dim=64))
    f1 = embedding_filters(model, k=28)
    f2 = embedding_filters(model, k=28)
    assert f1.shape == (28, 3, 4, 4) and torch.equal(f1, f2)
    weight = model.patch_embed.proj.weight.detach()  # (D, C, P, P)
    shuffled = embedding_filters(weight[torch.randperm(64)], k=28)
    assert torch.allclose(shuffled, f1, atol=1e-5)  # same components, same signs
    flat = f1.reshape(28, -1).double()
    assert torch.allclose(flat @ flat.T, torch.eye(28, dtype=torch.float64), atol=1e-5)  # orthonormal
    idx = flat.abs().argmax(dim=1)
    assert (flat[torch.arange(28), idx] > 0).all()  # sign convention
    # component 0 is the top eigenvector of the filters' covariance
    x = weight.reshape(64, -1).double()
    x = x - x.mean(0)
    _, eigvecs = torch.linalg.eigh(x.T @ x)
    top = eigvecs[:, -1]
    assert torch.allclose((top @ flat[0]).abs(), torch.tensor(1.0, dtype=torch.float64), atol=1e-6)
    with pytest.raises(ValueError, match=r"1\.\.48 principal components"):
        embedding_filters(model, k=49)


def test_patch_pca_rgb_and_cls_similarity_non_square():
    gh, gw, D = 3, 5, 8
    tokens = torch.randn(2, 1 + gh * gw, D)  # (B, T, D)
    rgb = patch_pca_rgb(tokens[0], (gh, gw))
    assert rgb.shape == (gh, gw, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert torch.allclose(rgb.reshape(-1, 3).amin(0), torch.zeros(3)) and torch.allclose(
        rgb.reshape(-1, 3).amax(0), torch.ones(3)
    )
    # the first colour channel orders patches like the projection on the first principal axis
    x = tokens[0, 1:].double()
    x = x - x.mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    proj = x @ vh[0]
    corr = torch.corrcoef(torch.stack([proj, rgb[..., 0].reshape(-1).double()]))[0, 1]
    assert corr.abs() > 1 - 1e-6
    assert patch_pca_rgb(tokens, (gh, gw)).shape == (2, gh, gw, 3)
    # CLS similarity: cosine by hand, batched and not
    sim = cls_similarity(tokens, (gh, gw))
    assert sim.shape == (2, gh, gw)
    assert torch.allclose(sim[1, 2, 4], F.cosine_similarity(tokens[1, 0], tokens[1, -1], dim=0), atol=1e-6)
    same = tokens.clone()
    same[0, 1:] = 3.0 * same[0, :1]  # every patch parallel to CLS
    assert torch.allclose(cls_similarity(same[0], (gh, gw)), torch.ones(gh, gw), atol=1e-6)


# ---------------------------------------------------------------- occlusion
@pytest.fixture
def toy() -> VisionTransformer:
    return VisionTransformer(small()).eval()


def test_occlusion_of_nothing_changes_nothing(toy):
    image = torch.randn(3, 16, 24)
    for fill in ("mean", "blur", "noise", "image"):
        change = occlusion_probe(toy, image, [], fill=fill)
        assert change.shape == (3,) and torch.allclose(change, torch.zeros(3), atol=1e-6)


def test_occlusion_probe_of_everything_with_the_data_set_mean_is_the_zero_image(toy):
    image = torch.randn(1, 3, 16, 24)
    change = occlusion_probe(toy, image, torch.ones(4, 6, dtype=torch.bool), fill="mean")
    with torch.no_grad():
        expected = toy(torch.zeros_like(image))[0] - toy(image)[0]
    assert torch.allclose(change, expected, atol=1e-5)
    mean_fill = occlusion_probe(toy, image, list(range(24)), fill="image")
    with torch.no_grad():
        flat = image.mean(dim=(-2, -1), keepdim=True).expand_as(image)
        assert torch.allclose(mean_fill, toy(flat)[0] - toy(image)[0], atol=1e-5)
    with pytest.raises(ValueError, match=r"patches 0\.\.23"):
        occlusion_probe(toy, image, [24])
    with pytest.raises(ValueError, match="outside the 4x6 grid"):
        occlusion_probe(toy, image, [(4, 0)])
    with pytest.raises(ValueError, match="fill='purple'"):
        occlusion_probe(toy, image, [0], fill="purple")
    with pytest.raises(ValueError, match="'zero' had two meanings"):
        occlusion_probe(toy, image, [0], fill="zero")
    with pytest.raises(ValueError, match="normalization"):
        occlusion_probe(toy, image, [0], fill="black")
    black = occlusion_probe(toy, image, list(range(24)), fill="black", normalization=((0.5,) * 3, (0.25,) * 3))
    with torch.no_grad():
        assert torch.allclose(black, toy(torch.full_like(image, -2.0))[0] - toy(image)[0], atol=1e-5)


def test_occlusion_map_agrees_with_single_probes_and_batching(toy):
    image = torch.randn(3, 16, 24)
    toy.train()
    omap = occlusion_map(toy, image, target=2, fill="blur", batch_size=5)
    assert toy.training  # mode restored
    assert omap.shape == (4, 6)
    for r, c in [(0, 0), (1, 4), (3, 5)]:
        probe = occlusion_probe(toy, image, [(r, c)], fill="blur")
        assert torch.allclose(omap[r, c], -probe[2], atol=1e-5)
    assert torch.allclose(occlusion_map(toy, image, target=2, fill="blur", batch_size=64), omap, atol=1e-5)
    assert omap.abs().max() > 0


# ---------------------------------------------------------------- mass in mask
def test_attention_mass_in_mask_grid_and_image_resolution():
    heat = torch.tensor([[1.0, 3.0, 0.0], [0.0, 0.0, 4.0]])  # (gh=2, gw=3), total 8
    grid_mask = torch.tensor([[False, True, False], [False, False, True]])
    assert attention_mass_in_mask(heat, grid_mask) == pytest.approx(7 / 8)
    pixel_mask = grid_mask.repeat_interleave(4, 0).repeat_interleave(4, 1)  # (8, 12) image resolution
    assert attention_mass_in_mask(heat, pixel_mask) == pytest.approx(7 / 8)
    half = torch.zeros(8, 12, dtype=torch.bool)
    half[:, :2] = True  # half of patch (0, 0) and of patch (1, 0)
    assert attention_mass_in_mask(heat, half) == pytest.approx(0.5 / 8)
    batch = attention_mass_in_mask(torch.stack([heat, -heat]), grid_mask)
    assert torch.allclose(batch, torch.tensor([7 / 8, 0.0]))  # negative map: no mass
    assert attention_mass_in_mask(heat, ~grid_mask) + attention_mass_in_mask(heat, grid_mask) == pytest.approx(1.0)
