"""Trust jobs: the maps, curves and randomisation check computed in a worker process equal the direct calls."""

from __future__ import annotations

import time

import numpy as np
import pytest

from explorer import trust as T
from explorer import trust_jobs as TJ
from explorer.images import to_tensor
from explorer.jobs import FINISHED, JobManager
from explorer.models import BUNDLED_CHECKPOINT, ModelSpec, build_model
from explorer.samples import shapes_samples
from explorer.specs import digest

STAR = "shapes: star"


@pytest.fixture(scope="module")
def bundled():
    loaded = build_model(ModelSpec("bundled"))
    x = to_tensor(shapes_samples()[STAR].image, loaded.image_size, loaded.mean, loaded.std)
    return loaded, x


@pytest.fixture
def worker_env(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPLORER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("EXPLORER_TRAINING_THREADS", "2")  # the tests' own thread count: the same sums


def finish(job, limit: float = 600.0) -> dict:
    """Poll like the page does (touching the job) until it ends; its snapshot."""
    deadline = time.monotonic() + limit
    while job.status not in FINISHED:
        assert time.monotonic() < deadline, job.snapshot()["message"]
        job.touch()
        time.sleep(0.2)
    return job.snapshot()


def test_a_session_model_passed_by_file_gives_the_maps_and_curves_of_direct_calls(bundled, worker_env, tmp_path):
    loaded, x = bundled
    data = BUNDLED_CHECKPOINT.read_bytes()
    spec = ModelSpec("session", name="taught #1 (5 classes)", digest=digest(data))  # exists only in the session
    path = TJ.checkpoint_reference(spec, data)
    assert path.startswith(str(tmp_path)) and TJ.checkpoint_reference(spec, data) == path  # written once
    target = loaded.class_names.index("star")
    request = TJ.TrustRequest(spec=spec, checkpoint=path, image=x, target=target, methods=list(T.METHODS),
                              fill="blur", steps=8)
    snap = finish(TJ.submit_trust(JobManager(max_running=1), "test", request))
    assert snap["status"] == "done", snap["message"]
    rows = TJ.method_rows(snap)
    assert [r["method"] for r in rows] == list(T.METHODS) and all("curves ✓" in r["progress"] for r in rows)
    maps, curves = TJ.maps_from(snap["artifacts"]), TJ.curves_from(snap["artifacts"])
    for method in T.METHODS:
        direct = T.method_map(loaded, x, target, method, "blur")
        np.testing.assert_allclose(maps[method], direct, rtol=1e-5, atol=1e-6, err_msg=method)
        pair = T.method_curves(loaded, x, target, method, direct, 8, "blur")
        for kind in ("deletion", "insertion"):
            mine = curves[method][kind]
            assert mine.target == target and mine.fill == "blur"
            np.testing.assert_allclose(mine.probabilities.numpy(), pair[kind].probabilities.numpy(), atol=1e-5)
            assert mine.auc == pytest.approx(pair[kind].auc, abs=1e-5)


def test_the_randomisation_job_equals_the_direct_check(bundled, worker_env):
    loaded, x = bundled
    methods = ["gradient-rollout", "random"]
    request = TJ.TrustRequest(spec=ModelSpec("bundled"), image=x, target=4, methods=methods, part="randomization")
    snap = finish(TJ.submit_trust(JobManager(max_running=1), "test", request))
    assert snap["status"] == "done", snap["message"]
    checks = TJ.checks_from(snap["artifacts"])
    for method in methods:
        direct = T.method_randomization(loaded, x, 4, method)
        assert checks[method].stages == direct.stages
        np.testing.assert_allclose(checks[method].spearman[method], direct.spearman[method], atol=1e-6)
        assert checks[method].verdict(method) == direct.verdict(method)
    assert T.randomization_rows(checks)[1]["verdict"].startswith("fails")  # the random map ignores the model


def test_a_bad_target_fails_the_job_with_a_clear_message(bundled, worker_env):
    _, x = bundled
    request = TJ.TrustRequest(spec=ModelSpec("bundled"), image=x, target=99, methods=["occlusion"])
    snap = finish(TJ.submit_trust(JobManager(max_running=1), "test", request))
    assert snap["status"] == "failed"
    assert "target=99 is not a class of this model" in snap["message"] and "0..4" in snap["message"]
    gone = TJ.TrustRequest(spec=ModelSpec("session", name="x", digest="0" * 64), image=x, target=0,
                           methods=["occlusion"], checkpoint="/nonexistent/model.safetensors")
    snap = finish(TJ.submit_trust(JobManager(max_running=1), "test", gone))
    assert snap["status"] == "failed" and "pick the model again" in snap["message"]
    with pytest.raises(ValueError, match="part="):
        TJ.submit_trust(JobManager(max_running=1), "test", TJ.TrustRequest(
            spec=ModelSpec("bundled"), image=x, target=0, methods=["occlusion"], part="everything"))
