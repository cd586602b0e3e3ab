"""Dense heads on frozen tokens: scores that can fail, the segmentation probe's mIoU, the box heads."""

from __future__ import annotations

import pytest
import torch

from explorer.models import BUNDLED_CHECKPOINT
from vitcore import VisionTransformer, ViTConfig
from vitcore.inspect import dense


# --------------------------------------------------------------------------- scores and targets
def test_mask_iou_and_miou_count_pixels():
    truth = torch.zeros(2, 4, 4, dtype=torch.bool)
    truth[:, :2, :2] = True  # 4 object pixels per image
    pred = torch.zeros_like(truth)
    pred[0, :2, :1] = True  # half the object: IoU 2/4
    pred[1] = ~truth[1]  # exactly wrong: IoU 0
    torch.testing.assert_close(dense.mask_iou(pred, truth), torch.tensor([0.5, 0.0]))
    scores = dense.segmentation_miou(pred, truth)
    assert scores["object"] == pytest.approx(2 / 20)  # 2 shared of 8 + 12 = 20 in the union
    assert scores["background"] == pytest.approx(12 / 30)  # background: 12 + 0 shared, 14 + 16 in the union
    assert scores["miou"] == pytest.approx((scores["object"] + scores["background"]) / 2)
    assert dense.mask_iou(torch.zeros(1, 3, 3), torch.zeros(1, 3, 3))[0] == 1.0  # both empty


def test_mask_boxes_and_box_iou():
    masks = torch.zeros(1, 10, 20, dtype=torch.bool)
    masks[0, 2:6, 4:14] = True  # rows 2..5, columns 4..13
    box = dense.mask_boxes(masks)
    torch.testing.assert_close(box, torch.tensor([[9 / 20, 4 / 10, 10 / 20, 4 / 10]]))
    assert dense.box_iou(box, box)[0] == pytest.approx(1.0)
    shifted = box + torch.tensor([[5 / 20, 0, 0, 0]])  # half the width to the right: 1/3 overlap
    assert dense.box_iou(box, shifted)[0] == pytest.approx(1 / 3)
    assert dense.box_iou(box, box + torch.tensor([[1.0, 0, 0, 0]]))[0] == 0.0


def test_patch_targets_are_object_fractions():
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, :4, :2] = True  # half of patch (0, 0) of a 2x2 grid
    torch.testing.assert_close(dense.patch_targets(masks, (2, 2)), torch.tensor([[[0.5, 0.0], [0.0, 0.0]]]))
    with pytest.raises(ValueError, match="do not tile"):
        dense.patch_targets(masks, (3, 3))


def test_fit_ridge_recovers_a_linear_map_and_folds_the_standardisation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, 6, generator=g) * 3 + 2  # 50 images, 4 rows each, D = 6
    w, b = torch.randn(6, 2, generator=g), torch.tensor([0.5, -1.0])
    head, _ = dense.fit_ridge(x, x @ w + b, penalties=(1e-6,))
    torch.testing.assert_close(head(x), x @ w + b, atol=1e-4, rtol=0)
    noisy = x @ w + b + 5 * torch.randn(50, 4, 2, generator=g)
    _, chosen = dense.fit_ridge(x[:8], noisy[:8])  # few noisy images: the held-out images want a penalty
    assert chosen > 0.1


# --------------------------------------------------------------------------- on the bundled model
@pytest.fixture(scope="module")
def bundled_tokens():
    from vitcore.io.checkpoint import load_checkpoint

    if not BUNDLED_CHECKPOINT.exists():
        pytest.skip("bundled model missing (make checkpoint)")
    model, _ = load_checkpoint(BUNDLED_CHECKPOINT)
    before = [p.detach().clone() for p in model.parameters()]
    size = model.config.image_size  # the model's own input size and patch grid
    train = dense.shapes_split(500, size, split="train")
    val = dense.shapes_split(200, size, split="val")
    tokens = dense.extract_tokens(model, train.images), dense.extract_tokens(model, val.images)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the model was only read
    return train, val, *tokens


