"""Attention: every head's map for a query you click, rollout, gradients, distance, the arithmetic."""

from __future__ import annotations

import numpy as np
import streamlit as st

from explorer import figures as F
from explorer import state as S
from explorer.traces import attention_steps, mask_shares, query_maps
from pages._ui import (
    cached_distance,
    cached_gradient_rollout,
    cached_rollout,
    clickable,
    model_input,
    model_view,
    page_inputs,
    patch_picker,
    sync_url,
    trace_for,
)

spec, loaded, key, image, mask = page_inputs("3 · Attention")
cfg = loaded.config
trace = trace_for(spec, loaded, key, image)
grid = tuple(trace.grid)
N = grid[0] * grid[1]
prefix = trace.num_prefix_tokens
resized = model_view(loaded, image)

for k, top in ((S.LAYER, cfg.depth - 1), (S.HEAD, cfg.heads - 1)):
    if not isinstance(st.session_state.get(k), int) or not 0 <= st.session_state[k] <= top:
        st.session_state[k] = 0
c1, c2, c3 = st.columns(3)
layer = c1.slider("Layer", 0, cfg.depth - 1, key=S.LAYER)
head = c2.slider("Head", 0, cfg.heads - 1, key=S.HEAD)
query = patch_picker("Query patch (or click the image)", S.QUERY, N, c3)
sync_url(S.LAYER, S.HEAD, S.QUERY)

maps = query_maps(trace, layer, query)  # (H, gh, gw)
left, right = st.columns(2)
with left:
    clickable(F.heatmap_over_image(resized, maps[head], highlight=query, name="attention",
                                   title=f"layer {layer}, head {head}: where patch {query} looks"),
              S.ATTN_CLICK, S.QUERY)
    st.download_button("This map (CSV)", F.to_csv(maps[head]), f"attention_l{layer}_h{head}_q{query}.csv")
with right:
    st.plotly_chart(F.head_maps(maps, [f"head {h}" for h in range(cfg.heads)], cols=4),
                    key="attn_heads")
    st.caption(f"All {cfg.heads} heads of layer {layer} for query patch {query}: each head learns its own "
               "notion of relevance.")

st.subheader("What the CLS token attends to")
cls_maps = query_maps(trace, layer, None)
st.plotly_chart(F.head_maps(cls_maps, [f"head {h}" for h in range(cfg.heads)], cols=6), key="attn_cls")

st.subheader("Attention rollout (Abnar & Zuidema 2020)")
r1, r2 = st.columns(2)
fusion = r1.selectbox("Fuse heads by", ["mean", "max", "min"], key=S.ROLLOUT_FUSION)
discard = r2.slider("Discard the lowest attention weights (ratio)", 0.0, 0.95, step=0.05, key=S.ROLLOUT_DISCARD)
rollout = cached_rollout(spec, key, fusion, float(discard), trace)
names = loaded.class_names
g1, g2 = st.columns(2)
g1.plotly_chart(F.heatmap_over_image(resized, rollout, title=f"rollout ({fusion}, discard {discard:.0%})",
                                     name="rollout"), key="attn_rollout")
maps = {"rollout": rollout}
if names:
    probs = trace.logits[0].softmax(-1).numpy()
    target = st.selectbox("Class for the gradient rollout (Chefer et al. 2021)", range(len(names)),
                          index=int(np.argmax(probs)), format_func=lambda i: f"{names[i]} ({probs[i]:.1%})",
                          key=S.ATTN_TARGET)
    maps["gradient rollout"] = cached_gradient_rollout(spec, key, loaded, model_input(loaded, image), int(target))
    g2.plotly_chart(F.heatmap_over_image(resized, maps["gradient rollout"], name="relevance",
                                         title=f"gradient rollout for '{names[target]}'"), key="attn_grad")
else:
    g2.info("This model has no classifier head (DINOv2 learned from photos without labels), so there is no "
            "class to explain: the gradient rollout needs one. Teach it your own classes on the Teach page; "
            "the class-agnostic maps on this page work as they are.")
