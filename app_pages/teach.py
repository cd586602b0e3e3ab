"""Teach it your classes: a few photos per class, a linear head on DINOv2 in seconds, and why it decides."""

from __future__ import annotations

import uuid
from datetime import timedelta

import streamlit as st

from app_pages._ui import cached_model, show_error
from explorer import fewshot as T
from explorer import figures as F
from explorer import state as S
from explorer.images import ImageError, load_image
from explorer.jobs import FINISHED, default_manager
from explorer.models import ModelSpec
from explorer.registry import heading
from explorer.texts import page_name

st.title(heading("teach"))
st.caption("Photograph or upload a few examples of 2 to 6 things; DINOv2 ViT-S/14 (frozen) describes every photo, "
           "a linear head learns your classes in seconds, and the maps below show what it looks at.")
ss = st.session_state
manager = default_manager()
owner = ss.setdefault(S.OWNER, uuid.uuid4().hex)
if not isinstance(ss.get(S.TEACH_COLLECTION), T.ClassCollection):
    ss[S.TEACH_COLLECTION] = T.ClassCollection()
collection: T.ClassCollection = ss[S.TEACH_COLLECTION]
try:
    backbone_spec = ModelSpec("dinov2", overrides=(("input_size", 224),))
    backbone = cached_model(backbone_spec)  # shared, read-only
except (ValueError, OSError, RuntimeError) as exc:
    show_error(exc, "DINOv2")
    st.stop()
job = manager.get(ss.get(S.TEACH_JOB))
busy = job is not None and job.status not in FINISHED

# ----------------------------------------------------------------------------- 1. collect
st.subheader("1 · Collect")
source = st.radio("Photos from", ["collect", "zip", "folder"], horizontal=True, key=S.TEACH_SOURCE,
                  format_func={"collect": "Camera or uploads, per class", "zip": "A zip of class folders",
                               "folder": "A folder on the server"}.get)


def replace_collection(loader, *args) -> None:
    try:
        new, messages = loader(*args)
    except ValueError as exc:
        ss[S.TEACH_MESSAGES] = [str(exc)]
        return
    ss[S.TEACH_COLLECTION] = new
    ss[S.TEACH_MESSAGES] = messages


if source == "zip":
    z1, z2 = st.columns([3, 1])
    zipped = z1.file_uploader("Zip of class folders (cat/…, dog/…)", type=["zip"], key=S.TEACH_ZIP)
    if z2.button("Load the zip", disabled=zipped is None, key=S.TEACH_ZIP_LOAD):
        replace_collection(T.collection_from_zip, zipped.getvalue())
        st.rerun()
elif source == "folder":
    f1, f2 = st.columns([3, 1])
    folder = f1.text_input("Folder under EXPLORER_DATA_ROOT", key=S.TEACH_FOLDER)
    if f2.button("Load the folder", disabled=not folder.strip(), key=S.TEACH_FOLDER_LOAD):
        replace_collection(T.collection_from_folder, folder.strip())
        st.rerun()

messages = ss.pop(S.TEACH_MESSAGES, None) or []


def remove_class(uid: int) -> None:
    index = collection.index_of(uid)
    if index is not None:
        message = collection.remove_class(index)
        if message:
            ss[S.TEACH_MESSAGES] = [message]


def remove_image(uid: int, key: str) -> None:
    index = collection.index_of(uid)
    if index is not None:
        collection.remove(index, key)


def add_camera_shot(uid: int) -> None:
    index, shot = collection.index_of(uid), ss.get(S.teach_key("camera", uid))
    if index is not None and shot is not None:
        message = collection.add(index, f"camera:{shot.file_id}", shot.getvalue(), "camera")
        if message:
            ss[S.TEACH_MESSAGES] = [message]


