"""Fine-tune: a minute-long fine-tune in class, with live curves and the attention timeline."""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
import streamlit as st

from explorer import figures as F
from explorer import state as S
from explorer.images import fit_to_size
from explorer.jobs import FINISHED, default_manager
from explorer.training import FinetuneRequest, resume_request, run_finetune, warm_shapes
from pages._ui import current_image, current_model, enter_page
from vitcore.data import SHAPE_CLASSES
from vitcore.train import STRATEGIES

enter_page()
st.title("6 · Fine-tune")
manager = default_manager()
owner = st.session_state.setdefault("_owner", uuid.uuid4().hex)
picked, img = current_model(), current_image()
if picked is None:
    st.stop()
spec, loaded = picked
cfg = loaded.config
warm_shapes(cfg.image_size)  # render the default Shapes set while the teacher sets up
job = manager.get(st.session_state.get(S.TRAIN_JOB))
busy = job is not None and job.status not in FINISHED

with st.container(border=True):
    st.markdown(f"Starting model: **{loaded.label}** ({cfg.image_size[0]}×{cfg.image_size[1]}, "
                f"P={cfg.patch_size}); change it in the sidebar.")
    source = st.radio("Data", ["shapes", "zip", "folder", "collected"], horizontal=True, key="ft_source",
                      format_func={"shapes": "Shapes (synthetic)", "zip": "Zip of class folders",
                                   "folder": "Folder on the server", "collected": "Collect per class"}.get)
    c1, c2 = st.columns(2)
    classes = c1.multiselect("Shapes classes", list(SHAPE_CLASSES), default=list(SHAPE_CLASSES), key="ft_classes")
    per_class = c2.slider("Shapes images per class", 20, 2000, 1000, step=20, key="ft_per_class")
    zip_file = st.file_uploader("Zip of class folders (class_a/…, class_b/…)", type=["zip"], key="ft_zip")
    folder = st.text_input("Folder under EXPLORER_DATA_ROOT (e.g. hymenoptera_data)", key="ft_folder")
    st.caption("Collect per class: name up to three classes and upload or photograph at least two images each.")
    collect_cols = st.columns(3)
    collected_inputs = []
    for i, col in enumerate(collect_cols):
        name = col.text_input(f"Class {i + 1}", key=f"ft_cname_{i}")
        files = col.file_uploader(f"Images of class {i + 1}", type=["png", "jpg", "jpeg", "webp"],
                                  accept_multiple_files=True, key=f"ft_cfiles_{i}")
        collected_inputs.append((name, files))
    s1, s2, s3, s4 = st.columns(4)
    strategy = s1.selectbox("Strategy", list(STRATEGIES), key="ft_strategy",
                            format_func={"full": "full", "head": "head only (linear probe)",
                                         "last_k": "last k blocks", "lora": "LoRA"}.get)
    last_k = s2.slider("k (last blocks)", 1, cfg.depth, min(2, cfg.depth), key="ft_last_k")
    budget = s3.slider("Time budget (s)", 10, 300, 60, step=10, key="ft_budget")
    epochs = s4.slider("Epochs", 1, 100, 15, key="ft_epochs")
    s5, s6, s7 = st.columns(3)
    lr = s5.number_input("Learning rate (0 = strategy default)", 0.0, 1.0, 0.003, step=0.0005, format="%.4f",
                         key="ft_lr")
    augment = s6.checkbox("Augment training images", key="ft_augment")
    baseline = s7.checkbox("Also train a ResNet-18 baseline", key="ft_baseline")
    start = st.button("Start fine-tuning", type="primary", disabled=busy, key="ft_start")

if start:
    collected = {}
    for name, files in collected_inputs:
        if name.strip() and files:
            collected[name.strip()] = [f.getvalue() for f in files]
    request = FinetuneRequest(
        loaded=loaded, source=source, shapes_classes=tuple(classes), shapes_per_class=int(per_class),
        zip_bytes=zip_file.getvalue() if zip_file is not None else None, folder=folder, collected=collected,
        strategy=strategy, last_k=int(last_k), epochs=int(epochs), max_seconds=float(budget),
        lr=float(lr) or None, augment=bool(augment), baseline=bool(baseline),
        probe_image=img[1] if img is not None else None,
    )
    problems = []
    if source == "shapes" and len(classes) < 2:
        problems.append("Pick at least two Shapes classes.")
    if source == "zip" and zip_file is None:
        problems.append("Upload a zip of class folders first.")
    if source == "collected" and len(collected) < 2:
        problems.append("Name at least two classes and add at least two images to each.")
    if problems:
        st.error(" ".join(problems))
    else:
        job = manager.submit(owner, lambda j, r=request: run_finetune(j, r), max_seconds=float(budget) * 3 + 120)
        st.session_state[S.TRAIN_JOB] = job.id
        st.session_state[S.TRAIN_REQUEST] = request


def resume(checkpoint: bytes) -> None:
    """Start a new job from a stopped job's checkpoint with the same data and settings."""
    previous = st.session_state.get(S.TRAIN_REQUEST)
    if previous is None:
        return
    request = resume_request(previous, checkpoint)
    job = manager.submit(owner, lambda j, r=request: run_finetune(j, r), max_seconds=request.max_seconds * 3 + 120)
    st.session_state[S.TRAIN_JOB] = job.id
    st.session_state[S.TRAIN_REQUEST] = request


