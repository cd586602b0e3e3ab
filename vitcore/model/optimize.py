"""Faster inference paths for a VisionTransformer: bfloat16, compiled (inductor) and int8 (dynamic quantisation).

    fast = vitcore.optimize(model, mode="int8+compile")   # a NEW model; ``model`` is not changed
    fast(x)                                                # logits, like model(x)
    trace = vitcore.capture(fast, x)                       # attention maps on every path, rows sum to 1
    fast.optimization.describe()                           # what runs, compile seconds, any fallback

Modes (:data:`MODES`):

``"fp32"``          the same weights (shared, not copied), fused attention, eager PyTorch.
``"compile"``       fp32 through ``torch.compile`` (inductor, CPU C++ code, weights frozen into the
                    graph). Compiled once per input shape during :func:`optimize` (the ``shapes``
                    warmed up), so a later call never compiles; other shapes run eagerly.
``"int8"``          the Linear layers of the encoder blocks (output projection and both MLP layers,
                    about 70 % of a ViT's FLOPs; q/k/v stay float32, see KEEP_FLOAT) with int8
                    weights (per output channel) and int8 activations quantised on the fly, per token (torchao's
                    ``Int8DynamicActivationInt8WeightConfig``, PyTorch's current quantisation API;
                    the deprecated ``torch.ao.quantization.quantize_dynamic`` only when torchao is
                    missing). Patch embedding, LayerNorms, softmax and the head stay float32.
``"int8+compile"``  both: the quantised graph compiled, int8 GEMMs fused with their (de)quantisation.
``"bf16"``          every weight in bfloat16 (a new half-size copy), images cast on the way in and
                    everything returned cast back to float32; the softmax runs in float32. On CPUs
                    with native bf16 dot products (AVX512-BF16 or AMX, see :func:`bf16_native`) the
                    GEMMs run at about twice the fp32 rate; elsewhere they are emulated and slower.
``"bf16+compile"``  the bf16 model compiled.

Every mode keeps attention maps: :meth:`OptimizedViT.forward_intermediates` (and so
:func:`vitcore.capture`) runs the explicit softmax(q k^T / sqrt(d)) on every path; a compiled path
compiles the full trace (all layers, all heads) as its own graph. The result is inference-only
(no grad; gradients for explanations come from the original model) and a snapshot of the weights
at the time of the call (compiled graphs hold them as constants).

Fidelity (:func:`fidelity`): against the fp32 model, the CLS feature's cosine similarity and the
last layer's CLS attention maps' Pearson correlation, per image; :func:`fewshot_accuracy` gives the
lfw 10-shot accuracy of a backbone, so a path's accuracy can be set beside fp32's.

Why these and not others, measured on a 2-core AVX-512 VNNI/BF16 CPU (``benchmarks/peers.py``): int8
GEMMs run on the VNNI dot-product instructions, but the per-token quantisation of the activations
and the float32 q/k/v eat most of the gain at batch 1; bf16 GEMMs (``vdpbf16ps``) halve the time of
every Linear and of the attention products with no quantisation step, and pass the fidelity
targets on DINOv2; compiling fuses the LayerNorms, GELU and residual adds into the GEMMs' neighbours.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .vit import Intermediates, VisionTransformer

__all__ = [
    "KEEP_FLOAT",
    "MODES",
    "Fidelity",
    "Optimization",
    "OptimizedViT",
    "bf16_native",
    "compiler_available",
    "fewshot_accuracy",
    "fidelity",
    "optimize",
]

MODES = ("fp32", "compile", "int8", "int8+compile", "bf16", "bf16+compile")
INT8_BACKENDS = ("auto", "torchao", "fbgemm")
# Block Linear layers kept float32 on the int8 paths. Measured on DINOv2 ViT-S/14, 7 sample photos,
# torchao per-token int8: all four int8 -> worst CLS cosine 0.99876 (below 0.999); q/k/v float ->
# 0.99919 (fc2 float: 0.99920, fc1 float: 0.99934), at the cost of a quarter of the GEMM FLOPs in fp32.
KEEP_FLOAT = ("qkv",)

# Fidelity targets against fp32 (issue 21): per image, on DINOv2 ViT-S/14 at 224 px.
MIN_CLS_COSINE = 0.999
MIN_ATTENTION_PEARSON = 0.99
MAX_FEWSHOT_DROP = 0.01  # lfw 10-shot accuracy within 1 point of fp32


# --------------------------------------------------------------------------- what runs
@dataclass(frozen=True)
class Optimization:
    """How an :class:`OptimizedViT` was built: the mode asked for, the mode that runs, and why they differ."""

    requested: str  # the mode passed to optimize()
    mode: str  # the mode that runs (differs after a fallback)
    int8_backend: str | None  # "torchao" or "fbgemm" (torch.ao, deprecated) when int8 runs
    compiled_shapes: tuple[tuple[int, ...], ...]  # input shapes compiled (run compiled); others run eagerly
    compile_seconds: float  # wall time spent compiling (0 when nothing was compiled)
    message: str = ""  # why the mode that runs is not the one requested ("" when it is)

    @property
    def compiled(self) -> bool:
        """Whether compiled graphs run (for the shapes in ``compiled_shapes``)."""
        return "compile" in self.mode

    @property
    def int8(self) -> bool:
        """Whether the encoder's Linear layers run in int8."""
        return "int8" in self.mode

    @property
    def bf16(self) -> bool:
        """Whether the model computes in bfloat16 (weights and activations; softmax in float32)."""
        return "bf16" in self.mode

    def label(self) -> str:
        """Short name for a sidebar, e.g. ``int8 + compiled``, ``bf16`` or ``fp32``."""
        base = "int8" if self.int8 else "bf16" if self.bf16 else "fp32"
        parts = [base] + (["compiled"] if self.compiled else [])
        return " + ".join(parts)

    def describe(self) -> str:
        """One sentence: what runs, what it cost to compile, and any fallback."""
        text = f"{self.label()} inference path"
        if self.int8:
            text += f" (int8 via {self.int8_backend})"
        if self.compiled:
            shapes = ", ".join("x".join(map(str, s)) for s in self.compiled_shapes)
            text += f", compiled for {shapes} in {self.compile_seconds:.1f} s"
        return text + (f". {self.message}" if self.message else "")


