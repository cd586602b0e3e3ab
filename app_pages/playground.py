"""Architecture playground: change P, heads, depth, D, image size, MLP ratio and see what it costs."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app_pages._ui import cached_playground, cached_playground_attention, current_image
from explorer import figures as F
from explorer import state as S
from explorer.pipeline import cost_summary
from explorer.registry import heading
from vitcore import ViTConfig
from vitcore.data.images import Preprocessing
from vitcore.model.config import TOKEN_MIXERS, valid_patch_sizes
from vitcore.model.mixers import MIXER_LABELS

st.title(heading("playground"))
st.caption("Two random-initialised ViTs side by side. Costs are computed exactly; latency is measured on this "
           "server (batch 1, median of 3); attention maps are on your image (random weights, so look at the "
           "shape of the maps, not their meaning).")
img = current_image()
DEFAULTS = {"a": dict(patch=16, heads=3, depth=4, dim=192, size=224, mlp=4.0),
            "b": dict(patch=32, heads=3, depth=4, dim=192, size=224, mlp=4.0)}


def controls(side: str, col) -> ViTConfig | None:
    d = DEFAULTS[side]
    size = col.select_slider("Image size", [32, 64, 96, 128, 160, 192, 224, 256, 384], d["size"],
                             key=S.playground_key(side, "size"))
    patches = [p for p in valid_patch_sizes((size, size)) if p >= 4]  # P = 2 is for the sidebar's extremes
    patch = col.select_slider("Patch size", patches, d["patch"] if d["patch"] in patches else patches[-1],
                              key=S.playground_key(side, f"patch_{size}"))
    dim = col.select_slider("Width D", [64, 96, 128, 192, 256, 384, 512, 768], d["dim"],
                            key=S.playground_key(side, "dim"))
    heads_ok = [h for h in (1, 2, 3, 4, 6, 8, 12, 16) if dim % h == 0]
    heads = col.select_slider("Heads", heads_ok, d["heads"] if d["heads"] in heads_ok else heads_ok[-1],
                              key=S.playground_key(side, f"heads_{dim}"))
    depth = col.slider("Depth", 1, 12, d["depth"], key=S.playground_key(side, "depth"))
    mlp = col.select_slider("MLP ratio", [1.0, 2.0, 3.0, 4.0], d["mlp"], key=S.playground_key(side, "mlp"))
    mixer = col.selectbox("Token mixer", TOKEN_MIXERS, key=S.playground_key(side, "mixer"),
                          format_func=MIXER_LABELS.get, help="Replace attention: see how the costs grow with tokens")
    try:
        return ViTConfig(image_size=size, patch_size=patch, dim=dim, heads=heads, depth=depth, mlp_ratio=mlp,
                         num_classes=10, token_mixer=mixer)
    except ValueError as exc:
        col.error(str(exc))
        return None


cols = st.columns(2)
configs = {side: controls(side, col) for side, col in zip("ab", cols)}
for (side, config), col in zip(configs.items(), cols):
    if config is None:
        continue
    cost = cost_summary(config)
    try:
        result = cached_playground(config)  # the guard first: refused settings say why and build nothing
    except ValueError as exc:
        col.error(f"{side.upper()}: {exc}")
        continue
    col.markdown(f"**{side.upper()}: P={config.patch_size}, D={config.dim}, {config.depth} blocks × "
                 f"{config.heads} heads, {config.image_size[0]} px**")
    m1, m2, m3 = col.columns(3)
    m1.metric("parameters", f"{cost['params'] / 1e6:.2f} M")
    m2.metric("tokens", int(cost["tokens"]))
    m3.metric("GFLOPs", f"{cost['gflops']:.2f}")
    m4, m5, m6 = col.columns(3)
    m4.metric("attention maps", f"{cost['attention_mib']:.1f} MiB")
    m5.metric("attention share", f"{cost['attention_share']:.0%}")
    m6.metric("latency here", f"{result['latency_ms']:.1f} ms")
    if img is not None:
        resized = np.asarray(Preprocessing.for_model(config.image_size).fit_image(img[1]))
        cls_attn = cached_playground_attention(config, img[0], img[1])
        if cls_attn is None:
            col.info("The token-mixing MLP has no token-to-token matrix to show: it mixes with fixed weights.")
        else:
            title = "CLS row of the last layer's mixing matrix, mean of heads"
            col.plotly_chart(F.heatmap_over_image(resized, cls_attn, title=title, name="weight"),
                             key=S.playground_key(side, "map"))
