"""Faithfulness metrics on a hand-built ViT whose true relevance is known by construction."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from vitcore import VisionTransformer, ViTConfig
from vitcore.explain import faithfulness as FA

J = 5  # the one patch the hand-built model reads
GRID = (4, 4)
N = 16


# --------------------------------------------------------------------------- the hand-built model
def one_patch_model() -> VisionTransformer:
    """A 1-block ViT on 16x16 images (4x4 patches of 4 px) whose logits depend on patch J only.

    Patch embedding: token dim 1 = mean of the patch's red channel. The CLS token carries a query
    marker (dim 2), patch J's position embedding a key marker (dim 0), so the CLS query meets only
    patch J's key (score ~ 33 vs <= 7: softmax weight 1 - 1e-11). The value is dim 1 (the red
    mean), the MLP is zero, the head reads dim 1 of the CLS token: class 0 grows with the red of
    patch J, and nothing else in the image matters.
    """
    config = ViTConfig(image_size=16, patch_size=4, dim=8, depth=1, heads=1, mlp_ratio=1.0, num_classes=2)
    model = VisionTransformer(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for ln in (model.blocks[0].norm1, model.blocks[0].norm2, model.norm):
            ln.weight.fill_(1.0)
        model.patch_embed.proj.weight[1, 0] = 1 / 16  # dim 1 = red mean of the patch
        model.cls_token[0, 0, 2] = 1.0  # query marker
        model.pos_embedding[0, 1 + J, 0] = 1.0  # key marker on patch J
        qkv = model.blocks[0].attn.qkv.weight  # (3D, D): q rows 0..7, k rows 8..15, v rows 16..23
        qkv[0, 2] = 20.0  # q_0 = 20 * marker
        qkv[8, 0] = 1.0  # k_0 = key marker
        qkv[16 + 1, 1] = 1.0  # v_1 = red mean
        model.blocks[0].attn.proj.weight[1, 1] = 1.0
        model.head.weight[0, 1], model.head.weight[1, 1] = 3.0, -3.0
    return model.eval()


def hand_image() -> torch.Tensor:
    """A random normalised 16x16 image whose patch J is bright red (+1)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 16, 16, generator=g) * 2 - 1
    r, c = divmod(J, 4)
    x[0, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] = 1.0
    return x


def true_map() -> torch.Tensor:
    m = torch.zeros(GRID)
    m.view(-1)[J] = 1.0
    return m


@pytest.fixture(scope="module")
def hand():
    model, x = one_patch_model(), hand_image()
    with torch.no_grad():
        p_clean = float(model(x[None]).softmax(-1)[0, 0])
        p_fill = float(model(torch.zeros(1, 3, 16, 16)).softmax(-1)[0, 0])  # fill "mean" is 0 in input space
    assert p_clean > p_fill + 0.3, "the construction must make patch J matter"
    return model, x, p_clean, p_fill


def test_only_patch_j_changes_the_output(hand):
    model, x, p_clean, _ = hand
    other = x.clone()
    other[:, :4, :4] = -1  # patch 0 changed
    with torch.no_grad():
        assert float(model(other[None]).softmax(-1)[0, 0]) == pytest.approx(p_clean, abs=1e-9)


# --------------------------------------------------------------------------- areas
def test_area_under_curve_hand_computed():
    assert FA.area_under_curve([0, 0.5, 1], [1, 0.5, 0]) == pytest.approx(0.5)
    assert FA.area_under_curve([0, 0.25, 1], [1, 1, 0]) == pytest.approx(0.25 + 0.375)
    with pytest.raises(ValueError, match="non-decreasing"):
        FA.area_under_curve([0, 1, 0.5], [1, 1, 1])


def test_deletion_with_the_true_map_has_the_hand_computed_area(hand):
    model, x, p_clean, p_fill = hand
    curve = FA.deletion_curve(model, x, true_map(), target=0, steps=N)
    assert len(curve.probabilities) == N + 1 and curve.fill == "mean" and curve.kind == "deletion"
    expected = torch.tensor([p_clean] + [p_fill] * N, dtype=torch.float64)
    assert torch.allclose(curve.probabilities, expected, atol=1e-9)
    assert curve.auc == pytest.approx((p_clean + p_fill) / 2 / N + (N - 1) / N * p_fill, abs=1e-9)


def test_insertion_with_the_true_map_has_the_hand_computed_area(hand):
    model, x, p_clean, p_fill = hand
    curve = FA.insertion_curve(model, x, true_map(), target=0, steps=N)
    expected = torch.tensor([p_fill] + [p_clean] * N, dtype=torch.float64)
    assert torch.allclose(curve.probabilities, expected, atol=1e-9)
    assert curve.auc == pytest.approx((p_clean + p_fill) / 2 / N + (N - 1) / N * p_clean, abs=1e-9)


