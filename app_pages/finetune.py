"""Train from scratch / fine-tune: a minute-long run in class, with live curves and the attention timeline."""

from __future__ import annotations

from datetime import timedelta

import streamlit as st

from app_pages._ui import cached_model, current_model, show_error
from explorer import figures as F
from explorer import state as S
from explorer import training as T
from explorer.jobs import FINISHED, INTERRUPTED, default_manager, new_code
from explorer.models import ModelSpec
from explorer.registry import heading
from explorer.texts import page_name
from explorer.training import FinetuneRequest, resume_request, submit_finetune
from vitcore.data import SHAPE_CLASSES
from vitcore.train import STRATEGIES, FitOptions

st.title(heading("finetune"))
manager, store = default_manager(), default_manager().store
code = T.session_code(st.session_state, st.query_params)
T.restore_session(st.session_state, store, code)
picked = current_model()
if picked is None:
    st.stop()
spec, loaded = picked
if spec.kind == "dinov2":  # the automatic photo model is taught on the Teach page; this page trains a small ViT
    spec = ModelSpec("preset", preset="micro")
    loaded = cached_model(spec)
    st.caption(f"The sidebar's DINOv2 is taught on the {page_name('teach')} page; here a micro ViT learns "
               "Shapes from random weights in about a minute. Pick another model in the sidebar to fine-tune it.")
cfg = loaded.config
job = manager.get(st.session_state.get(S.TRAIN_JOB)) or manager.find(code)
if job is not None:
    st.session_state[S.TRAIN_JOB] = job.id
    job.touch()
record = store.record(code) if job is None and code else None  # a job of an earlier server run
busy = job is not None and job.status not in FINISHED
st.session_state[S.TRAIN_BUSY] = busy


def submit(request: FinetuneRequest) -> None:
    """Queue a job for this session (its code goes into the URL, so a reload finds it again)."""
    global code
    if code is None:
        code = new_code()
        st.session_state[S.SESSION_CODE] = code
    st.query_params["code"] = code
    new = submit_finetune(manager, code, request, code=code)  # trains in a worker process, not in this one
    st.session_state[S.TRAIN_JOB] = new.id
    st.session_state[S.TRAIN_REQUEST] = request
    st.session_state.pop(S.TRAIN_FIGS, None)


with st.container(border=True):
    st.markdown(f"Starting model: **{loaded.label}** ({cfg.image_size[0]}×{cfg.image_size[1]}, "
                f"P={cfg.patch_size}); change it in the sidebar (a random-initialised preset trains from scratch).")
    source = st.radio("Data", ["shapes", "zip", "folder", "collected"], horizontal=True, key=S.FT_SOURCE,
                      format_func={"shapes": "Shapes (synthetic)", "zip": "Zip of class folders",
                                   "folder": "Folder on the server", "collected": "Collect per class"}.get)
    c1, c2 = st.columns(2)
    classes = c1.multiselect("Shapes classes", list(SHAPE_CLASSES), default=list(SHAPE_CLASSES), key=S.FT_CLASSES)
    per_class = c2.slider("Shapes images per class", 20, 2000, 1000, step=20, key=S.FT_PER_CLASS)
    zip_file = st.file_uploader("Zip of class folders (class_a/…, class_b/…)", type=["zip"], key=S.FT_ZIP)
    folder = st.text_input("Folder under EXPLORER_DATA_ROOT (e.g. hymenoptera_data)", key=S.FT_FOLDER)
    st.caption("Collect per class: name up to three classes and upload or photograph at least two images each.")
    collect_cols = st.columns(3)
    collected_inputs = []
    for i, col in enumerate(collect_cols):
        name = col.text_input(f"Class {i + 1}", key=S.finetune_class_key("name", i))
        files = col.file_uploader(f"Images of class {i + 1}", type=["png", "jpg", "jpeg", "webp"],
                                  accept_multiple_files=True, key=S.finetune_class_key("files", i))
        collected_inputs.append((name, files))
    s1, s2, s3, s4 = st.columns(4)
    strategy = s1.selectbox("Strategy", list(STRATEGIES), key=S.FT_STRATEGY,
                            format_func={"full": "full", "head": "head only (linear probe)",
                                         "last_k": "last k blocks", "lora": "LoRA"}.get)
    last_k = s2.slider("k (last blocks)", 1, cfg.depth, min(2, cfg.depth), key=S.FT_LAST_K)
    budget = s3.slider("Time budget (s)", 10, 300, 60, step=10, key=S.FT_BUDGET)
    epochs = s4.slider("Epochs", 1, 100, 15, key=S.FT_EPOCHS)
    s5, s6, s7 = st.columns(3)
    lr = s5.number_input("Learning rate (0 = strategy default)", 0.0, 1.0, 0.003, step=0.0005, format="%.4f",
                         key=S.FT_LR)
    augment = s6.checkbox("Augment training images", key=S.FT_AUGMENT)
    baseline = s7.checkbox("Also train a ResNet-18 baseline", key=S.FT_BASELINE)
    warming = T.shapes_warming(cfg.image_size)
    start = st.button("Start fine-tuning", type="primary", disabled=busy, key=S.FT_START,
                      help="Disabled while this session's job runs or waits.")