# --------------------------------------------------------------------------- the optimised model
class OptimizedViT(VisionTransformer):
    """An inference-only VisionTransformer built by :func:`optimize`; same interface, faster paths.

    ``forward`` / ``forward_features`` and ``forward_intermediates`` (so :func:`vitcore.capture`)
    run compiled graphs for the input shapes and requests compiled at construction; any other
    shape or request runs the inherited eager code on this model's (possibly int8) modules, so a
    call never waits for a compiler. Everything runs under ``torch.no_grad``.
    """

    optimization: Optimization

    def _setup_fast_paths(self) -> None:
        self._compiled_shapes: set[tuple[int, ...]] = set()
        self._fast_features: Callable | None = None
        self._fast_intermediates: Callable | None = None
        self._warming = False  # True while optimize() compiles: then a compiled call may compile
        self._dtype = next(self.parameters()).dtype  # what it computes in: float32, or bfloat16 on bf16 paths

    # ---- the plain VisionTransformer code that gets compiled --------------------------------
    def _eager_features(self, images: torch.Tensor) -> torch.Tensor:
        return VisionTransformer.forward_features(self, images.to(self._dtype))  # (B, T, D) in the compute dtype

    def _eager_intermediates(self, images: torch.Tensor, **kwargs: Any) -> Intermediates:
        return VisionTransformer.forward_intermediates(self, images.to(self._dtype), **kwargs)

    def _pick(self, images: torch.Tensor, fast: Callable | None, eager: Callable) -> Callable:
        if fast is not None and isinstance(images, torch.Tensor) and tuple(images.shape) in self._compiled_shapes:
            return fast
        return eager

    # ---- public interface -------------------------------------------------------------------
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        fn = self._pick(images, self._fast_features, self._eager_features)
        with torch.no_grad(), _no_compiling(fn is not self._eager_features and not self._warming):
            return fn(images)  # (B, T, D) in the compute dtype

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens after the final LayerNorm, (B, T, D) float32; compiled for the compiled shapes."""
        return self._features(images).float()  # no copy on the float32 paths

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> float32 logits (B, C) (the pooled features when the model has no head)."""
        tokens = self._features(images)  # (B, T, D)
        with torch.no_grad():
            return self.forward_head(tokens).float()  # (B, C)

    def forward_intermediates(self, images: torch.Tensor, **kwargs: Any) -> Intermediates:
        """As :meth:`VisionTransformer.forward_intermediates` (same arguments), without grad.

        Compiled for the requests made while compiling (:func:`vitcore.capture`'s full trace);
        any other request, or a shape not compiled, runs eagerly instead of compiling again.
        Every tensor comes back float32 (the bf16 paths' are cast; attention is float32 already).
        """
        fn = self._pick(images, self._fast_intermediates, self._eager_intermediates)
        with torch.no_grad(), _no_compiling(fn is not self._eager_intermediates and not self._warming):
            out = fn(images, **kwargs)
        if self._dtype == torch.float32:
            return out
        names = ("tokens", "attention", "q", "k", "v", "mlp")
        lists = {name: [t.float() for t in getattr(out, name)] for name in names}
        tensors = {name: None if getattr(out, name) is None else getattr(out, name).float()
                   for name in ("patch_embeddings", "features", "logits")}
        return dataclasses.replace(out, **lists, **tensors)

    def train(self, mode: bool = True) -> OptimizedViT:
        """An optimised model is inference-only: it stays in eval mode."""
        if mode:
            raise ValueError("an optimised model is inference-only; train the original model, then optimise it again")
        return super().train(False)


