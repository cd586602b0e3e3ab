"""Precomputed Beyond reports: stored and read back exactly, found by the model's fingerprint, refused when stale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer import beyond as B
from explorer import beyond_assets as A
from explorer.models import ModelSpec, build_model

SIZES = (200, 40)


@pytest.fixture(scope="module")
def bundled():
    loaded = build_model(ModelSpec("bundled"))
    pre = loaded.preprocessing
    size = tuple(pre.crop_size)
    report = B.dense_report(loaded.model, pre.normalization, size, sizes=SIZES)
    return loaded, report, A.fingerprint(loaded.model, pre.normalization, size, SIZES)


def test_a_stored_report_reads_back_exactly(bundled, tmp_path):
    loaded, report, key = bundled
    pre = loaded.preprocessing
    path = A.save_report(report, tmp_path / "r.npz", key)
    back = A.load_report(path, key, pre.normalization, tuple(pre.crop_size))
    assert back is not None
    assert back.mask_rows == report.mask_rows and back.box_rows == report.box_rows
    assert back.grid == report.grid and back.n_train == report.n_train and back.grid_ceiling == report.grid_ceiling
    assert list(back.masks) == list(report.masks)
    for method, mask in report.masks.items():
        assert torch.equal(back.masks[method], mask)
    for source, boxes in report.boxes.items():
        assert torch.equal(back.boxes[source], boxes)
    assert torch.equal(back.val.pixels, report.val.pixels) and torch.equal(back.val.masks, report.val.masks)
    assert torch.allclose(back.val.images, report.val.images, atol=1e-6)
    # the probe works on any image as before: the same masks on a new input
    x = torch.randn(1, 3, *pre.crop_size, generator=torch.Generator().manual_seed(1))
    mine, theirs = B.image_masks(back, loaded.model, x), B.image_masks(report, loaded.model, x)
    assert all(np.array_equal(mine[m], theirs[m]) for m in theirs)
    assert back.image_jaccard(3) == report.image_jaccard(3)


def test_the_fingerprint_follows_weights_preprocessing_and_sizes(bundled):
    loaded, _, key = bundled
    pre = loaded.preprocessing
    size = tuple(pre.crop_size)
    assert A.fingerprint(loaded.model, pre.normalization, size, SIZES) == key
    assert A.fingerprint(loaded.model, pre.normalization, size, (100, 40)) != key
    assert A.fingerprint(loaded.model, ((0.4,) * 3, (0.5,) * 3), size, SIZES) != key
    other = build_model(ModelSpec("bundled")).model
    with torch.no_grad():
        other.head.bias.add_(1e-3)  # a copy: the shared model is never changed
    assert A.fingerprint(other, pre.normalization, size, SIZES) != key


def test_foreign_damaged_or_missing_files_are_computed_again(bundled, tmp_path):
    loaded, report, key = bundled
    pre = loaded.preprocessing
    size = tuple(pre.crop_size)
    path = A.save_report(report, tmp_path / "r.npz", key)
    assert A.load_report(path, "0" * 64, pre.normalization, size) is None  # written for other weights
    assert A.load_report(tmp_path / "absent.npz", key, pre.normalization, size) is None
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert A.load_report(tmp_path / "bad.npz", key, pre.normalization, size) is None
    assert A.stored_report(loaded.model, pre.normalization, size, folder=tmp_path) is None  # default sizes: no file


def test_the_default_models_have_their_reports_in_assets():
    """The app's first visit reads these (python -m explorer.beyond_assets writes them)."""
    loaded = build_model(ModelSpec("bundled"))
    pre = loaded.preprocessing
    report = A.stored_report(loaded.model, pre.normalization, tuple(pre.crop_size))
    assert report is not None, "run `python -m explorer.beyond_assets` and commit assets/beyond/"
    assert report.mask_rows[0]["mIoU"] >= 0.6
