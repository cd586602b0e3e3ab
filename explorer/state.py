"""Every ``st.session_state`` key the app uses, in one place, with its default.

Pages never spell a key as a literal string: they import it from here, so a typo is an
ImportError rather than a silent fresh default.
"""

from __future__ import annotations

from typing import Any

# sidebar: image input
IMAGE_SOURCE = "image_source"  # "sample" | "upload" | "camera"
SAMPLE_NAME = "sample_name"  # name in the sample gallery
UPLOAD = "image_upload"  # st.file_uploader widget
CAMERA = "image_camera"  # st.camera_input widget

# session bookkeeping
URL_LOADED = "_url_loaded"  # the URL's settings were applied once for this session
OWNER = "_owner"  # random id of this browser session (owner of its training jobs)

# sidebar: model choice
MODEL_KIND = "model_kind"  # see explorer.models.MODEL_KINDS
SIMPLE_MODEL_KINDS = ("bundled",)  # kinds that need no further setting
DINO_SIZE = "dinov2_input_size"  # input side of DINOv2: 224 (16x16 patches) or 448 (32x32)
PRESET_NAME = "preset_name"
PRESET_PATCH = "preset_patch"
PRESET_HEADS = "preset_heads"
PRESET_DEPTH = "preset_depth"
PRESET_DIM = "preset_dim"
PRESET_IMAGE = "preset_image"
PRESET_MIXER = "preset_mixer"  # token mixer of the random preset: attention or a replacement
CHECKPOINT_UPLOAD = "checkpoint_upload"
SESSION_MODELS = "session_models"  # name -> checkpoint bytes fine-tuned in this session
SESSION_MODEL_NAME = "session_model_name"
TORCHVISION_NAME = "torchvision_name"
DOWNLOAD = "download_weights"  # button: fetch the selected torchvision / Hugging Face weights
HF_SOURCE = "hf_source"

# page widgets
PATCH_SIZE = "patches_patch_size"
EMB_LAYER = "emb_layer"  # Embeddings: tokens after this block
EMB_GRID = "emb_grid"  # Embeddings: the position-similarity maps in the browser (components/attention_grid)
LAYER = "attention_layer"
HEAD = "attention_head"
QUERY = "attention_query"  # patch index of the query token
ATTN_GRID = "attn_grid"  # Attention: every head's maps in the browser; a pinned patch sets QUERY and HEAD
ATTN_TARGET = "attn_target"  # Attention: class of the gradient rollout
ROLLOUT_FUSION = "rollout_fusion"
ROLLOUT_DISCARD = "rollout_discard"
TOPK = "predict_topk"
MASKED_PATCHES = "predict_masked"
PRED_CLICK = "pred_click"  # Predict: clickable image that masks patches
PRED_FILL = "pred_fill"
PRED_TARGET = "pred_target"
DINO_OTHER = "dino_other"  # DINO views: the second photo of the joint PCA
BEYOND_IMAGE = "beyond_image"  # Beyond: Shapes validation image shown
BEYOND_MIXER = "beyond_mixer"  # Beyond: token mixer whose mixing matrix is shown
BEYOND_GRID = "beyond_grid"  # Beyond: the mixing maps in the browser (hover a query patch)
TRUST_CLASS = "trust_class"  # Trust: class to explain
TRUST_FILL = "trust_fill"  # Trust: what removed patches show
TRUST_STEPS = "trust_steps"  # Trust: steps per curve
TRUST_RUN = "trust_run"  # Trust: (spec, image key, class, fill, steps) of the last "compute" click
TRUST_RANDOMIZE = "trust_randomize"  # Trust: (spec, image key, class) of the last randomisation click
TRUST_STRIP_METHOD = "trust_strip_method"  # Trust: method shown in the randomisation strip
TRUST_REFERENCE = "trust_reference"  # Trust: photo the similarity target compares with ("" = the photo itself)
TRUST_JOBS = "trust_jobs"  # Trust: {"maps" | "randomization": (run, job id)} of this session's trust jobs


def component_record_key(key: str) -> str:
    """Key of what was last sent to the browser component ``key`` (explorer.attention_payload.next_selection)."""
    return f"_sent_{key}"