@contextlib.contextmanager
def _no_compiling(compiled: bool):
    """Around a compiled call: reuse what was compiled, run eagerly rather than compile again."""
    if not compiled:
        yield
        return
    with torch.compiler.set_stance("eager_on_recompile"):
        yield


# --------------------------------------------------------------------------- building it
def bf16_native() -> bool:
    """Whether this CPU has native bfloat16 dot products (AVX512-BF16 or AMX), so the bf16 paths pay off."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and check() for check in checks)


def compiler_available() -> bool:
    """Whether a C++ compiler for inductor's CPU code is on PATH (``$CXX``, else g++ / c++ / clang++)."""
    import os

    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return any(shutil.which(name) for name in names)


def _shared_copy(model: VisionTransformer, dtype: torch.dtype = torch.float32) -> OptimizedViT:
    """A new OptimizedViT over the given model's tensors: shared (float32), or cast copies (``dtype``)."""
    config = model.config.replace(fused_attention=True)  # explicit attention runs only where maps are asked
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        new = OptimizedViT(config)
    state = model.state_dict()
    if dtype != torch.float32:
        state = {name: t.to(dtype) if t.is_floating_point() else t for name, t in state.items()}
    new.load_state_dict(state, assign=True)  # new Parameter objects over the same (or the cast) storage
    new.requires_grad_(False)  # on the new Parameter objects only
    new._setup_fast_paths()
    return nn.Module.train(new, False)


def _int8_filter(keep_float: tuple[str, ...]) -> Callable[[nn.Module, str], bool]:
    """Which modules become int8: the Linear layers inside the blocks, except those named in ``keep_float``."""

    def chosen(module: nn.Module, name: str) -> bool:
        leaf = name.rpartition(".")[2]
        return isinstance(module, nn.Linear) and name.startswith("blocks.") and leaf not in keep_float

    return chosen


def _quantize_int8(model: OptimizedViT, backend: str, keep_float: tuple[str, ...]) -> str:
    """Swap the encoder blocks' Linear layers of ``model`` (a shared copy) for int8 ones; returns the backend."""
    chosen = _int8_filter(keep_float)
    if backend in ("auto", "torchao"):
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        except ImportError:
            if backend == "torchao":
                raise ValueError("int8_backend='torchao' needs torchao (pip install torchao); "
                                 "or pass int8_backend='auto'") from None
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torchao's notes on its own API changes
                quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=chosen)
            return "torchao"
    from torch.ao.quantization import quantize_dynamic  # deprecated in favour of torchao, still shipped

    engine = "x86" if "x86" in torch.backends.quantized.supported_engines else torch.backends.quantized.engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice: this is the fallback when torchao is missing
        with _quantized_engine(engine):
            for block_index, block in enumerate(model.blocks):
                names = {name for name, module in block.named_modules()
                         if chosen(module, f"blocks.{block_index}.{name}")}
                if names:
                    quantize_dynamic(block, names, dtype=torch.qint8, inplace=True)
    return "fbgemm"


@contextlib.contextmanager
def _quantized_engine(engine: str):
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def _compile_shapes(model: OptimizedViT, shapes: Sequence[tuple[int, ...]], trace: bool | Mapping[str, Any]) -> None:
    """Compile forward_features (and capture's full trace) for each shape, running each once so it is paid now."""
    from ..inspect.capture import capture

    options = {"freezing": True}  # weights become constants: GEMM weights prepacked, constants folded
    features = torch.compile(model._eager_features, backend="inductor", dynamic=False, options=options)
    intermediates = torch.compile(model._eager_intermediates, backend="inductor", dynamic=False, options=options)
    model._fast_features, model._fast_intermediates = features, intermediates
    model._compiled_shapes.update(shapes)
    param = next(model.parameters())
    model._warming = True
    try:
        with torch.no_grad():
            for shape in shapes:
                x = torch.zeros(shape, dtype=torch.float32, device=param.device)  # callers pass float32 images
                model.forward_features(x)
                if trace:
                    capture(model, x, **({} if trace is True else dict(trace)))  # compiles exactly this request
    finally:
        model._warming = False