columns = st.columns(min(3, len(collection.classes)))
for i, cls in enumerate(collection.classes):
    with columns[i % len(columns)].container(border=True):
        name_key = S.teach_key("name", cls.uid)
        if name_key not in ss:
            ss[name_key] = cls.name
        collection.rename(i, st.text_input(f"Class {i + 1} name", key=name_key, max_chars=T.MAX_CLASS_NAME))
        files = st.file_uploader(f"Photos of class {i + 1}", type=["png", "jpg", "jpeg", "webp", "bmp", "gif"],
                                 accept_multiple_files=True, key=S.teach_key("files", cls.uid))
        if files:
            messages += collection.add_many(i, [(f"upload:{f.file_id}", f.name, f.getvalue) for f in files])
        if st.toggle("Use the camera", key=S.teach_key("use_camera", cls.uid)):
            st.camera_input(f"Photo for class {i + 1}", key=S.teach_key("camera", cls.uid))
            st.button("Add this photo", key=S.teach_key("add_shot", cls.uid), on_click=add_camera_shot,
                      args=(cls.uid,))
        count = len(cls.images)
        need = max(0, T.MIN_IMAGES - count)
        st.caption(f"{count} photo(s)" + (f" · {need} more needed" if need else " · ready")
                   + f" · at most {T.MAX_IMAGES_PER_CLASS}")
        thumbs = st.columns(5)
        for j, (key, item) in enumerate(list(cls.images.items())):
            with thumbs[j % 5]:
                st.image(item.thumb, width="stretch")
                st.button("✕", key=S.teach_key("del", f"{cls.uid}_{key}"), help="delete this photo",
                          on_click=remove_image, args=(cls.uid, key))
        if len(collection.classes) > T.MIN_CLASSES:
            st.button("Remove this class", key=S.teach_key("drop", cls.uid), on_click=remove_class, args=(cls.uid,))

if len(collection.classes) < T.MAX_CLASSES and st.button("Add a class", key=S.TEACH_ADD_CLASS):
    collection.add_class()
    st.rerun()
for message in messages:
    st.warning(message)
st.caption("Class names are labels: shown exactly as typed (never as HTML or formatting) and never used as file "
           "names. Photos are kept at most 448 px on their long side, in this session only.")

# ----------------------------------------------------------------------------- 2. train
st.subheader("2 · Train")
t1, t2, t3 = st.columns(3)
strategy = t1.selectbox("What learns", list(T.STRATEGIES), key=S.TEACH_STRATEGY, format_func=T.STRATEGIES.get)
last_k = t2.slider("k (last blocks)", 1, 12, 2, key=S.TEACH_LAST_K, disabled=strategy != "last_k")
epochs = t3.slider("Epochs (deeper strategies)", 1, 30, 8, key=S.TEACH_EPOCHS, disabled=strategy == "linear")
if st.button("Start", type="primary", disabled=busy, key=S.TEACH_START):
    try:
        names, images = collection.request_data()
    except ValueError as exc:
        show_error(exc, "Not ready")
    else:
        request = T.TeachRequest(backbone=backbone.model, preprocessing=backbone.preprocessing, class_names=names,
                                 images=images, strategy=strategy, last_k=int(last_k), epochs=int(epochs),
                                 backbone_spec=backbone_spec)  # the worker loads its own copy from the spec
        job = T.submit_teach(manager, owner, request)
        ss[S.TEACH_JOB] = job.id
        ss.pop(S.TEACH_RESULT, None)
        ss.pop(S.TEACH_EXPLAINED, None)


@st.fragment(run_every=timedelta(seconds=1))
def live() -> None:
    """Polls this session's teach job; takes its result into the session when it is done."""
    job = manager.get(ss.get(S.TEACH_JOB))
    if job is None:
        st.info("Collect at least 5 photos per class and press **Start**. Training runs in the shared background "
                "queue; stay on this page until it is done (a closed page stops its job).")
        return
    job.touch()
    manager.sweep()
    snap = job.snapshot()
    if snap["status"] == "queued":
        st.warning(f"Waiting for the trainer: place {manager.position(job)} in line.")
    st.progress(snap["progress"], text=f"{snap['status']}: {snap['message']} ({snap['elapsed']:.1f} s)")
    if snap["status"] not in FINISHED and st.button("Stop", key=S.TEACH_STOP):
        job.stop()
    if snap["status"] == "failed":
        st.error(f"Training failed: {snap['message']}. The app keeps working; change the photos and try again.")
    result = ss.get(S.TEACH_RESULT)
    if snap["status"] == "done" and (result is None or result["job"] != job.id):
        taken = T.take_result(job, backbone.model)
        if taken is not None:
            ss[S.TEACH_RESULT] = taken
            st.rerun(scope="app")


live()

# ----------------------------------------------------------------------------- 3. results and predictions
result = ss.get(S.TEACH_RESULT)
if result is None:
    st.stop()
summary, model = result["summary"], result["model"]
names = summary["class_names"]
labels = [T.plain_label(n) for n in names]
st.subheader("3 · What it learnt")
m1, m2, m3, m4 = st.columns(4)
m1.metric("validation accuracy", f"{summary['val_accuracy']:.0%}")
m2.metric("photos (train / validation)", f"{summary['train_images']} / {summary['val_images']}")
m3.metric("features (s)", f"{summary['feature_seconds']:.1f}")
m4.metric("head (s)", f"{summary['head_seconds']:.2f}")
if summary["augmented"]:
    st.caption(f"Few photos: each training photo also counted mirrored and zoomed in "
               f"({summary['train_features']} training features).")
