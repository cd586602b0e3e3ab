"""The sidebar's logic without Streamlit: settings -> model spec, valid values, URL parsing."""

from __future__ import annotations

import re

import pytest

from explorer import registry, specs
from explorer import state as S
from explorer.models import ModelSpec, digest


class FakeUpload:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def getvalue(self) -> bytes:
        return self.data


def test_preset_spec_snaps_every_slider_to_a_value_it_offers():
    state = {S.MODEL_KIND: "preset", S.PRESET_NAME: "tiny", S.PRESET_IMAGE: 100, S.PRESET_PATCH: 5,
             S.PRESET_DIM: 200, S.PRESET_HEADS: 5, S.PRESET_DEPTH: 40}
    spec, data = specs.spec_from_state(state)
    values = dict(spec.overrides)
    assert data is None and spec.kind == "preset" and spec.preset == "tiny"
    assert values == {"image_size": 96, "patch_size": 4, "dim": 192, "heads": 4, "depth": 12}
    from vitcore import ViTConfig

    ViTConfig.preset("tiny", **values)  # a valid architecture


def test_preset_values_are_the_presets_own_and_valid_together():
    values = specs.preset_values("micro")
    assert values == {S.PRESET_IMAGE: 32, S.PRESET_PATCH: 8, S.PRESET_DIM: 96, S.PRESET_HEADS: 4,
                      S.PRESET_DEPTH: 4}
    assert specs.preset_values("large")[S.PRESET_DEPTH] == 12  # capped at the slider's maximum
    assert specs.patch_options(224) == [2, 4, 7, 8, 14, 16, 28, 32, 56]
    assert specs.head_options(32) == [1, 2, 4, 8, 16]  # 3, 6 and 12 do not divide 32


def test_uploads_and_session_models_are_keyed_by_their_digest():
    spec, data = specs.spec_from_state({S.MODEL_KIND: "checkpoint", S.CHECKPOINT_UPLOAD: FakeUpload(b"abc")})
    assert spec == ModelSpec("checkpoint", digest=digest(b"abc")) and data == b"abc"
    state = {S.MODEL_KIND: "session", S.SESSION_MODEL_NAME: "run 1", S.SESSION_MODELS: {"run 1": b"xyz"}}
    spec, data = specs.spec_from_state(state)
    assert spec.name == "run 1" and spec.digest == digest(b"xyz") and data == b"xyz"


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({S.MODEL_KIND: "checkpoint"}, "Upload a .safetensors"),
        ({S.MODEL_KIND: "session"}, re.escape(f"train one on the “{registry.page('finetune').label}” page")),
        ({S.MODEL_KIND: "hf", S.HF_SOURCE: "  "}, "Hugging Face model id"),
        ({S.MODEL_KIND: "torchvision", S.TORCHVISION_NAME: "../etc"}, "unknown torchvision model"),
        ({S.MODEL_KIND: "<script>"}, "unknown model choice"),
    ],
)
def test_incomplete_or_hostile_choices_say_what_to_do(state, message):
    with pytest.raises(ValueError, match=message):
        specs.spec_from_state(state)


def test_url_settings_keep_only_known_well_formed_values():
    params = {S.LAYER: "3", S.HEAD: "x", S.QUERY: "-1", S.PATCH_SIZE: ["8", "16"], S.SAMPLE_NAME: "chelsea",
              "unknown": "1"}
    assert specs.url_settings(params) == {S.LAYER: 3, S.PATCH_SIZE: 16, S.SAMPLE_NAME: "chelsea"}
    state: dict = {}
    specs.apply_url_settings(state, {S.LAYER: "99999999"})
    assert state == {}


def test_the_preset_token_mixer_reaches_the_spec_and_builds():
    from explorer.models import build_model

    state = {S.MODEL_KIND: "preset", S.PRESET_NAME: "micro", S.PRESET_MIXER: "pooling"}
    spec, _ = specs.spec_from_state(state)
    assert dict(spec.overrides)["token_mixer"] == "pooling"
    loaded = build_model(spec)
    assert loaded.config.token_mixer == "pooling" and "token_mixer=pooling" in loaded.label
    state[S.PRESET_MIXER] = "<script>"  # not a mixer: the paper's attention
    assert "token_mixer" not in dict(specs.spec_from_state(state)[0].overrides)
