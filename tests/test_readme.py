"""The README's library tour runs as written: its Python blocks, executed in order in one namespace.

The fine-tune block (20 epochs plus an ignite run) is left to tests/test_train.py; every other
block runs verbatim, with ``photo.jpg`` a real photo from scikit-image in the working folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(markdown: str) -> list[str]:
    """The ```python fenced blocks of a Markdown text, in order."""
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_python_blocks_are_found_in_order():
    text = "a\n```python\nx = 1\n```\nb\n```\nnot python\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]


@pytest.mark.slow  # loads the real DINOv2 (cached conversion) besides the tiny model
def test_the_readme_tour_runs_as_written(tmp_path, monkeypatch):
    from PIL import Image
    from skimage import data

    blocks = python_blocks((ROOT / "README.md").read_text())
    tour = [b for b in blocks if "vitcore" in b and "fit(" not in b and "fit_ignite" not in b]
    assert len(tour) >= 4, "the README lost its tour blocks"
    Image.fromarray(data.chelsea()).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    torch.manual_seed(0)
    for block in tour:
        exec(compile(block, "README.md", "exec"), namespace)  # the README's own code
    # what the tour promises, checked on what it left behind
    assert namespace["logits"].shape == (1, 1000)
    assert namespace["trace"].attention.shape[-1] == namespace["trace"].attention.shape[-2]
    rows = namespace["trace"].attention.sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
    assert namespace["record"].matrix.shape[-1] == namespace["out"].tokens[0].shape[1]
    assert tuple(namespace["x"].shape[-2:]) == (224, 224)  # the Preprocessing block's photo
    assert np.isfinite(namespace["x"].numpy()).all()
