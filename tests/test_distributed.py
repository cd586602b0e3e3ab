"""torchrun: two CPU processes train data-parallel on Shapes and end with identical weights."""

from __future__ import annotations

import os
import subprocess
import sys


def test_two_processes_end_with_identical_weights(tmp_path):
    hashes = tmp_path / "hashes"
    env = dict(os.environ, VITCORE_STATE_HASH_DIR=str(hashes), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vitcore",
           "train", "--data", "shapes", "--per-class-train", "8", "--per-class-val", "2", "--batch-size", "4",
           "--epochs", "2", "--device", "cpu", "--quiet", "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    digests = {p.name: p.read_text() for p in hashes.iterdir()}
    assert set(digests) == {"rank0.sha256", "rank1.sha256"}
    assert digests["rank0.sha256"] == digests["rank1.sha256"]
    # rank 0 alone saved; its file holds exactly the replicated weights
    from vitcore.cli import state_hash
    from vitcore.io.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tmp_path / "out" / "model.safetensors")
    assert state_hash(model) == digests["rank0.sha256"]
    # each rank saw half the data: 40 images / 2 ranks / batch 4 = 5 steps per epoch
    import json

    history = json.loads((tmp_path / "out" / "history.json").read_text())["history"]
    assert [h["step"] for h in history] == [5, 10]
