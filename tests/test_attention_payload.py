"""Attention packed for the browser (explorer.attention_payload): error bounds, sizes, the budget fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.attention_payload import (
    BUDGET_BYTES,
    CLS_ROW,
    attention_payload,
    dequantise_rows,
    encode_image,
    matrix_payload,
    next_selection,
    quantise_rows,
    view_bytes,
)


def softmax_attention(heads: int, tokens: int, seed: int = 0, sharpness: float = 4.0) -> np.ndarray:
    """(heads, T, T) rows that sum to 1, peaked like a trained model's (some rows put most mass on CLS)."""
    g = np.random.default_rng(seed)
    scores = g.normal(size=(heads, tokens, tokens)) * sharpness
    scores[:, : tokens // 3, 0] += 8.0  # a third of the queries look mostly at CLS
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def test_quantised_rows_come_back_within_a_255th_of_their_maximum():
    a = softmax_attention(3, 50)
    codes, low, step = quantise_rows(a)
    assert codes.dtype == np.uint8 and codes.shape == a.shape and low.shape == a.shape[:2]
    back = dequantise_rows(codes, low, step)
    err = np.abs(back - a).max(-1)
    assert (err <= a.max(-1) / 255).all()
    assert (err <= a.max(-1) / 510 + 1e-7).all()  # rounding: half a step
    assert (low == 0).all() and (back[a == 0] == 0).all()  # non-negative rows start at an exact 0


def test_signed_rows_keep_their_sign_and_range():
    g = np.random.default_rng(1)
    cos = np.tanh(g.normal(size=(4, 30)) * 2).astype(np.float32)
    codes, low, step = quantise_rows(cos)
    back = dequantise_rows(codes, low, step)
    span = np.maximum(cos.max(-1), 0) - np.minimum(cos.min(-1), 0)
    assert (np.abs(back - cos).max(-1) <= span / 510 + 1e-7).all()
    assert np.allclose(back.min(-1), cos.min(-1), atol=1e-6)


def test_quantise_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        quantise_rows(np.array([[0.5, np.nan]]))


def test_dinov2_at_224_px_fits_the_budget_and_every_map_comes_back():
    heads, grid = 6, (16, 16)
    a = softmax_attention(heads, 257, seed=2)
    image = encode_image(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8))
    p = attention_payload(torch.from_numpy(a).half(), grid, 1, image=image)  # the trace keeps float16 maps
    assert not p.fallback and p.rows == (CLS_ROW, *range(256))
    maps_bytes = p.nbytes - len(image)
    assert maps_bytes == view_bytes(6, 257, 256, 1) == 6 * 257 * 256 + 6 * 257 * 12
    assert 0.39e6 < maps_bytes < 0.42e6 and p.nbytes <= BUDGET_BYTES  # "about 0.4 MB"
    a16 = torch.from_numpy(a).half().float().numpy()
    decoded = p.decode()  # (H, 257, 16, 16)
    want = a16[:, [0, *range(1, 257)], 1:].reshape(heads, 257, 16, 16)
    rowmax = want.reshape(heads, 257, -1).max(-1)
    assert (np.abs(decoded - want).reshape(heads, 257, -1).max(-1) <= rowmax / 255).all()
    assert np.array_equal(p.extras()[..., 0], a16[:, :, 0])  # the CLS weight travels exactly
    assert p.row(None) == 0 and p.row(37) == 38


def test_dinov2_at_448_px_falls_back_to_one_query_and_says_so():
    heads, grid = 6, (32, 32)
    a = softmax_attention(heads, 1025, seed=3, sharpness=2.0)
    p = attention_payload(a, grid, 1, query=517)
    assert p.fallback and p.rows == (CLS_ROW, 517)
    assert p.full_bytes == view_bytes(6, 1025, 1024, 1) > 6e6 and p.nbytes < 30_000
    note = p.fallback_note()
    assert "6.4 MB" in note and "1.0 MB budget" in note and "from the server" in note
    decoded = p.decode()[:, p.row(517)].reshape(heads, -1)
    want = a[:, 1 + 517, 1:]
    assert (np.abs(decoded - want).max(-1) <= want.max(-1) / 255).all()
    with pytest.raises(ValueError, match="ask for query 3"):
        p.row(3)