if mask is not None:
    shares = mask_shares(maps, mask)
    area = float(np.asarray(mask, dtype=bool).mean())
    st.info("Share of the map inside the object: " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
            + f" (the object covers {area:.0%} of the image, so {area:.0%} is chance).")
with st.expander("Rollout in one paragraph"):
    st.markdown(
        "One layer's attention says how tokens mix in that layer, but the residual connection also passes "
        "each token on unchanged. Rollout adds the identity for that, renormalises, and multiplies the "
        "matrices of all layers: the row of CLS then says how much each input patch flowed into CLS. "
        "Gradient rollout weighs each attention weight by its gradient for one class, so the map changes "
        "with the class you ask about."
    )

st.subheader("Mean attention distance (Fig. 7, right)")
distance = cached_distance(spec, key, cfg.patch_size, trace)
st.plotly_chart(F.distance_figure(distance, cfg.patch_size), key="attn_distance")
st.caption("How far, in pixels, each head looks on average. In trained ViTs some early heads already look far "
           "(global), others stay local like a convolution; deeper layers look far.")

st.subheader(f"The arithmetic for query patch {query}, layer {layer}, head {head}")
steps = attention_steps(trace, layer, head, prefix + query)
d = cfg.head_dim
label = {0: "CLS"} | ({1: "DIST"} if prefix == 2 else {})
rows = [{"key token": label.get(t, f"patch {t - prefix}"), "q·k / √d": round(s, 4), "softmax weight": round(w, 4)}
        for t, s, w in steps.top]
st.markdown(f"1. scores: $s_j = q \\cdot k_j / \\sqrt{{d}}$ with $d = {d}$, so $1/\\sqrt{{d}} = {steps.scale:.4f}$")
st.markdown("2. weights: $a_j = e^{s_j} / \\sum_i e^{s_i}$, which sum to "
            f"{steps.weights.sum():.6f}; the largest five:")
st.dataframe(rows, hide_index=True)
st.markdown(f"3. output: $\\sum_j a_j v_j$, a vector of {d} numbers; first four: "
            + ", ".join(f"{v:.4f}" for v in steps.output[:4]))
st.caption(f"Recomputed from the captured q, k, v; max difference to the model's own weights: "
           f"{np.abs(steps.weights - steps.captured_weights).max():.1e}")
with st.expander("Keys and locks, and why divide by √d"):
    st.markdown(
        "Think of every token holding a **key** (what it offers) and sending a **query** (what it looks "
        "for). The dot product q·k is large when the two point the same way, like a key fitting a lock. "
        "With d random components of unit variance the dot product has variance d, so without the "
        "1/√d the scores grow with the head width, the softmax saturates to one token and its gradients "
        "vanish. **Multi-head** attention runs several such lookups in parallel on D/heads-wide slices, so "
        "one head can track colour while another tracks position."
    )

st.subheader("Inside a block: LayerNorm and the MLP")
with st.expander("LayerNorm vs BatchNorm"):
    st.markdown(
        "Every block normalises its input twice (before attention and before the MLP). **LayerNorm** "
        "normalises each token on its own, over its D features: mean 0, variance 1, then a learned scale and "
        "shift. **BatchNorm**, the CNN default, normalises each feature over the batch, so a token's output "
        "depends on the other images in the batch and on running statistics that differ between training and "
        "inference. LayerNorm needs neither, works for any batch size (even one image in this app), and "
        "suits sequences whose length changes with the image size."
    )
with st.expander("The MLP and its activation: GELU vs ReLU vs ELU", expanded=False):
    st.markdown(
        f"After attention mixes information *between* tokens, the MLP transforms each token on its own: "
        f"D = {cfg.dim} → {cfg.mlp_dim} → {cfg.dim} with a **GELU** in between. ReLU cuts negative inputs to "
        "zero with a kink at 0; ELU curves smoothly to −1; GELU weighs each input by the probability that a "
        "standard normal variable is below it, x·Φ(x): smooth everywhere, slightly negative just left of 0, "
        "and the activation BERT and ViT use."
    )
    st.plotly_chart(F.activation_curves(), key="attn_activations")