if start and not busy:
    collected = {}
    for name, files in collected_inputs:
        if name.strip() and files:
            collected[name.strip()] = [f.getvalue() for f in files]
    problems = []
    if source == "shapes" and len(classes) < 2:
        problems.append("Pick at least two Shapes classes.")
    if source == "zip" and zip_file is None:
        problems.append("Upload a zip of class folders first.")
    if source == "collected" and len(collected) < 2:
        problems.append("Name at least two classes and add at least two images to each.")
    try:
        options = FitOptions(strategy=strategy, last_k=int(last_k), epochs=int(epochs), max_seconds=float(budget),
                             lr=float(lr) or None, augment=bool(augment), seed=None)  # no global reseed
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        st.error(" ".join(problems))
    else:
        submit(FinetuneRequest(
            loaded=loaded, source=source, shapes_classes=tuple(classes), shapes_per_class=int(per_class),
            zip_bytes=zip_file.getvalue() if zip_file is not None else None, folder=folder, collected=collected,
            strategy=strategy, last_k=int(last_k), epochs=int(epochs), max_seconds=float(budget),
            lr=float(lr) or None, augment=bool(augment), baseline=bool(baseline), options=options,
        ))
        st.rerun()  # draw Start disabled and begin polling


def resume(checkpoint: bytes) -> None:
    """Start a new job from a stopped job's checkpoint with the same data and settings."""
    previous = st.session_state.get(S.TRAIN_REQUEST)
    try:
        if previous is None and record is not None:
            previous = T.request_from_record(record, loaded)
        if previous is None:
            raise ValueError("the settings of that job are gone: press Start instead")
        submit(resume_request(previous, checkpoint))
    except ValueError as exc:
        show_error(exc, "Resume")
        return
    st.rerun(scope="app")


def use_model(data: bytes, name: str) -> None:
    """Switch the sidebar and every page to a fine-tuned checkpoint (a full rerun redraws the sidebar)."""
    T.use_session_model(st.session_state, store, code, name, data)
    st.rerun(scope="app")


def checkpoint_actions(ckpt: bytes, name: str, finished: bool, resumable: bool) -> None:
    d1, d2, d3 = st.columns(3)
    d1.download_button("Download the best checkpoint (.safetensors)", ckpt, "finetuned.safetensors",
                       key=S.FT_DOWNLOAD)
    if finished and d2.button("Use this model on every page", key=S.FT_USE):
        use_model(ckpt, name)
    if resumable and d3.button("Resume from this checkpoint", key=S.FT_RESUME):
        resume(ckpt)