def _check_shapes(model: VisionTransformer, shapes: Iterable[Sequence[int]] | None) -> tuple[tuple[int, ...], ...]:
    cfg = model.config
    if shapes is None:
        return ((1, cfg.in_channels, *cfg.image_size),)
    out = []
    for shape in shapes:
        shape = tuple(int(s) for s in shape)
        p = cfg.patch_size
        if len(shape) != 4 or shape[1] != cfg.in_channels or shape[0] < 1 or shape[2] % p or shape[3] % p:
            raise ValueError(f"shape {shape} is not a (B, {cfg.in_channels}, H, W) batch with H and W multiples of "
                             f"the patch size {p}; e.g. (1, {cfg.in_channels}, {cfg.image_size[0]}, "
                             f"{cfg.image_size[1]})")
        out.append(shape)
    return tuple(dict.fromkeys(out))


def optimize(
    model: VisionTransformer,
    mode: str = "int8+compile",
    *,
    shapes: Iterable[Sequence[int]] | None = None,
    trace: bool | Mapping[str, Any] = True,
    int8_backend: str = "auto",
    keep_float: Iterable[str] = KEEP_FLOAT,
) -> OptimizedViT:
    """A new, inference-only :class:`OptimizedViT` of ``model`` on a faster path; ``model`` is not changed.

    ``mode``: one of :data:`MODES`. ``shapes``: the (B, C, H, W) input shapes to compile for (default
    batch 1 at the config's image size); compiling happens here, once, and its wall time is in
    ``result.optimization.compile_seconds``; other shapes run the eager path. ``trace``: also compile
    the full trace (:func:`vitcore.capture`'s default request), or, given a dict, the capture with
    those keyword arguments (e.g. ``{"qkv": True}``). ``int8_backend``: "auto" (torchao,
    else the deprecated torch.ao), "torchao" or "fbgemm" (torch.ao's x86/fbgemm dynamic quantisation).
    ``keep_float``: names of block Linear layers ("qkv", "proj", "fc1", "fc2") kept in float32 on
    the int8 paths; by default q/k/v (see :data:`KEEP_FLOAT`).

    When compiling is impossible (no C++ compiler, or inductor fails) the result runs the same mode
    without compiling, says why in ``optimization.message`` and warns once (RuntimeWarning).
    The given model's parameters, buffers, flags, hooks and mode are left as they were: the new
    model reads the same weight tensors (fp32) or int8 copies of them.
    """
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"optimize needs a vitcore VisionTransformer, got {type(model).__name__}; "
                         "convert other ViTs with vitcore.from_torchvision / from_hf / from_timm")
    if isinstance(model, OptimizedViT):
        raise ValueError("this model is already optimised; pass the original model to optimize()")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {MODES}")
    if int8_backend not in INT8_BACKENDS:
        raise ValueError(f"int8_backend={int8_backend!r} is not one of {INT8_BACKENDS}")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("optimize targets CPU inference; move the model to the CPU first (model.cpu())")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("optimize expects a float32 model; convert it with model.float() first")
    keep_float = tuple(keep_float)
    unknown = sorted(set(keep_float) - {"qkv", "proj", "fc1", "fc2"})
    if unknown:
        raise ValueError(f"keep_float names {unknown}; the block Linear layers are 'qkv', 'proj', 'fc1' and 'fc2'")
    compile_shapes = _check_shapes(model, shapes)
    new = _shared_copy(model, torch.bfloat16 if "bf16" in mode else torch.float32)
    backend = _quantize_int8(new, int8_backend, keep_float) if "int8" in mode else None
    runs, message, seconds, compiled = mode, "", 0.0, ()
    if "bf16" in mode and not bf16_native():
        warnings.warn(f"vitcore.optimize(mode={mode!r}): this CPU has no native bf16 dot products (AVX512-BF16 or "
                      "AMX), so bf16 runs emulated and is likely slower than fp32", RuntimeWarning, stacklevel=2)
    if "compile" in mode:
        if not compiler_available():
            message = "No C++ compiler found (install g++ or set $CXX), so nothing was compiled"
        else:
            start = time.perf_counter()
            try:
                _compile_shapes(new, compile_shapes, trace)
            except Exception as exc:  # inductor/dynamo failures come in many types; the model still works eagerly
                new._setup_fast_paths()
                message = f"Compiling failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            else:
                compiled = compile_shapes
            seconds = time.perf_counter() - start
        if message:
            runs = mode.replace("+compile", "").replace("compile", "fp32")
            message += f"; running the {runs} path eagerly instead."
            warnings.warn(f"vitcore.optimize(mode={mode!r}): {message}", RuntimeWarning, stacklevel=2)
    new.optimization = Optimization(requested=mode, mode=runs, int8_backend=backend, compiled_shapes=compiled,
                                    compile_seconds=seconds, message=message)
    return new