def use_model(data: bytes, name: str) -> None:
    """Make a fine-tuned checkpoint the current model of every page in this session."""
    st.session_state[S.SESSION_MODELS][name] = data
    st.session_state[S.SESSION_MODEL_NAME] = name
    st.session_state[S.MODEL_KIND] = "session"


@st.fragment(run_every=timedelta(seconds=1))
def live() -> None:
    """Polls the job: progress, curves, timeline; ends polling work once the job has finished."""
    job = manager.get(st.session_state.get(S.TRAIN_JOB))
    if job is None:
        st.info("Set up the data and press **Start fine-tuning**. Training runs in the background; "
                "you can keep using the other pages.")
        return
    job.touch()
    snap = job.snapshot()
    status = snap["status"]
    place = manager.position(job)
    if status == "queued":
        st.warning(f"Waiting for the trainer: place {place} in line.")
    eta = f", about {snap['eta']:.0f} s left" if snap["eta"] else ""
    st.progress(snap["progress"], text=f"{status}: {snap['message']} ({snap['elapsed']:.0f} s{eta})")
    if status not in FINISHED and st.button("Stop", key="ft_stop"):
        job.stop()
    steps = [h for h in snap["history"] if h.get("kind") == "step"]
    epochs = [h for h in snap["history"] if h.get("kind") == "epoch"]
    if steps:
        last = steps[-1]
        m1, m2, m3, m4 = st.columns(4)
        m1.metric("loss", f"{last['loss']:.3f}")
        m2.metric("val accuracy", f"{epochs[-1]['val_accuracy']:.1%}" if epochs else "–")
        m3.metric("learning rate", f"{last['lr']:.2e}")
        m4.metric("images/s", f"{last['images_per_second']:.0f}")
        c1, c2 = st.columns(2)
        c1.plotly_chart(F.curves_figure(steps, ("loss",), "training loss per step", x="step"), key="ft_steps")
        c2.plotly_chart(F.curves_figure(epochs, ("accuracy", "val_accuracy"), "accuracy per epoch"),
                        key="ft_epochs_fig")
    artifacts = snap["artifacts"]
    names = artifacts.get("class_names", [])
    timeline = artifacts.get("timeline", [])
    if timeline and img is not None:
        resized = np.asarray(fit_to_size(img[1], cfg.image_size))
        pick = 0
        if len(timeline) > 1:
            pick = st.slider("Attention timeline (epoch)", 0, len(timeline) - 1, len(timeline) - 1, key="ft_timeline")
        else:
            st.caption("Attention timeline: before training; a point is added after every epoch.")
        point = timeline[pick]
        t1, t2 = st.columns(2)
        t1.plotly_chart(F.heatmap_over_image(resized, point["rollout"], title=f"rollout after epoch {point['epoch']}",
                                             name="rollout"), key="ft_tl_rollout")
        t2.plotly_chart(F.heatmap_over_image(resized, point["head"], name="attention",
                                             title=f"CLS attention, last layer, head 0, epoch {point['epoch']}"),
                        key="ft_tl_head")
    if snap["status"] == "failed":
        st.error(f"Training stopped: {snap['message']}. The app keeps working; the last good checkpoint "
                 "(if any) is below.")
    ckpt = artifacts.get("best_checkpoint")
    if ckpt:
        d1, d2 = st.columns(2)
        d1.download_button("Download the best checkpoint (.safetensors)", ckpt, "finetuned.safetensors",
                           key="ft_download")
        if status in FINISHED:
            d2.button("Use this model on every page", key="ft_use", on_click=use_model,
                      args=(ckpt, f"fine-tune #{job.id} ({snap['status']})"))
        if status in ("stopped", "failed") and st.session_state.get(S.TRAIN_REQUEST) is not None:
            d2.button("Resume from this checkpoint", key="ft_resume", on_click=resume, args=(ckpt,))
    summary = artifacts.get("summary")
    if summary:
        _results(summary, names, img)


def _results(summary: dict, names: list[str], img) -> None:
    st.subheader("Results")
    st.markdown(f"Best validation accuracy **{summary['best_val_accuracy']:.1%}** in {summary['seconds']:.0f} s "
                f"({summary['images_per_second']:.0f} images/s, {summary['trainable_params']:,} trainable "
                f"parameters; ended: {summary['stop_reason']}).")
    if "baseline" in summary:
        b = summary["baseline"]
        st.markdown(f"ResNet-18 baseline, same data and budget: **{b['best_val_accuracy']:.1%}** in "
                    f"{b['seconds']:.0f} s ({b['params'] / 1e6:.1f} M parameters).")
    c1, c2 = st.columns(2)
    c1.plotly_chart(F.confusion_figure(summary["confusion"], names), key="ft_confusion")
    with c2:
        grid = summary["grid"]
        cols = st.columns(4)
        for i, item in enumerate(grid):
            ok = item["true"] == item["pred"]
            cols[i % 4].image(item["image"], width="stretch",
                              caption=f"{'✅' if ok else '❌'} {names[item['pred']]} (true: {names[item['true']]})")
    if "before" in summary and img is not None:
        resized = np.asarray(fit_to_size(img[1], cfg.image_size))
        b1, b2 = st.columns(2)
        for col, key in ((b1, "before"), (b2, "after")):
            point = summary[key]
            top = int(np.argmax(point["probs"]))
            label = names[top] if top < len(names) else str(top)
            col.plotly_chart(F.heatmap_over_image(resized, point["rollout"], name="rollout",
                                                  title=f"{key}: predicts {label} ({point['probs'][top]:.0%})"),
                             key=f"ft_{key}")


live()