def figures(snap: dict) -> dict:
    """The job's figures, rebuilt only when the job changed since the last poll (version counter)."""
    cached = st.session_state.get(S.TRAIN_FIGS)
    if cached is not None and cached["key"] == (snap["id"], snap["version"]):
        return cached["figs"]
    steps = [h for h in snap["history"] if h.get("kind") == "step"]
    epochs = [h for h in snap["history"] if h.get("kind") == "epoch"]
    figs = {}
    if steps:
        figs["steps"] = F.curves_figure(steps, ("loss",), "training loss per step", x="step")
        figs["epochs"] = F.curves_figure(epochs, ("accuracy", "val_accuracy"), "accuracy per epoch")
    probe = snap["artifacts"].get("probe")
    for point in snap["artifacts"].get("timeline", []) if probe is not None else []:
        figs[("rollout", point["epoch"])] = F.heatmap_over_image(
            probe, point["rollout"], title=f"rollout after epoch {point['epoch']}", name="rollout")
        figs[("head", point["epoch"])] = F.heatmap_over_image(
            probe, point["head"], name="attention", title=f"CLS attention, last layer, head 0, epoch {point['epoch']}")
    st.session_state[S.TRAIN_FIGS] = {"key": (snap["id"], snap["version"]), "figs": figs}
    return figs


def live() -> None:
    """One poll: heartbeat, progress, curves, timeline; a full rerun once the job has ended."""
    job = manager.get(st.session_state.get(S.TRAIN_JOB))
    if job is None:
        ready = T.shapes_warming(cfg.image_size)
        if source == "shapes" and ready is not None and ready < 1.0:
            st.progress(ready, text="Warming up: rendering the Shapes set once for this server (about "
                                    f"{ready:.0%}); Start works now and waits for it.")
        elif polling:
            st.rerun(scope="app")  # warmed up: stop polling
        if record is not None:
            interrupted(record)
        else:
            st.info("Set up the data and press **Start fine-tuning**. Training runs in the background; "
                    "you can keep using the other pages.")
        return
    job.touch()
    manager.sweep()
    snap = job.snapshot(steps=300)
    status = snap["status"]
    if status in FINISHED and st.session_state.get(S.TRAIN_BUSY):
        st.session_state[S.TRAIN_BUSY] = False
        st.rerun(scope="app")  # enable Start and stop polling
    artifacts = snap["artifacts"]
    if status == "queued":
        st.warning(f"Waiting for the trainer: place {manager.position(job)} in line.")
    warmup = artifacts.get("warmup")
    if status == "running" and warmup is not None and warmup < 1.0:
        st.progress(warmup, text=f"Warming up: rendering the Shapes set (about {warmup:.0%})…")
    left = T.time_left(snap)
    tail = f", about {left:.0f} s left" if left is not None else ""
    st.progress(snap["progress"], text=f"{status}: {snap['message']} ({snap['elapsed']:.0f} s{tail})")
    if code:
        st.caption(f"Session code **{code}**: this page's address keeps it, so a reload finds the job again.")
    if status not in FINISHED and st.button("Stop", key=S.FT_STOP):
        job.stop()
        manager.sweep()
    history = snap["history"]
    steps = [h for h in history if h.get("kind") == "step"]
    figs = figures(snap)
    if steps:
        last = steps[-1]
        val = T.last_val_accuracy(history)
        m1, m2, m3, m4 = st.columns(4)
        m1.metric("loss", f"{last['loss']:.3f}")
        m2.metric("val accuracy", f"{val:.1%}" if val is not None else "–")
        m3.metric("learning rate", f"{last['lr']:.2e}")
        m4.metric("images/s", f"{last['images_per_second']:.0f}")
        c1, c2 = st.columns(2)
        c1.plotly_chart(figs["steps"], key=S.FT_STEPS_FIG)
        c2.plotly_chart(figs["epochs"], key=S.FT_EPOCHS_FIG)
    timeline = artifacts.get("timeline", [])
    if timeline and artifacts.get("probe") is not None:
        pick = len(timeline) - 1
        if len(timeline) > 1:
            pick = st.slider("Attention timeline (epoch)", 0, len(timeline) - 1, len(timeline) - 1, key=S.FT_TIMELINE)
        else:
            st.caption("Attention timeline of a validation image: before training; a point is added after every "
                       "epoch.")
        epoch = timeline[pick]["epoch"]
        t1, t2 = st.columns(2)
        t1.plotly_chart(figs[("rollout", epoch)], key=S.FT_TIMELINE_ROLLOUT_FIG)
        t2.plotly_chart(figs[("head", epoch)], key=S.FT_TIMELINE_HEAD_FIG)
    if status == "failed":
        st.error(f"Training failed: {snap['message']}. The app keeps working; the last good checkpoint "
                 "(if any) is below.")
    ckpt = artifacts.get("best_checkpoint")
    if ckpt:
        resumable = status in ("stopped", "failed") and st.session_state.get(S.TRAIN_REQUEST) is not None
        checkpoint_actions(ckpt, f"fine-tune #{job.id} ({status})", status in FINISHED, resumable)
    summary = artifacts.get("summary")
    if summary and "confusion" in summary:
        results(summary, artifacts.get("class_names", []), artifacts.get("probe"))


