"""Shared test set-up: pinned threads and seeds so numbers do not depend on the machine."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The app's traces stay on fp32 in tests (their numbers are compared with fp32 references); the fast
# path (bf16 by default on CPUs with native bf16) is tested in test_fastpath / test_first_paint.
os.environ.setdefault("EXPLORER_FAST_PATH", "off")

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def micro_config():
    from vitcore import ViTConfig

    return ViTConfig.preset("micro")


@pytest.fixture
def hub_dir(tmp_path):
    """torch.hub's cache pointed at an empty temp folder for one test."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)