# --------------------------------------------------------------------------- fidelity
@dataclass(frozen=True)
class Fidelity:
    """How closely a path follows fp32, per image (the worst image is reported)."""

    images: int
    cls_cosine: float  # min over images of cos(CLS feature, fp32 CLS feature), after the final LayerNorm
    attention_pearson: float  # min over images of Pearson r of the last layer's CLS -> patch maps (all heads)
    max_row_sum_error: float  # max |sum of an attention row - 1| over every layer and head

    @property
    def passed(self) -> bool:
        """Whether both per-image targets hold (cosine >= 0.999, Pearson >= 0.99)."""
        return self.cls_cosine >= MIN_CLS_COSINE and self.attention_pearson >= MIN_ATTENTION_PEARSON


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson r along the last axis, (...,)."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


def _final_cls(model: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """The CLS token after ``model``'s final LayerNorm, in the model's own dtype, returned float32, (B, D)."""
    return model.norm(tokens[:, :1].to(model.norm.weight.dtype))[:, 0].float()


@torch.no_grad()
def fidelity(reference: VisionTransformer, candidate: VisionTransformer, images: torch.Tensor,
             batch_size: int = 1) -> Fidelity:
    """Compare ``candidate`` (e.g. an :class:`OptimizedViT`) with ``reference`` (fp32) on ``images`` (B, C, H, W).

    Both are only read: one :func:`vitcore.capture` each per batch of ``batch_size`` (1 matches the
    shape a compiled path was warmed up for).
    """
    from ..inspect.capture import capture

    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not len(images):
        raise ValueError("images must be a non-empty (B, C, H, W) batch of preprocessed images")
    cosines, pearsons, row_error = [], [], 0.0
    p = reference.num_prefix_tokens
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        ref, cand = capture(reference, x), capture(candidate, x)
        cls_ref = _final_cls(reference, ref.tokens[-1])  # (b, D) CLS after the final LayerNorm
        cls_cand = _final_cls(candidate, cand.tokens[-1])  # (b, D)
        cosines.append(torch.nn.functional.cosine_similarity(cls_cand, cls_ref, dim=-1))
        maps_ref = ref.attention[-1][:, :, 0, p:].flatten(1)  # (b, H*N) last layer, CLS row, patch columns
        maps_cand = cand.attention[-1][:, :, 0, p:].flatten(1)
        pearsons.append(_pearson(maps_cand.double(), maps_ref.double()))
        row_error = max(row_error, float((cand.attention.double().sum(-1) - 1).abs().max()))
    return Fidelity(images=len(images), cls_cosine=float(torch.cat(cosines).min()),
                    attention_pearson=float(torch.cat(pearsons).min()), max_row_sum_error=row_error)


def fewshot_accuracy(backbone: VisionTransformer, preprocessing: Any, draws: int = 10, shots: int = 10,
                     batch_size: int = 1) -> float:
    """Mean lfw ``shots``-shot accuracy of a linear probe on ``backbone`` (faces vs non-faces), over ``draws``.

    scikit-image's lfw_subset (100 faces, 100 not), the backbone's own preprocessing, features
    [CLS ; mean patch] (:func:`vitcore.train.fewshot.extract_features`); per draw, ``shots`` random
    photos per class train a logistic-regression head, the rest score it. Deterministic (seeded draws).
    """
    from ..train.fewshot import extract_features, lfw_subset, train_linear_head

    images, labels, _ = lfw_subset()
    feats = extract_features(backbone, images, preprocessing, batch_size=batch_size)  # (200, 2D)
    y = torch.tensor(labels)
    per_class = [torch.nonzero(y == c).flatten() for c in (0, 1)]
    accuracies = []
    for draw in range(draws):
        g = torch.Generator().manual_seed(draw)
        train = torch.cat([idx[torch.randperm(len(idx), generator=g)[:shots]] for idx in per_class])
        val = torch.ones(len(y), dtype=torch.bool)
        val[train] = False
        head = train_linear_head(feats[train], y[train], 2).head
        with torch.no_grad():
            accuracies.append(float((head(feats[val]).argmax(-1) == y[val]).float().mean()))
    return sum(accuracies) / len(accuracies)
