"""DINO views: per-head CLS masks, patch-feature PCA across two images, and artifact tokens."""

from __future__ import annotations

import streamlit as st

from app_pages._ui import cached_samples, model_view, page_inputs, show_error, trace_for
from explorer import dino
from explorer import figures as F
from explorer import state as S
from explorer.texts import page_name

spec, loaded, key, image, _ = page_inputs("dino")
cfg = loaded.config
trace = trace_for(spec, loaded, key, image)
resized = model_view(loaded, image)
if "licence" in loaded.metadata:
    st.caption(str(loaded.metadata["licence"]))

st.subheader("Each head's CLS attention, keeping 60 % of its mass (DINO, Caron et al. 2021)")
attention, masks, kept = dino.attention_mask_maps(trace)
st.plotly_chart(F.head_maps(attention * masks, [f"head {h}: {k:.0%} kept" for h, k in enumerate(kept)], cols=6),
                key=S.DINO_MASKS_FIG)
st.caption("For every head of the last block: the fewest patches that hold 60 % of what the CLS token attends to. "
           "In Caron et al.'s DINO models these masks outline the object without any label. Look at where this "
           "model's heads put theirs: on the object, on parts of it, or on the background (many ViTs park "
           f"attention on a few background patches); the {page_name('trust')} page measures how much such maps "
           "can be believed.")

st.subheader("Patch features in colour (DINOv2, Oquab et al. 2023)")
photos = [name for name in cached_samples() if not name.startswith("shapes:") and f"sample:{name}" != key]
if st.session_state.get(S.DINO_OTHER) not in photos:
    st.session_state[S.DINO_OTHER] = "astronaut" if "astronaut" in photos else photos[0]  # another photo
other_name = st.selectbox("Compare with", photos, key=S.DINO_OTHER)
other = cached_samples()[other_name].image
try:
    other_trace = trace_for(spec, loaded, f"sample:{other_name}", other)
    view_a, view_b = dino.pca_pair(loaded.model, trace, other_trace)
except ValueError as exc:
    show_error(exc, "PCA")
    st.stop()
c1, c2, c3, c4 = st.columns(4)
c1.image(resized, caption="this image", width="stretch")
c2.image(view_a.rgb_image(cfg.patch_size).numpy().clip(0, 1), caption="its parts", width="stretch")
c3.image(model_view(loaded, other), caption=other_name, width="stretch")
c4.image(view_b.rgb_image(cfg.patch_size).numpy().clip(0, 1), caption="its parts", width="stretch")
st.caption(f"The first principal component of the patch tokens, thresholded, is the foreground "
           f"({float(view_a.foreground.float().mean()):.0%} of this image); the next three components, fitted on "
           "both images together, are shown as red, green and blue. Matching colours mean the model describes "
           "those parts alike, e.g. eyes with eyes, across different photos.")

st.subheader("Artifact tokens (Darcet et al. 2023, \"Vision Transformers Need Registers\")")
summary = dino.artifact_summary(trace)
a1, a2 = st.columns(2)
a1.plotly_chart(dino.norms_figure(summary.per_layer_max_ratio), key=S.DINO_NORMS_FIG)
a2.plotly_chart(F.heatmap_over_image(resized, summary.outliers.astype(float), name="outlier",
                                     title="high-norm patch tokens at the last layer"), key=S.DINO_OUTLIERS_FIG)
st.info(summary.verdict)
prefix = trace.num_prefix_tokens
if prefix > 1:
    shares = ", ".join(f"{share:.1%}" for share in summary.prefix_share[1:])
    st.caption(f"This model has {prefix - 1} extra prefix token(s) (registers or distillation); the CLS token "
               f"spends {shares} of its attention on them: the registers soak up the global bookkeeping that "
               "would otherwise sit in high-norm background patches.")
with st.expander("What are artifact tokens, and what do registers change?"):
    st.markdown(
        "Large ViTs trained for a long time learn to recycle a few background patches as scratch space: those "
        "tokens get a much larger norm than the rest, carry global information and attract the CLS token's "
        "attention, which makes attention maps spotty. Darcet et al. add a few extra learned tokens, "
        "*registers*, that give the model that scratch space on purpose, and the artifacts disappear. The chart "
        "above measures the largest token norm per layer on this image; the rule marks a patch when its norm "
        "is far above the median (more than 6 robust standard deviations and twice the median). Load a model "
        "with registers (Hugging Face `facebook/dinov2-small` with registers, or timm `*_reg4_dinov2`) to compare."
    )
st.download_button("Per-head masks (CSV)", F.to_csv(masks.reshape(masks.shape[0], -1).astype(int)),
                   "dino_masks.csv")