def playground_key(side: str, name: str) -> str:
    """Key of one playground control of side "a" or "b" (e.g. ``playground_key("a", "dim")``)."""
    return f"pg_{side}_{name}"


# training page
TRAIN_JOB = "train_job_id"
TRAIN_REQUEST = "train_request"  # the last FinetuneRequest, for "resume"

DEFAULTS: dict[str, Any] = {
    IMAGE_SOURCE: "sample",
    SAMPLE_NAME: "chelsea",
    MODEL_KIND: "auto",
    DINO_SIZE: 224,
    URL_LOADED: False,
    PRESET_NAME: "tiny",
    PRESET_IMAGE: 224,  # the tiny preset's values; choosing a preset resets them (see app_pages/_ui.py)
    PRESET_PATCH: 16,
    PRESET_DIM: 192,
    PRESET_HEADS: 3,
    PRESET_DEPTH: 12,
    SESSION_MODELS: {},
    LAYER: -1,  # the last layer (the Attention page resolves -1 once it knows the depth)
    HEAD: 0,
    QUERY: 0,
    ROLLOUT_FUSION: "mean",
    ROLLOUT_DISCARD: 0.0,
    TOPK: 5,
    MASKED_PATCHES: [],
    TRAIN_JOB: None,
}

# settings that live in the URL so a teacher can share a link to exactly this view
URL_KEYS = (SAMPLE_NAME, MODEL_KIND, PRESET_NAME, LAYER, HEAD, QUERY, PATCH_SIZE)
INT_URL_KEYS = (LAYER, HEAD, QUERY, PATCH_SIZE)


def init(state: Any) -> None:
    """Fill missing keys of a session-state mapping with their defaults (copies for mutables)."""
    for key, value in DEFAULTS.items():
        if key not in state:
            state[key] = value.copy() if isinstance(value, (dict, list)) else value

# ---- fine-tune page: session code, restore, polling (explorer.training / app_pages/finetune.py) ----
SESSION_CODE = "session_code"  # 8 base32 characters; in the URL (?code=) once a job starts; names the data folder
SESSION_RESTORED = "_session_restored"  # the code whose models were read back from the data directory
TRAIN_FIGS = "_train_figs"  # (job id, version) -> the figures drawn for it: polls rebuild only on change
TRAIN_BUSY = "_train_busy"  # whether the last full run saw this session's job queued or running


# ---- teach page (issue 12: few-shot classes on DINOv2; app_pages/teach.py) ---- owner: teach page
TEACH_COLLECTION = "teach_collection"  # explorer.fewshot.ClassCollection of this session
TEACH_JOB = "teach_job_id"  # id of this session's teach job in explorer.jobs.default_manager()
TEACH_RESULT = "teach_result"  # {"job", "summary", "model"}: the finished job, taken into this session
TEACH_MESSAGES = "teach_messages"  # messages about refused photos, shown once
TEACH_SOURCE = "teach_source"  # "collect" | "zip" | "folder"
TEACH_ZIP = "teach_zip"
TEACH_FOLDER = "teach_folder"
TEACH_STRATEGY = "teach_strategy"
TEACH_LAST_K = "teach_last_k"
TEACH_EPOCHS = "teach_epochs"
TEACH_PREDICT_SOURCE = "teach_predict_source"  # "upload" | "camera"
TEACH_PREDICT_UPLOAD = "teach_predict_upload"
TEACH_PREDICT_CAMERA = "teach_predict_camera"
TEACH_EXPLAINED = "teach_explained"  # (image key, result of explorer.fewshot.explain) of the last prediction


def teach_key(name: str, uid: int | str) -> str:
    """Key of one per-class widget of the teach page (``teach_key("files", 3)``); uid is the class's id."""
    return f"teach_{name}_{uid}"