def interrupted(record: dict) -> None:
    """A job of an earlier server run, read back from the data directory."""
    status = record.get("status")
    if status == INTERRUPTED:
        st.warning(f"The server restarted while your job ran: {record.get('message', '')}.")
    else:
        st.info(f"Your last job ({status}): {record.get('message', '')}")
    val = T.last_val_accuracy(record.get("history") or [])
    if val is not None:
        st.metric("last val accuracy", f"{val:.1%}")
    ckpt = store.read_bytes(code, "checkpoint.safetensors") if record.get("checkpoint") else None
    if ckpt:
        checkpoint_actions(ckpt, f"fine-tune {code} ({status})", True, True)


def results(summary: dict, names: list[str], probe) -> None:
    st.subheader("Results")
    full = f", **{summary['val_accuracy']:.1%}** on the whole validation split" if "val_accuracy" in summary else ""
    st.markdown(f"Best validation accuracy **{summary['best_val_accuracy']:.1%}**{full} in {summary['seconds']:.0f} s "
                f"({summary['images_per_second']:.0f} images/s, {summary['trainable_params']:,} trainable "
                f"parameters; ended: {summary['stop_reason']}).")
    if "baseline" in summary:
        b = summary["baseline"]
        st.markdown(f"ResNet-18 baseline, same data and budget: **{b['best_val_accuracy']:.1%}** in "
                    f"{b['seconds']:.0f} s ({b['params'] / 1e6:.1f} M parameters).")
    c1, c2 = st.columns(2)
    c1.plotly_chart(F.confusion_figure(summary["confusion"], names), key=S.FT_CONFUSION_FIG)
    with c2:
        cols = st.columns(4)
        for i, item in enumerate(summary["grid"]):
            ok = item["true"] == item["pred"]
            cols[i % 4].image(item["image"], width="stretch",
                              caption=f"{'✅' if ok else '❌'} {names[item['pred']]} (true: {names[item['true']]})")
    if "before" in summary and probe is not None:
        b1, b2 = st.columns(2)
        for col, key, chart in ((b1, "before", S.FT_BEFORE_FIG), (b2, "after", S.FT_AFTER_FIG)):
            point = summary[key]
            top = int(point["probs"].argmax())
            label = names[top] if top < len(names) else str(top)
            col.plotly_chart(F.heatmap_over_image(probe, point["rollout"], name="rollout",
                                                  title=f"{key}: predicts {label} ({point['probs'][top]:.0%})"),
                             key=chart)


# poll only while this session's job runs or waits (or the data warms up): an idle page costs nothing
polling = busy or (source == "shapes" and warming is not None and warming < 1.0)
st.fragment(run_every=timedelta(seconds=1) if polling else None)(live)()