def test_extract_tokens_match_forward_features(bundled_tokens):
    from vitcore.io.checkpoint import load_checkpoint

    model, _ = load_checkpoint(BUNDLED_CHECKPOINT)
    _, val, _, tokens = bundled_tokens
    with torch.no_grad():
        features = model.forward_features(val.images[:8])
    torch.testing.assert_close(tokens.patches[:8], features[:, 1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens.cls[:8], features[:, 0], atol=1e-5, rtol=0)
    T = 1 + model.config.num_patches
    assert tokens.cls_attention.shape == (200, model.config.heads, T)
    torch.testing.assert_close(tokens.cls_attention.sum(-1), torch.ones(200, model.config.heads), atol=1e-5, rtol=0)


def test_segmentation_probe_reaches_miou_06_on_shapes_validation(bundled_tokens):
    train, val, tokens_train, tokens_val = bundled_tokens
    probe = dense.train_segmentation_probe(tokens_train, train.masks)
    pred = probe.predict(tokens_val.patches)
    assert pred.shape == val.masks.shape and pred.shape[0] == 200
    scores = dense.segmentation_miou(pred, val.masks)
    print(f"segmentation probe on the bundled model: {scores}")
    assert scores["miou"] >= 0.6
    # a probe that ignores the tokens (all background) scores far lower: the tokens carry the mask
    blank = dense.segmentation_miou(torch.zeros_like(pred), val.masks)["miou"]
    assert scores["miou"] > blank + 0.2


def test_unsupervised_masks_have_the_input_size_and_keep_60_percent(bundled_tokens):
    tokens = bundled_tokens[3]
    tokens = dense.Tokens(tokens.patches[:50], tokens.cls[:50], tokens.cls_attention[:50], tokens.grid,
                          tokens.patch_size, tokens.num_prefix_tokens)
    pca = dense.pca_masks(tokens)
    attention = dense.attention_masks(tokens, keep=0.6)
    P = tokens.patch_size
    size = (tokens.grid[0] * P, tokens.grid[1] * P)
    assert pca.shape == attention.shape == (50, *size) and pca.dtype == attention.dtype == torch.bool
    # whole patches: the kept ones hold >= 60 % of the head-averaged CLS attention to the patches, and
    # dropping the weakest kept patch would leave less than 60 %
    row = tokens.cls_attention.mean(1)[:, 1:]  # (n, N)
    row = row / row.sum(-1, keepdim=True)
    patches = dense.attention_masks(tokens, keep=0.6, upsampling="nearest")[:, ::P, ::P].flatten(1)  # (n, N)
    kept = (row * patches).sum(-1)
    weakest = torch.where(patches, row, torch.full_like(row, 2.0)).amin(-1)
    assert (kept >= 0.6 - 1e-5).all() and (kept - weakest < 0.6).all()


def test_box_heads_are_scored_against_the_average_box(bundled_tokens):
    train, val, tokens_train, tokens_val = bundled_tokens
    average = dense.box_iou(train.boxes.mean(0).expand(len(val), 4), val.boxes).mean()
    for name, a, b in (("CLS", tokens_train.cls, tokens_val.cls), ("mean", tokens_train.mean_patch,
                                                                   tokens_val.mean_patch)):
        head = dense.train_box_head(a, train.boxes)
        iou = dense.box_iou(head.predict(b), val.boxes).mean()
        print(f"box head on the {name} token: mean IoU {iou:.3f} (average box {average:.3f})")
        assert iou > average  # the frozen token carries some of the "where"


def test_mlp_mixer_models_have_no_attention_mask():
    model = VisionTransformer(ViTConfig.preset("micro", token_mixer="mlp")).eval()
    tokens = dense.extract_tokens(model, torch.randn(3, 3, 32, 32))
    assert tokens.cls_attention is None and tokens.patches.shape == (3, 16, 96)
    with pytest.raises(ValueError, match="no mixing matrix"):
        dense.attention_masks(tokens)
    assert dense.pca_masks(tokens).shape == (3, 32, 32)


@pytest.mark.parametrize("mixer", ["linear", "retention", "pooling"])
def test_every_matrix_mixer_gives_a_cls_row(mixer):
    model = VisionTransformer(ViTConfig.preset("micro", token_mixer=mixer)).eval()
    tokens = dense.extract_tokens(model, torch.randn(2, 3, 32, 32))
    assert tokens.cls_attention.shape == (2, 4, 17)
    assert dense.attention_masks(tokens).shape == (2, 32, 32)