# ---- element keys: charts, tables and buttons of each page (widget ids; pages spell none as a literal) ----
PATCH_GRID_FIG = "patch_grid"
PATCH_MATRIX_FIG = "patch_matrix"
EMB_INPUT_FIG = "emb_input"
EMB_FILTERS_FIG = "emb_filters"
EMB_POS_ALL_FIG = "emb_pos_all"
EMB_CLS_FIG = "emb_cls"
ATTN_ROLLOUT_FIG = "attn_rollout"
ATTN_GRADIENT_FIG = "attn_grad"
ATTN_DISTANCE_FIG = "attn_distance"
ATTN_ACTIVATIONS_FIG = "attn_activations"
DINO_MASKS_FIG = "dino_masks"
DINO_NORMS_FIG = "dino_norms"
DINO_OUTLIERS_FIG = "dino_outliers"
PRED_TOPK_FIG = "pred_topk"
PRED_OCCLUSION_FIG = "pred_occlusion"
TEACH_ZIP_LOAD = "teach_zip_load"
TEACH_FOLDER_LOAD = "teach_folder_load"
TEACH_ADD_CLASS = "teach_add_class"
TEACH_START = "teach_start"
TEACH_STOP = "teach_stop"
TEACH_CONFUSION_FIG = "teach_confusion"
TEACH_PROBS_FIG = "teach_probs"
TEACH_ROLLOUT_FIG = "teach_rollout"
TEACH_OCCLUSION_FIG = "teach_occlusion"
TEACH_CLS_FIG = "teach_cls"
TEACH_USE = "teach_use"
TEACH_DOWNLOAD = "teach_download"
TRUST_COMPUTE = "trust_compute"
TRUST_MAPS_FIG = "trust_maps"
TRUST_CURVES_FIG = "trust_curves"
TRUST_AREAS_TABLE = "trust_areas"
TRUST_LOCALISATION_TABLE = "trust_localisation"
TRUST_RANDOMIZE_BUTTON = "trust_randomize_button"
TRUST_STRIP_FIG = "trust_strip"
TRUST_RANDOMIZATION_TABLE = "trust_randomization"
TRUST_USE_TAUGHT = "trust_use_taught"  # Trust: button that switches to the model taught on the Teach page
TRUST_STOP_MAPS = "trust_stop_maps"  # Trust: stop button of the running maps-and-curves job
TRUST_STOP_RANDOMIZATION = "trust_stop_randomization"  # Trust: stop button of the running randomisation job
TRUST_PROGRESS_MAPS = "trust_progress_maps"  # Trust: per-method progress table of the maps-and-curves job
TRUST_PROGRESS_RANDOMIZATION = "trust_progress_randomization"  # Trust: the same for the randomisation job
BEYOND_MASKS_FIG = "beyond_masks"
BEYOND_MASK_TABLE = "beyond_mask_table"
BEYOND_YOUR_MASKS_FIG = "beyond_your_masks"
BEYOND_BOXES_FIG = "beyond_boxes"
BEYOND_BOX_TABLE = "beyond_box_table"
BEYOND_MIXER_TABLE = "beyond_mixer_table"

# training page (app_pages/finetune.py)
FT_SOURCE = "ft_source"
FT_CLASSES = "ft_classes"
FT_PER_CLASS = "ft_per_class"
FT_ZIP = "ft_zip"
FT_FOLDER = "ft_folder"
FT_STRATEGY = "ft_strategy"
FT_LAST_K = "ft_last_k"
FT_BUDGET = "ft_budget"
FT_EPOCHS = "ft_epochs"
FT_LR = "ft_lr"
FT_AUGMENT = "ft_augment"
FT_BASELINE = "ft_baseline"
FT_START = "ft_start"
FT_DOWNLOAD = "ft_download"
FT_USE = "ft_use"
FT_RESUME = "ft_resume"
FT_STOP = "ft_stop"
FT_STEPS_FIG = "ft_steps"
FT_EPOCHS_FIG = "ft_epochs_fig"
FT_TIMELINE = "ft_timeline"
FT_TIMELINE_ROLLOUT_FIG = "ft_tl_rollout"
FT_TIMELINE_HEAD_FIG = "ft_tl_head"
FT_CONFUSION_FIG = "ft_confusion"
FT_BEFORE_FIG = "ft_before"
FT_AFTER_FIG = "ft_after"


def finetune_class_key(name: str, index: int) -> str:
    """Key of one "collect per class" widget of the training page: name "name" or "files", class ``index``."""
    return f"ft_c{name}_{index}"
