"""Attention: every head's map for a query you click, rollout, gradients, distance, the arithmetic."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import streamlit as st

from app_pages._cache import cached_figure, cached_payload, cached_steps, cached_view_jpeg
from app_pages._ui import (
    cached_distance,
    cached_gradient_rollout,
    cached_rollout,
    count_run,
    model_input,
    model_view,
    page_inputs,
    patch_picker,
    show_error,
    sync_url,
    trace_for,
)
from components.attention_grid import attention_grid
from explorer import figures as F
from explorer import state as S
from explorer.attention_payload import attention_fits, attention_payload
from explorer.texts import page_name
from explorer.traces import mask_shares, query_maps

spec, loaded, key, image, mask = page_inputs("attention")
cfg = loaded.config
size = tuple(loaded.preprocessing.crop_size)
try:
    trace = trace_for(spec, loaded, key, image)
except ValueError as exc:  # the guard: too large for the memory budget or the time limit
    show_error(exc, "Attention")
    st.stop()
if trace.attention is None:  # a token-mixing MLP mixes with fixed weights: no token-to-token matrix
    st.info(f"{loaded.label} mixes tokens with an MLP (MLP-Mixer): there is no token-to-token matrix to show. "
            f"Pick another token mixer in the sidebar, or see the {page_name('beyond')} page.")
    st.stop()
attention_mixer = cfg.token_mixer == "attention"
grid = tuple(trace.grid)
N = grid[0] * grid[1]
prefix = trace.num_prefix_tokens


def view():
    """The image as the model sees it: made only when a cached figure or the maps' JPEG is missing."""
    return model_view(loaded, image)


def make_input():
    """The model input: made only when the cache misses (a class's reruns find everything cached)."""
    return model_input(loaded, image)


fig_key = (spec, key, size)  # cached figures are shared by every session looking at this image and model
token_names = {0: "CLS"} | ({1: "DIST"} if cfg.distilled else {}) | {
    cfg.num_pos_prefix_tokens + r: f"REG {r}" for r in range(cfg.num_registers)}
prefix_names = tuple(token_names.get(t, f"prefix {t}") for t in range(prefix))


def index_slider(label: str, state_key: str, count: int, container) -> int:
    """A 0..count-1 slider kept in range; a model with one block (or head) has nothing to choose."""
    value = st.session_state.get(state_key)
    if value == -1:  # the default: the last one (a trained model's last layer shows the most)
        st.session_state[state_key] = count - 1
    elif not isinstance(value, int) or not 0 <= value < count:
        st.session_state[state_key] = 0
    if count == 1:
        container.caption(f"{label}: 0 (this model has only one)")
        return 0
    return int(container.slider(label, 0, count - 1, key=state_key))


def pin(query: int, head: int) -> None:
    """The browser pinned a patch or picked a head (a click on its map): the URL and the arithmetic follow."""
    st.session_state[S.QUERY] = query
    st.session_state[S.HEAD] = head