def test_deletion_with_the_true_map_beats_random_maps(hand):
    model, x, p_clean, p_fill = hand
    truth = FA.deletion_curve(model, x, true_map(), target=0, steps=10).auc
    randoms = []
    for seed in range(8):
        rnd = FA.random_map(GRID, seed)
        curve = FA.deletion_curve(model, x, rnd, target=0, steps=N)
        r = int((rnd.flatten() > rnd.flatten()[J]).sum()) + 1  # position of patch J in the random order
        hand_area = (r - 1) / N * p_clean + (p_clean + p_fill) / 2 / N + (N - r) / N * p_fill
        assert curve.auc == pytest.approx(hand_area, abs=1e-9)
        randoms.append(FA.deletion_curve(model, x, rnd, target=0, steps=10).auc)
    assert all(truth <= r + 1e-12 for r in randoms) and truth < sum(randoms) / len(randoms) - 0.05
    insert_truth = FA.insertion_curve(model, x, true_map(), target=0).auc
    insert_random = [FA.insertion_curve(model, x, FA.random_map(GRID, s), target=0).auc for s in range(8)]
    assert insert_truth >= max(insert_random) - 1e-12


@pytest.mark.parametrize("steps", [1, 3, 10, 20])
def test_curves_have_the_advertised_points_and_start_at_the_clean_probability(hand, steps):
    model, x, p_clean, p_fill = hand
    maps = {"truth": true_map(), "random": FA.random_map(GRID, 3)}
    curves = FA.faithfulness_curves(model, x, maps, target=0, steps=steps, kinds=FA.KINDS)
    for name in maps:
        deletion, insertion = curves["deletion"][name], curves["insertion"][name]
        assert len(deletion.fractions) == len(deletion.probabilities) == steps + 1 == len(insertion.probabilities)
        assert float(deletion.fractions[0]) == 0.0 and float(deletion.fractions[-1]) == 1.0
        assert float(deletion.probabilities[0]) == pytest.approx(p_clean, abs=1e-7)  # the clean image
        assert float(insertion.probabilities[-1]) == pytest.approx(p_clean, abs=1e-7)
        assert float(insertion.probabilities[0]) == pytest.approx(p_fill, abs=1e-7)  # the empty canvas
        assert len(curves["positive"][name].probabilities) == 10  # Chefer: 0, 10, ..., 90 %
        assert float(curves["positive"][name].probabilities[0]) == pytest.approx(p_clean, abs=1e-7)


def test_chefer_perturbations_hand_computed(hand):
    model, x, p_clean, p_fill = hand
    positive = FA.perturbation_curve(model, x, true_map(), target=0, order="positive")
    negative = FA.perturbation_curve(model, x, true_map(), target=0, order="negative")
    counts = [math.floor(f * N + 0.5) for f in FA.CHEFER_FRACTIONS]
    xs = [c / N for c in counts]
    assert torch.allclose(positive.fractions, torch.tensor(xs, dtype=torch.float64))
    # most relevant first: patch J goes at the first step; least relevant first: J is never removed (<= 90 %)
    assert positive.auc == pytest.approx(FA.area_under_curve(xs, [p_clean] + [p_fill] * 9), abs=1e-9)
    assert negative.auc == pytest.approx(xs[-1] * p_clean, abs=1e-9)
    assert negative.accuracy_auc == pytest.approx(xs[-1])  # always still class 0
    assert positive.higher_is_better is False and negative.higher_is_better is True


def test_fills_differ_and_are_reported(hand):
    model, x, _, _ = hand
    blur = FA.deletion_curve(model, x, true_map(), target=0, fill="blur")
    zero = FA.deletion_curve(model, x, true_map(), target=0, fill="black", normalization=((0.5,) * 3, (0.5,) * 3))
    mean = FA.deletion_curve(model, x, true_map(), target=0, fill="mean")
    assert (blur.fill, zero.fill, mean.fill) == ("blur", "black", "mean")
    assert len({round(blur.auc, 6), round(zero.auc, 6), round(mean.auc, 6)}) == 3


def test_methods_find_the_patch_the_model_reads(hand):
    model, x, _, _ = hand
    maps = FA.relevance_maps(model, x, 0)
    assert set(maps) == set(FA.ALL_METHODS)
    for name in ("cls-attention", "rollout", "gradient-rollout", "occlusion", "grad-x-input"):
        assert int(maps[name].flatten().argmax()) == J, name
    mask = torch.zeros(16, 16, dtype=torch.bool)
    r, c = divmod(J, 4)
    mask[r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] = True
    assert FA.pointing_game(maps["cls-attention"], mask)
    assert FA.mask_share(true_map(), mask) == pytest.approx(1.0)
    assert not FA.pointing_game(FA.centre_bias_map(GRID) * 0 + torch.arange(16.0).view(4, 4), mask)


