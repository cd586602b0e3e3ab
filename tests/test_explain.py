"""vitcore.explain: cross-checks against Captum / Quantus / a NumPy rollout, Chefer relevance on a hand-built
model, the similarity target, the one vocabulary of fills, bad input, and the randomisation check."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from vitcore import VisionTransformer, ViTConfig
from vitcore.explain import faithfulness as FA
from vitcore.explain import libraries, perturb
from vitcore.explain import maps as M
from vitcore.explain.randomization import randomized_model, spearman
from vitcore.explain.relevance import chefer_relevance
from vitcore.explain.targets import SimilarityTarget, frozen_view, scorer

ROOT = Path(__file__).resolve().parent.parent


def _crosscheck_module():
    spec = importlib.util.spec_from_file_location("explain_crosscheck", ROOT / "benchmarks" / "explain_crosscheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def crosscheck():
    return _crosscheck_module()


@pytest.fixture(scope="module")
def shapes(crosscheck):
    model, images = crosscheck.load_shapes(2)
    return model, images


def _untouched(model: torch.nn.Module):
    """A snapshot to compare with after a method ran: values, flags, hooks, grads, mode."""
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [p.requires_grad for p in model.parameters()], model.training)


def _assert_untouched(model: torch.nn.Module, snapshot) -> None:
    state, flags, training = snapshot
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags and model.training == training
    assert all(p.grad is None for p in model.parameters())
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    assert hooks == 0


# --------------------------------------------------------------------------- cross-checks
def test_occlusion_equals_captum(crosscheck, shapes):
    model, images = shapes
    for fill in ("mean", "blur"):
        assert crosscheck.occlusion_rows(model, images[0], fill) <= 1e-4


def test_grad_x_input_equals_captum(crosscheck, shapes):
    model, images = shapes
    assert crosscheck.grad_x_input_row(model, images[1]) <= 1e-4


@pytest.mark.slow  # Quantus runs one forward pass per step (~200 here)
def test_deletion_equals_quantus_pixel_flipping_and_region_perturbation(crosscheck, shapes):
    model, images = shapes
    curve, area = crosscheck.pixel_flipping_row(model, images[0])
    assert curve <= 1e-4 and area <= 1e-4
    assert crosscheck.region_perturbation_row(model, images[1]) <= 1e-4


@pytest.mark.slow  # Quantus runs one forward pass per step (~200 here)
def test_randomisation_spearman_equals_quantus_mprt(crosscheck, shapes):
    model, images = shapes
    assert crosscheck.mprt_row(model, images[0]) <= 1e-4


def test_rollout_equals_a_numpy_reference(crosscheck, shapes):
    model, images = shapes
    reference = crosscheck.rollout_reference(model, images[0])
    assert reference.std() > 1e-4  # a real map, not a constant
    assert crosscheck.rollout_row(model, images[0]) <= 1e-4


# --------------------------------------------------------------------------- Chefer et al. 2021 on a hand-built model
def hand_built(bright: int) -> tuple[VisionTransformer, torch.Tensor]:
    """One block, one head, D = 4, a 4x4 grid of 4-px patches; the image is dark but for patch ``bright``.

    The CLS query matches only the bright patch's key (score 24 against 0), the bright patch's
    value writes its brightness into feature 2, the MLP is off and class 1 reads feature 2 (class
    0 reads it with a minus sign). So class 1's evidence is exactly the bright patch: every dark
    patch has v = 0 and gets no relevance at all.
    """
    config = ViTConfig(image_size=(16, 16), patch_size=4, dim=4, depth=1, heads=1, mlp_ratio=1.0, num_classes=2)
    model = VisionTransformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in (model.blocks[0].norm1, model.blocks[0].norm2, model.norm):
            norm.weight.fill_(1.0)
        model.patch_embed.proj.weight[1, 0] = 1 / 16  # feature 1 = mean of the red channel of the patch
        model.cls_token[0, 0, 0] = 2.0
        qkv = model.blocks[0].attn.qkv.weight  # rows: q (0-3), k (4-7), v (8-11)
        qkv[0, 0] = 4.0  # q_0 = 4 * LN(z)_0: large for CLS
        qkv[4, 1] = 4.0  # k_0 = 4 * LN(z)_1: large for the bright patch
        qkv[8 + 2, 1] = 1.0  # v_2 = LN(z)_1
        model.blocks[0].attn.proj.weight.copy_(torch.eye(4))
        model.head.weight[1, 2], model.head.weight[0, 2] = 1.0, -1.0
    x = torch.zeros(1, 3, 16, 16)
    r, c = divmod(bright, 4)
    x[0, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 1.0
    return model, x


@pytest.mark.parametrize("bright", [0, 6, 15])
def test_chefer_relevance_finds_the_only_evidence(bright):
    model, x = hand_built(bright)
    with torch.no_grad():
        assert model(x)[0].argmax() == 1
    snapshot = _untouched(model)
    relevance = chefer_relevance(model, x, 1).flatten()
    assert relevance.argmax() == bright and relevance[bright] > 0
    others = torch.cat([relevance[:bright], relevance[bright + 1 :]])
    assert torch.equal(others, torch.zeros_like(others))  # v = 0 and dA = 0 there: exactly no relevance
    against = chefer_relevance(model, x, 0)  # class 0 reads the same feature negatively: no positive evidence
    assert torch.equal(against, torch.zeros_like(against))
    _assert_untouched(model, snapshot)


def test_chefer_relevance_on_a_trained_model_rolls_out_like_the_paper(shapes):
    model, images = shapes
    x = images[0][None]
    relevance = chefer_relevance(model, x, None)
    assert relevance.shape == (8, 8) and (relevance >= 0).all() and relevance.sum() > 0  # (.)+ terms only
    assert torch.isfinite(relevance).all() and len(set(relevance.flatten().tolist())) > 32  # a ranking, not ties


# --------------------------------------------------------------------------- similarity target
@pytest.fixture(scope="module")
def backbone():
    return VisionTransformer(ViTConfig.preset("micro", num_classes=0)).eval()


def test_the_similarity_target_is_one_at_the_clean_image(backbone):
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    other = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    score = scorer(backbone, x, "similarity")
    with torch.no_grad():
        assert float(score(x)[0]) == pytest.approx(1.0, abs=1e-6)
        value, alike = score.curve_value(x)
        assert float(value[0]) == pytest.approx(1.0, abs=1e-6) and bool(alike[0])
        features = backbone.pool(backbone.forward_features(torch.cat([x, other])))
        cosine = torch.nn.functional.cosine_similarity(features[0], features[1], dim=0)
        pair = scorer(backbone, x, SimilarityTarget(other))  # "why are these two alike?"
        assert float(pair.curve_value(x)[0][0]) == pytest.approx(float(cosine), abs=1e-6) and float(cosine) < 0.999
        assert float(pair(x)[0]) == pytest.approx(float(cosine), abs=1e-6)  # the linearisation equals it there


def test_every_method_and_metric_works_for_the_similarity_target(backbone):
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    snapshot = _untouched(backbone)
    maps = M.relevance_maps(backbone, x, "similarity")
    assert set(maps) == set(M.ALL_METHODS)
    for name, m in maps.items():
        assert m.shape == (4, 4) and torch.isfinite(m).all(), name
    for name in ("gradient-rollout", "chefer-lrp", "grad-x-input", "integrated-gradients", "occlusion", "legrad"):
        assert float(maps[name].abs().max()) > 0, name  # the linearised target has a gradient at the clean image
    curves = FA.faithfulness_curves(backbone, x, maps, "similarity", kinds=FA.KINDS, steps=4)
    deletion = curves["deletion"]["random"]
    assert deletion.target == "similarity" and float(deletion.probabilities[0]) == pytest.approx(1.0, abs=1e-6)
    check = FA.randomization_check(backbone, x, "similarity", ["grad-x-input", "random"], stages=["embedding"])
    assert check.target == "similarity" and check.spearman["grad-x-input"][0] == pytest.approx(1.0)
    _assert_untouched(backbone, snapshot)


# --------------------------------------------------------------------------- library methods leave the model alone
def test_library_methods_run_on_a_frozen_view_and_leave_the_model_unchanged(shapes):
    model, images = shapes
    x = images[0][None]
    snapshot = _untouched(model)
    score = scorer(model, x, None)
    ig = libraries.integrated_gradients(score, x, steps=256)  # 16 (the default) is ~15 % off here; 256 converges
    with torch.no_grad():  # completeness: the patch scores add up to score(x) - score(baseline)
        gap = float(score(x)[0] - score(torch.zeros_like(x))[0])
    assert float(ig.sum()) == pytest.approx(gap, abs=1e-3)
    cam = libraries.grad_cam(score, x)
    assert cam.shape == (8, 8) and float(cam.max()) == pytest.approx(1.0, abs=1e-5) and float(cam.min()) >= 0
    legrad = libraries.legrad(score, x)
    assert legrad.shape == (8, 8) and (legrad >= 0).all() and float(legrad.max()) > 0
    _assert_untouched(model, snapshot)
    view = frozen_view(model)
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(view.parameters(), model.parameters()))  # no copy
    assert not any(p.requires_grad for p in view.parameters())


# --------------------------------------------------------------------------- the one vocabulary of fills
def test_each_fill_means_one_thing():
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(perturb.fill_image(x, "mean", patch_size=4), torch.zeros_like(x))
    black = perturb.fill_image(x, "black", patch_size=4, normalization=((0.5, 0.4, 0.3), (0.25, 0.2, 0.1)))
    assert torch.allclose(black[0, :, 0, 0], torch.tensor([-2.0, -2.0, -3.0]))
    assert torch.allclose(perturb.fill_image(x, "image", patch_size=4)[0, :, 3, 5], x[0].mean(dim=(1, 2)))
    noise = perturb.fill_image(x, "noise", patch_size=4, seed=5)
    assert torch.equal(noise, perturb.fill_image(x, "noise", patch_size=4, seed=5))
    assert abs(float(noise.std()) - 1) < 0.3
    blur = perturb.fill_image(x, "blur", patch_size=4)
    assert float(blur.std()) < float(x.std())
    with pytest.raises(ValueError, match="two meanings"):
        perturb.fill_image(x, "zero", patch_size=4)
    with pytest.raises(ValueError, match="normalization"):
        perturb.fill_image(x, "black", patch_size=4)


def test_block_occlusion_gives_each_patch_its_box(shapes):
    model, images = shapes
    x = images[1][None]
    t = scorer(model, x, None).index
    from vitcore.inspect.analysis import occlusion_map

    coarse = occlusion_map(model, x, t, block=2)
    boxes = perturb.block_masks((8, 8), 2)
    assert boxes.shape == (16, 64) and torch.equal(boxes.sum(0), torch.ones(64, dtype=torch.long))
    hidden = x.clone()
    hidden[..., 16:32, 32:48] = 0  # box (1, 2): patch rows 2-3, cols 4-5 (P = 8)
    with torch.no_grad():
        drop = float(model(x)[0, t] - model(hidden)[0, t])
    assert coarse[2, 4] == pytest.approx(drop, abs=1e-5) and coarse[3, 5] == coarse[2, 4]


# --------------------------------------------------------------------------- bad input
def test_bad_input_gets_a_message_not_a_crash(shapes):
    model, images = shapes
    x = images[0][None]
    with pytest.raises(ValueError, match=r"not a class of this model; pick an index in 0\.\.4"):
        M.relevance_maps(model, x, 5)
    with pytest.raises(ValueError, match="one flat colour"):
        M.relevance_maps(model, torch.full_like(x, 0.7), 0)
    pooling = VisionTransformer(ViTConfig.preset("micro", token_mixer="pooling")).eval()
    y = torch.randn(1, 3, 32, 32)
    for method in ("chefer-lrp", "legrad", "gradient-rollout", "rollout"):
        assert "'pooling'" in M.unavailable_reason(pooling, method)
        with pytest.raises(ValueError, match="mixes tokens with 'pooling'"):
            M.relevance_maps(pooling, y, 0, [method])
    works = M.relevance_maps(pooling, y, 0, ["occlusion", "grad-x-input", "integrated-gradients", "grad-cam"])
    assert all(torch.isfinite(m).all() for m in works.values())


# --------------------------------------------------------------------------- randomisation changes passing maps
PASSING = ["gradient-rollout", "chefer-lrp", "legrad", "grad-cam", "occlusion", "grad-x-input", "integrated-gradients"]


@pytest.fixture(scope="module")
def fully_random_rhos(crosscheck):
    """Spearman of each method's map on the trained and on the fully re-initialised Shapes model, 4 images."""
    model, images = crosscheck.load_shapes(4)
    random = randomized_model(model, "embedding", seed=0)
    rhos: dict[str, list[float]] = {}
    for image in images:
        x = image[None]
        target = scorer(model, x, None).index
        for method in [*PASSING, "rollout-max"]:
            trained = M.relevance_map(model, x, target, method)
            rhos.setdefault(method, []).append(spearman(trained, M.relevance_map(random, x, target, method)))
    return rhos


@pytest.mark.parametrize("method", PASSING)
def test_randomising_the_model_changes_the_map(fully_random_rhos, method):
    rhos = fully_random_rhos[method]
    assert sum(rhos) / len(rhos) < 0.5, rhos  # mean over the images; single images vary (-0.3 .. 0.56)


def test_a_failing_method_stays_alike_when_the_model_is_random(fully_random_rhos, shapes):
    rhos = fully_random_rhos["rollout-max"]
    assert sum(rhos) / len(rhos) >= 0.5  # Gildenblat's max fusion keeps the image's structure, not the model's
    model, images = shapes
    x = images[0][None]
    same = M.relevance_map(randomized_model(model, "trained"), x, None, "chefer-lrp")
    assert spearman(M.relevance_map(model, x, None, "chefer-lrp"), same) == pytest.approx(1.0)


@pytest.mark.slow
def test_the_crosscheck_benchmark_prints_its_verdict(crosscheck, capsys):
    assert crosscheck.main(["--images", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = lines[2:-1]  # after the title and the header
    assert len(rows) >= 5 and any("captum" in r for r in rows) and any("quantus.MPRT" in r for r in rows)
    assert lines[-1] == f"cross-check: {len(rows)} of {len(rows)} equal within 0.0001"