@st.fragment
def query_view() -> None:
    """Everything a layer, a head or a pinned patch changes; hovering a patch is drawn in the browser alone.

    The maps of one layer go to the browser once (explorer.attention_payload, about 0.4 MB for
    DINOv2 at 224 px); hovering redraws every head there with no script run, and only a click
    (debounced) reruns this part, for the arithmetic below. The trace is looked up again (a cache
    hit) rather than held by this function: an idle session must not keep an evicted trace alive.
    """
    count_run(fragment=True)
    trace = trace_for(spec, loaded, key, image)
    c1, c2 = st.columns(2)
    layer = index_slider("Layer", S.LAYER, cfg.depth, c1)
    query = patch_picker("Query patch (or click the image)", S.QUERY, N, c2)
    if not 0 <= st.session_state.get(S.HEAD, 0) < cfg.heads:
        st.session_state[S.HEAD] = 0
    head = int(st.session_state.get(S.HEAD, 0))  # picked by clicking a head's map (or the URL)
    sync_url(S.LAYER, S.HEAD, S.QUERY)

    attention = trace.attention[trace.layer_slot(layer), 0]  # (H, T, T), float16 for large settings
    H = attention.shape[0]
    jpeg = cached_view_jpeg(spec, key, size, view)
    fits = attention_fits(H, grid, prefix, len(jpeg))
    payload = cached_payload((spec, key, size, layer, *(() if fits else (query,))), lambda: attention_payload(
        attention, grid, prefix, query=query, prefix_names=prefix_names, image=jpeg))
    attention_grid(
        payload, key=S.ATTN_GRID, query=query, head=head, panel_labels=[f"head {h}" for h in range(H)],
        big_title=f"layer {layer}, {{panel}}: where patch {{query}} looks",
        caption=f"{loaded.label}, layer {layer}: hover a patch to see where it looks in all {H} heads (drawn in "
                "your browser); click a patch to pin it, or a head's map to show that head large. The "
                "arithmetic below follows your clicks.",
        cols=3 if H <= 6 else 4, cls_title="What the CLS token attends to", on_pick=pin)
    maps = query_maps(trace, layer, query)  # (H, gh, gw): one row of each head's map
    st.download_button("This map (CSV)", F.to_csv(maps[head]), f"attention_l{layer}_h{head}_q{query}.csv",
                       on_click="ignore")

    if not attention_mixer:
        st.caption(f"This model mixes tokens with {cfg.token_mixer} instead of softmax attention: the maps above "
                   "are its mixing matrix, so there is no q·k/√d arithmetic to show.")
        return
    st.subheader(f"The arithmetic for query patch {query}, layer {layer}, head {head}")
    steps = cached_steps(spec, key, size, layer, head, prefix + query, loaded, make_input)
    d = cfg.head_dim
    rows = [{"key token": token_names.get(t, f"patch {t - prefix}"), "q·k / √d": round(s, 4),
             "softmax weight": round(w, 4)} for t, s, w in steps.top]
    st.markdown(f"1. scores: $s_j = q \\cdot k_j / \\sqrt{{d}}$ with $d = {d}$, so $1/\\sqrt{{d}} = {steps.scale:.4f}$")
    st.markdown("2. weights: $a_j = e^{s_j} / \\sum_i e^{s_i}$, which sum to "
                f"{steps.weights.sum():.6f}; the largest five:")
    st.dataframe(pa.Table.from_pylist(rows), hide_index=True)  # an Arrow table is sent as it is (no pandas)
    st.markdown(f"3. output: $\\sum_j a_j v_j$, a vector of {d} numbers; first four: "
                + ", ".join(f"{v:.4f}" for v in steps.output[:4]))
    st.caption(f"Recomputed from q, k, v of this layer and head; max difference to the model's own weights: "
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


query_view()

if cfg.token_mixer not in ("attention", "linear"):  # rollout and distance need rows that sum to 1
    st.info(f"Rollout and attention distance assume each row of the mixing matrix sums to 1, as softmax and "
            f"linear attention do; {cfg.token_mixer} mixing does not, so they are left out here.")
else:
    st.subheader("Attention rollout (Abnar & Zuidema 2020)")
    r1, r2 = st.columns(2)
    fusion = r1.selectbox("Fuse heads by", ["mean", "max", "min"], key=S.ROLLOUT_FUSION)
    discard = r2.slider("Discard the lowest attention weights (ratio)", 0.0, 0.95, step=0.05, key=S.ROLLOUT_DISCARD)
    rollout = cached_rollout(spec, key, fusion, float(discard), trace)
    names = loaded.class_names
    g1, g2 = st.columns(2)
    g1.plotly_chart(cached_figure((*fig_key, "rollout", fusion, float(discard)), lambda: F.heatmap_over_image(
        view(), rollout, title=f"rollout ({fusion}, discard {discard:.0%})", name="rollout")), key=S.ATTN_ROLLOUT_FIG)
    maps = {"rollout": rollout}
    if names:
        probs = trace.logits[0].softmax(-1).numpy()
        target = st.selectbox("Class for the gradient rollout (Chefer et al. 2021)", range(len(names)),
                              index=int(np.argmax(probs)), format_func=lambda i: f"{names[i]} ({probs[i]:.1%})",
                              key=S.ATTN_TARGET)
        maps["gradient rollout"] = relevance = cached_gradient_rollout(spec, key, loaded, make_input, int(target))
        g2.plotly_chart(cached_figure((*fig_key, "gradient", int(target)), lambda: F.heatmap_over_image(
            view(), relevance, name="relevance", title=f"gradient rollout for '{names[target]}'")),
            key=S.ATTN_GRADIENT_FIG)
    else:
        g2.info("This model has no classifier head (DINOv2 learned from photos without labels), so there is no "
                "class to explain: the gradient rollout needs one. Teach it your own classes on the "
                f"{page_name('teach')} page; "
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
    st.plotly_chart(cached_figure((*fig_key, "distance"), lambda: F.distance_figure(distance, cfg.patch_size)),
                    key=S.ATTN_DISTANCE_FIG)
    st.caption("How far, in pixels, each head looks on average. In trained ViTs some early heads already look far "
               "(global), others stay local like a convolution; deeper layers look far.")

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
    st.plotly_chart(cached_figure(("activations",), F.activation_curves), key=S.ATTN_ACTIVATIONS_FIG)

del trace  # the cache holds it; the page's globals (kept by the fragment) must not