def test_payload_maps_match_the_model_capture(micro_config):
    """Against the reference: the page's own per-query maps (explorer.traces.query_maps) of a real capture."""
    from explorer.traces import query_maps
    from vitcore import VisionTransformer, capture

    model = VisionTransformer(micro_config).eval()
    trace = capture(model, torch.randn(1, 3, *micro_config.image_size))
    prefix, grid = trace.num_prefix_tokens, tuple(trace.grid)
    layer = micro_config.depth - 1
    p = attention_payload(trace.attention[trace.layer_slot(layer), 0], grid, prefix)
    decoded = p.decode()
    for q in (None, 0, 5, grid[0] * grid[1] - 1):
        want = query_maps(trace, layer, q)  # (H, gh, gw)
        got = decoded[:, p.row(q)]
        rowmax = want.reshape(len(want), -1).max(-1)
        assert (np.abs(got - want).reshape(len(want), -1).max(-1) <= rowmax / 255).all()


def test_position_similarity_is_packed_signed_and_falls_back_at_448():
    g = np.random.default_rng(4)
    v = g.normal(size=(64, 8))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sim = (v @ v.T).astype(np.float32)  # cosines in [-1, 1], 1 on the diagonal
    p = matrix_payload(sim, (8, 8))
    assert not p.fallback and p.signed and p.panels == 1 and p.rows == tuple(range(64))
    back = p.decode()[0].reshape(64, 64)
    assert np.abs(back - sim).max() <= 2 / 510 + 1e-6
    big = matrix_payload(np.zeros((1, 1024, 1024), np.float32), (32, 32), query=40)
    assert big.fallback and big.rows == (40,) and big.full_bytes > BUDGET_BYTES


@pytest.mark.parametrize("bad", [np.zeros((2, 10, 10)), np.zeros((2, 17, 16))])
def test_wrong_shapes_are_refused_with_the_expected_shape(bad):
    with pytest.raises(ValueError, match="prefix"):
        attention_payload(bad, (4, 4), 1)


def test_query_outside_the_grid_is_refused():
    with pytest.raises(ValueError, match=r"outside 0\.\.15"):
        attention_payload(np.zeros((2, 17, 17)), (4, 4), 1, query=16)


def test_the_same_content_gives_the_same_id_and_other_content_another():
    a = softmax_attention(2, 17)
    assert attention_payload(a, (4, 4), 1).id == attention_payload(a.copy(), (4, 4), 1).id
    assert attention_payload(a, (4, 4), 1).id != attention_payload(a[::-1].copy(), (4, 4), 1).id


def test_selection_is_resent_only_when_the_page_overrides_the_browser():
    rec = next_selection(None, (0, 0), None)
    assert (rec["query"], rec["head"], rec["nonce"]) == (0, 0, 1)
    rec = next_selection(rec, (0, 0), None)  # nothing happened: the same arguments
    assert rec["nonce"] == 1
    # the user pins patch 9 of head 2 in the browser; the page follows (on_pick): nothing to resend
    rec = next_selection(rec, (9, 2), {"query": 9, "head": 2, "seq": "a:1"})
    assert (rec["query"], rec["head"], rec["nonce"]) == (0, 0, 1)
    rec = next_selection(rec, (9, 2), {"query": 9, "head": 2, "seq": "a:1"})
    assert rec["nonce"] == 1
    # the user types 4 in the number input: the browser must adopt it, once
    rec = next_selection(rec, (4, 2), {"query": 9, "head": 2, "seq": "a:1"})
    assert (rec["query"], rec["head"], rec["nonce"]) == (4, 2, 2)
    rec = next_selection(rec, (4, 2), {"query": 9, "head": 2, "seq": "a:1"})
    assert rec["nonce"] == 2
    # the user pins 7 (browser shows 7), leaves the page; the component's value is dropped; on return
    # a new frame is mounted and must be told the page's query even though it equals the last pick
    rec = next_selection(rec, (7, 2), {"query": 7, "head": 2, "seq": "a:2"})
    assert rec["nonce"] == 2
    rec = next_selection(rec, (7, 2), None)
    assert (rec["query"], rec["nonce"]) == (7, 3)