c1, c2 = st.columns(2)
confusion = F.confusion_figure(summary["confusion"], labels)
confusion.update_xaxes(type="category")
confusion.update_yaxes(type="category")
c1.plotly_chart(confusion, key=S.TEACH_CONFUSION_FIG)
with c2:
    mistakes = summary["mistakes"]
    if not mistakes:
        st.success("No validation photo was misclassified.")
    else:
        st.markdown("**Misclassified validation photos**")
        cols = st.columns(4)
        for k, item in enumerate(mistakes[:16]):
            with cols[k % 4]:
                st.image(item["image"], width="stretch")
                st.text(f"{names[item['true']]} → {names[item['pred']]}")

st.subheader("4 · Try it")
p1, p2 = st.columns([1, 2])
how = p1.radio("Photo from", ["upload", "camera"], key=S.TEACH_PREDICT_SOURCE, horizontal=True)
shot = (p1.file_uploader("A new photo", type=["png", "jpg", "jpeg", "webp"], key=S.TEACH_PREDICT_UPLOAD)
        if how == "upload" else p1.camera_input("A new photo", key=S.TEACH_PREDICT_CAMERA))
if shot is not None:
    key = f"{result['job']}:{shot.file_id}"
    explained = ss.get(S.TEACH_EXPLAINED)
    if explained is None or explained[0] != key:
        try:
            image = load_image(shot.getvalue(), max_side=T.TEACH_SIDE)
            with st.spinner("Predicting and computing the maps…"):
                explained = (key, T.explain(model, backbone.model, backbone.preprocessing, image))
            ss[S.TEACH_EXPLAINED] = explained
        except (ImageError, ValueError) as exc:
            show_error(exc, "Photo")
            explained = None
    if explained is not None:
        out = explained[1]
        top = out["target"]
        p2.plotly_chart(F.topk_bars(out["probs"], labels, k=len(names), title="probabilities"), key=S.TEACH_PROBS_FIG)
        p2.text(f"Prediction: {names[top]} ({out['probs'][top]:.0%})")
        view = out["view"]
        h1, h2, h3 = st.columns(3)
        h1.plotly_chart(F.heatmap_over_image(view, out["rollout"], name="relevance",
                                             title=f"gradient rollout for {labels[top]}"), key=S.TEACH_ROLLOUT_FIG)
        h2.plotly_chart(F.heatmap_over_image(view, out["occlusion"], name="logit drop", colorscale="RdBu_r",
                                             title=f"occlusion: drop of {labels[top]}"), key=S.TEACH_OCCLUSION_FIG)
        h3.plotly_chart(F.heatmap_over_image(view, out["cls_attention"], name="attention",
                                             title="DINOv2 CLS attention (no class)"), key=S.TEACH_CLS_FIG)
        st.caption("Left and middle: what the taught head uses for this class (Chefer et al. relevance; the logit "
                   "drop when each block of 4×4 patches is hidden). Right: where the frozen backbone's CLS token "
                   "looks in its last layer, the same for every class: the features the head reads.")

st.subheader("5 · Keep it")


def use_model() -> None:
    data = T.checkpoint_bytes(model, names, backbone.preprocessing, {"val_accuracy": summary["val_accuracy"]})
    name = f"taught #{result['job']} ({len(names)} classes)"
    ss.setdefault(S.SESSION_MODELS, {})[name] = data
    ss[S.SESSION_MODEL_NAME] = name
    ss[S.MODEL_KIND] = "session"


k1, k2 = st.columns(2)
k1.button("Use this model on every page", key=S.TEACH_USE, on_click=use_model, type="primary")
k2.download_button("Download (.safetensors with the preprocessing record)", key=S.TEACH_DOWNLOAD,
                   data=lambda: T.checkpoint_bytes(model, names, backbone.preprocessing,
                                                   {"val_accuracy": summary["val_accuracy"]}),
                   file_name="taught.safetensors", mime="application/octet-stream")
if ss.get(S.MODEL_KIND) == "session" and str(ss.get(S.SESSION_MODEL_NAME, "")).startswith("taught #"):
    st.caption(f"Every page now uses this model; {page_name('predict')} shows your class names. Pick another model "
               "in the sidebar.")