# --------------------------------------------------------------------------- similarity and randomisation
def test_spearman_and_ssim_hand_computed():
    a = torch.tensor([[1.0, 2.0], [2.0, 3.0]])
    assert FA.spearman(a, 3 * torch.exp(a) - 1) == pytest.approx(1.0, abs=1e-12)  # a monotone map, not a copy
    assert FA.ssim(a, a) == pytest.approx(1.0)
    pi, e = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0], [2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0]  # ties in both
    assert FA.spearman(pi, e) == pytest.approx(stats.spearmanr(pi, e).statistic, abs=1e-12)
    assert FA.spearman(pi, e) == pytest.approx(0.1988536812, abs=1e-9)
    assert FA.spearman([1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(3 / math.sqrt(10))
    assert FA.spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert FA.ssim(a, -a) < 0


def test_randomization_check_is_one_for_the_unchanged_model_and_drops_when_random(hand):
    model, x, _, _ = hand
    check = FA.randomization_check(model, x, 0, ["gradient-rollout", "random"], stages=["embedding"])
    assert check.stages == ["trained", "embedding"]
    assert check.spearman["gradient-rollout"][0] == 1.0 and check.ssim["gradient-rollout"][0] == pytest.approx(1.0)
    assert check.spearman["random"] == [1.0, 1.0]  # a baseline ignores the model: that is what failing looks like
    assert check.spearman["gradient-rollout"][1] < 0.9
    assert check.verdict("random").startswith("fails")
    assert FA.randomization_verdict(["trained", "head", "block 0"], [1.0, 0.1, 0.0]).startswith("passes")


def test_randomized_model_shares_untouched_tensors_and_reinitialises_the_rest():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig.preset("micro", distilled=True)).eval()
    x = torch.randn(1, 3, 32, 32)
    same = FA.randomized_model(model, "trained")
    with torch.no_grad():
        assert torch.equal(same(x), model(x))
    head = FA.randomized_model(model, "block 3", seed=1)
    assert head.blocks[0].attn.qkv.weight.data_ptr() == model.blocks[0].attn.qkv.weight.data_ptr()  # shared
    assert head.blocks[3].attn.qkv.weight.data_ptr() != model.blocks[3].attn.qkv.weight.data_ptr()
    w = head.blocks[3].mlp.fc1.weight.detach()
    assert w.abs().max() <= 0.04 + 1e-6 and 0.012 < float(w.std()) < 0.02  # trunc normal(0, 0.02) at 2 sigma
    assert torch.equal(head.blocks[3].norm1.weight, torch.ones(96)) and not head.head.bias.any()
    again = FA.randomized_model(model, "block 3", seed=1)
    assert torch.equal(again.head.weight, head.head.weight)  # seeded: the same random weights
    with pytest.raises(ValueError, match="unknown stage"):
        FA.randomized_model(model, "block 9")


# --------------------------------------------------------------------------- the shared model is only read
def test_no_function_changes_the_model_its_grads_or_the_global_rng():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig.preset("micro", distilled=True)).eval()  # prefix of 2 tokens
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 32, 32)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:24, 8:24] = True
    rng = torch.get_rng_state()

    maps = FA.relevance_maps(model, x, 2)
    assert all(m.shape == (4, 4) for m in maps.values())
    FA.faithfulness_curves(model, x, maps, 2, kinds=FA.KINDS, fill="blur")
    FA.randomization_check(model, x, 2, ["gradient-rollout", "grad-x-input", "occlusion"], stages=["head", "block 2"])
    FA.randomized_model(model, "embedding")
    FA.pointing_game(maps["rollout"], mask), FA.mask_share(maps["rollout"], mask)

    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training and not any(b.attn.explicit(None) for b in model.blocks)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# --------------------------------------------------------------------------- errors people can act on
def test_bad_input_says_what_to_do(hand):
    model, x, _, _ = hand
    with pytest.raises(ValueError, match="4x4 patch grid"):
        FA.deletion_curve(model, x, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="steps"):
        FA.deletion_curve(model, x, true_map(), steps=0)
    with pytest.raises(ValueError, match="fill"):
        FA.deletion_curve(model, x, true_map(), fill="purple")
    with pytest.raises(ValueError, match="normalization"):
        FA.deletion_curve(model, x, true_map(), fill="black")
    with pytest.raises(ValueError, match="two meanings"):
        FA.deletion_curve(model, x, true_map(), fill="zero")
    with pytest.raises(ValueError, match="unknown method"):
        FA.relevance_maps(model, x, methods=["saliency"])
    with pytest.raises(ValueError, match="NaN"):
        FA.deletion_curve(model, x, torch.full(GRID, float("nan")))
    with pytest.raises(ValueError, match="not a class"):
        FA.relevance_maps(model, x, target=7)
    backbone = VisionTransformer(ViTConfig.preset("micro", num_classes=0)).eval()
    with pytest.raises(ValueError, match="target='similarity'"):
        FA.relevance_maps(backbone, torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="one flat colour"):
        FA.relevance_maps(model, torch.full_like(x, 0.3), 0)
    training = VisionTransformer(ViTConfig.preset("micro"))  # nn.Module starts in training mode
    with pytest.raises(ValueError, match=r"model.eval\(\)"):
        FA.deletion_curve(training, torch.randn(3, 32, 32), torch.zeros(4, 4))
