"""Export every stage of one ViT forward pass as plain tensors.

    trace = capture(model, images)                 # one call, no grad, the model untouched
    with capturing(model, layers=[0, 11]) as rec:  # hooks, for teaching: around your own forward pass
        logits = model(x)
    trace = rec.result

:func:`capture` is built on :meth:`VisionTransformer.forward_intermediates`: it switches no flag,
adds no hook and changes no mode, so many sessions may capture one shared model at the same time
(dropout is skipped, as in eval mode). :func:`capturing` shows how the same is done with hooks.

Hooks go on the modules that already exist in :mod:`vitcore.model`: the patch embedding
(pixels each token saw and ``x_p E``, eq. 1), every block's input (``z_0 ... z_{L-1}``) and the
last block's output (``z_L``), each selected block's ``AttentionProbe`` (post-softmax attention),
and when asked its ``qkv`` linear and its MLP activation. They are registered on entry and removed
on exit, also when the forward pass raises. Nothing else changes: a probe with a hook on it makes
its mixer form the matrix (the explicit path) for as long as the hook is there, which is how the
hook sees it. The hooks return nothing, so the forward pass computes exactly what it computes
without them: logits are bit-identical to ``model(x)`` on the explicit path
(``model.with_config(fused_attention=False)``), and within float rounding (1e-5) of the fused path.

Cost. Nothing runs twice. Tokens and embeddings are references to tensors the forward pass
creates anyway (on a CPU model they are not copied). :func:`capture` allocates one
``(L, B, H', T, T)`` slab for the maps and gives each selected block a
:class:`~vitcore.model.Record` holding its slice: with all heads in float32 the softmax is written
straight into it, otherwise each layer's matrix is copied into it (only the kept heads, in
``attention_dtype``) as soon as it exists, so the peak is the slab plus one layer. In
:func:`capturing` the hooks copy attention, q/k/v and MLP activations into such slabs. On a GPU
the slabs and tokens stay on the device during the forward pass (device-local copies, no
synchronisation per layer) and move to the CPU once, at the end (or when ``rec.result`` is first
read). What remains is writing the attention to new memory: on a loaded
2-core CPU about +3% over the explicit forward for base and +5..12% for tiny (whose forward is
cheap next to its T² attention), less with ``attention_dtype=torch.float16`` or a selection; CPU
slabs of 4 MiB and more are advised to use transparent huge pages, which cuts their page faults.

Bytes per image (float32; T = 1 + N tokens; attention = L·H·T²·4, tokens = (L+1)·T·D·4,
q+k+v = 3·L·T·D·4, MLP = L·T·mlp_dim·4; counted with :meth:`Trace.nbytes`, 1000 classes):

    =================  ===========  =====================  ==========  ==========  ============
    preset (224, P16)  attention    default capture total  + q, k, v   + MLP       attention f16
    =================  ===========  =====================  ==========  ==========  ============
    tiny  (D192 H3)    5.59 MB      8.31 MB                + 5.45 MB   + 7.26 MB   2.79 MB
    base  (D768 H12)   22.35 MB     31.43 MB               + 21.79 MB  + 29.05 MB  11.18 MB
    =================  ===========  =====================  ==========  ==========  ============

(The default total also holds patches 0.60 MB, patch embeddings, logits and the tokens: tiny
1.97 MB, base 7.87 MB; the position embedding, shared by the batch, is left out.) Selecting
``layers=[11], heads=[0]`` on base stores 0.16 MB of attention per image instead of 22.35 MB.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from einops import rearrange
from torch import nn

from ..model.record import Record
from ..model.vit import AttentionProbe, patchify, select_indices

__all__ = ["Recorder", "Trace", "capture", "capturing"]

_ATTENTION_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# --------------------------------------------------------------------------- the result
@dataclass
class Trace:
    """Every stage of one forward pass, as detached CPU tensors (B images, T = prefix + N tokens)."""

    logits: torch.Tensor | None  # (B, C); None when the model itself was not called (e.g. forward_features)
    grid: tuple[int, int]  # (gh, gw) patch grid of these images
    patch_size: int  # P
    num_prefix_tokens: int  # CLS (+ distillation) tokens before the patch tokens
    patches: torch.Tensor  # (B, N, C*P*P) the pixels each patch token saw, vitcore.patchify(images)
    patch_embeddings: torch.Tensor  # (B, N, D) x_p E, before prefix tokens and position embedding
    pos_embedding: torch.Tensor  # (T, D) as added, after interpolation to this grid (zeros for registers)
    tokens: list[torch.Tensor]  # depth+1 items of (B, T, D): input of every block, then the last block's output
    attention: torch.Tensor | None  # (L, B, H, T, T) post-softmax, selected layers and heads; rows sum to 1
    layers: tuple[int, ...]  # model block index of each entry along L
    heads: tuple[int, ...]  # head index of each entry along H
    q: torch.Tensor | None = None  # (L, B, H, T, d) when qkv=True
    k: torch.Tensor | None = None  # (L, B, H, T, d)
    v: torch.Tensor | None = None  # (L, B, H, T, d)
    mlp: torch.Tensor | None = None  # (L, B, T, mlp_dim) MLP hidden activations after GELU, when mlp=True

    @property
    def batch_size(self) -> int:
        """B."""
        return self.patches.shape[0]

    @property
    def num_patches(self) -> int:
        """N = gh * gw."""
        return self.grid[0] * self.grid[1]

    def layer_slot(self, layer: int) -> int:
        """Position along the L axis of ``attention`` / ``q`` / ``mlp`` that holds model block ``layer``."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer} was not captured; this trace holds layers {list(self.layers)}")
        return self.layers.index(layer)

    def nbytes(self) -> int:
        """Bytes held by the tensors of this trace."""
        total = 0
        for f in fields(self):
            value = getattr(self, f.name)
            items = value if isinstance(value, list) else [value]
            total += sum(t.numel() * t.element_size() for t in items if isinstance(t, torch.Tensor))
        return total


def _check_model(model: nn.Module) -> None:
    for name in ("patch_embed", "blocks", "forward_intermediates", "token_pos_embedding", "num_prefix_tokens"):
        if not hasattr(model, name):
            raise ValueError(
                f"{type(model).__name__} has no '{name}'; capture works on vitcore.VisionTransformer "
                "(convert other ViTs with vitcore.from_torchvision / vitcore.from_hf)"
            )


_HUGE_PAGE = 2 << 20  # bytes of a Linux transparent huge page on x86-64 / arm64
_MADV_HUGEPAGE = 14
_libc: Any = None


def _advise_huge_pages(t: torch.Tensor) -> None:
    """Ask Linux to back a large fresh CPU tensor with huge pages (best effort, silent elsewhere).

    A new slab is untouched memory: filling it costs one page fault per 4 KiB, about as much as
    the copy itself (45 MB for tiny at batch 8: ~28 ms of faults for ~11 ms of copying). With
    transparent huge pages in "madvise" mode (the common default) this cuts the faults 512-fold.
    """
    global _libc
    if _libc is False or t.device.type != "cpu" or t.nbytes < 2 * _HUGE_PAGE or not sys.platform.startswith("linux"):
        return
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        start = -(-t.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE  # first huge-page boundary inside the tensor
        end = (t.data_ptr() + t.nbytes) // _HUGE_PAGE * _HUGE_PAGE
        if end > start:
            _libc.madvise(start, end - start, _MADV_HUGEPAGE)
    except (OSError, AttributeError):
        _libc = False  # not available here: never try again


class _Slab:
    """A lazily allocated tensor (L, *shape) that hooks fill one layer at a time."""

    def __init__(self, slots: int, dtype: torch.dtype | None = None) -> None:
        self.slots, self.dtype, self.data = slots, dtype, None

    def write(self, slot: int, src: torch.Tensor, heads: Sequence[int] | None = None, head_dim: int = 1) -> None:
        """Copy ``src`` (or only its ``heads`` along ``head_dim``) into layer ``slot``."""
        if self.data is None:
            shape = list(src.shape)
            if heads is not None:
                shape[head_dim] = len(heads)
            dtype = self.dtype or src.dtype
            self.data = torch.empty((self.slots, *shape), dtype=dtype, device=src.device)  # (L, ...)
            _advise_huge_pages(self.data)
        dst = self.data[slot]
        if heads is None:
            dst.copy_(src)
        else:
            for j, h in enumerate(heads):  # one copy per kept head, no temporary of the full tensor
                dst.select(head_dim, j).copy_(src.select(head_dim, h))


def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to("cpu")


# --------------------------------------------------------------------------- the recorder
class Recorder:
    """Holds the hooks of one :func:`capturing` block; ``result`` is the :class:`Trace` of the last forward."""

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: int | Iterable[int] | None = None,
        heads: int | Iterable[int] | None = None,
        qkv: bool = False,
        mlp: bool = False,
        attention_dtype: torch.dtype = torch.float32,
    ) -> None:
        _check_model(model)
        depth = len(model.blocks)
        num_heads = model.blocks[0].attn.heads
        self.model = model
        self.layers = select_indices(layers, depth, "layers")
        self.heads = select_indices(heads, num_heads, "heads")
        if not self.heads:
            raise ValueError("select at least one head (heads=None keeps all), or pass layers=[] to skip attention")
        if attention_dtype not in _ATTENTION_DTYPES:
            raise ValueError(f"attention_dtype={attention_dtype} is not supported; use one of {_ATTENTION_DTYPES}")
        self._head_subset = None if len(self.heads) == num_heads else self.heads
        self.qkv, self.mlp, self.attention_dtype = bool(qkv), bool(mlp), attention_dtype
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._state: dict[str, Any] | None = None

    # ---- hooks ------------------------------------------------------------------------
    def _on_patch_embed_in(self, module: nn.Module, args: tuple) -> None:
        images = args[0]  # (B, C, H, W)
        P = self.model.config.patch_size
        grid = (images.shape[-2] // P, images.shape[-1] // P)
        L = len(self.layers)
        self._state = {
            "grid": grid,
            "patches": patchify(images.detach(), P),  # (B, N, C*P*P)
            "tokens": [None] * (len(self.model.blocks) + 1),
            "attention": _Slab(L, self.attention_dtype) if L else None,
            "q": _Slab(L) if L and self.qkv else None,
            "k": _Slab(L) if L and self.qkv else None,
            "v": _Slab(L) if L and self.qkv else None,
            "mlp": _Slab(L) if L and self.mlp else None,
            "logits": None,
        }
        with torch.no_grad():
            self._state["pos_embedding"] = self.model.token_pos_embedding(grid)[0].detach().clone()  # (T, D)

    def _on_patch_embed_out(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if self._state is not None:
            self._state["patch_embeddings"] = out.detach()  # (B, N, D)

    def _on_block_in(self, index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            if self._state is not None:  # None when a block is called on its own, outside a model forward
                self._state["tokens"][index] = args[0].detach()  # (B, T, D) z_index

        return hook

    def _on_last_block_out(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if self._state is not None:
            self._state["tokens"][-1] = out.detach()  # (B, T, D) z_L

    def _on_probe(self, slot: int):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if self._state is not None:
                self._state["attention"].write(slot, out.detach(), self._head_subset, head_dim=1)  # (B, H, T, T)

        return hook

    def _on_qkv(self, slot: int, heads: int):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if self._state is None:
                return
            qkv = rearrange(out.detach(), "b t (three h d) -> three b h t d", three=3, h=heads)  # 3 x (B, H, T, d)
            for name, part in zip("qkv", qkv):
                self._state[name].write(slot, part, self._head_subset, head_dim=1)

        return hook

    def _on_mlp(self, slot: int):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if self._state is not None:
                self._state["mlp"].write(slot, out.detach())  # (B, T, mlp_dim)

        return hook

    def _on_model_out(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if self._state is not None and isinstance(out, torch.Tensor):
            self._state["logits"] = out.detach()  # (B, C)

    # ---- life cycle -------------------------------------------------------------------
    def attach(self) -> None:
        """Register all hooks (called on entering :func:`capturing`)."""
        model, add = self.model, self._handles.append
        add(model.patch_embed.register_forward_pre_hook(self._on_patch_embed_in))
        add(model.patch_embed.register_forward_hook(self._on_patch_embed_out))
        for i, block in enumerate(model.blocks):
            add(block.register_forward_pre_hook(self._on_block_in(i)))
        add(model.blocks[-1].register_forward_hook(self._on_last_block_out))
        for slot, layer in enumerate(self.layers):
            attn = model.blocks[layer].attn
            probe = attn.probe
            if not isinstance(probe, AttentionProbe):
                raise ValueError(f"block {layer} has no AttentionProbe; capture needs vitcore's Attention module")
            add(probe.register_forward_hook(self._on_probe(slot)))
            if self.qkv:
                if not isinstance(getattr(attn, "qkv", None), nn.Linear):
                    raise ValueError(f"block {layer}'s token mixer ({type(attn).__name__}) has no q/k/v; "
                                     "capture with qkv=False")
                add(attn.qkv.register_forward_hook(self._on_qkv(slot, attn.heads)))
            if self.mlp:
                add(model.blocks[layer].mlp.act.register_forward_hook(self._on_mlp(slot)))
        add(model.register_forward_hook(self._on_model_out))

    def detach(self) -> None:
        """Remove every hook this recorder registered (called on leaving :func:`capturing`)."""
        while self._handles:
            self._handles.pop().remove()

    @property
    def result(self) -> Trace:
        """The :class:`Trace` of the last forward pass run inside the block (built once, on the CPU)."""
        s = self._state
        if s is None or s["tokens"][-1] is None:
            raise RuntimeError("no complete forward pass was recorded; call model(x) inside the capturing() block")
        if s.get("trace") is None:
            slabs = {
                name: s[name].data if s[name] is not None else None for name in ("attention", "q", "k", "v", "mlp")
            }
            s["trace"] = Trace(
                logits=_cpu(s["logits"]),
                grid=s["grid"],
                patch_size=self.model.config.patch_size,
                num_prefix_tokens=self.model.num_prefix_tokens,
                patches=_cpu(s["patches"]),
                patch_embeddings=_cpu(s["patch_embeddings"]),
                pos_embedding=_cpu(s["pos_embedding"]),
                tokens=[_cpu(t) for t in s["tokens"]],
                attention=_cpu(slabs["attention"]),
                layers=self.layers,
                heads=self.heads,
                **{name: _cpu(slabs[name]) for name in ("q", "k", "v", "mlp")},
            )
        return s["trace"]


@contextlib.contextmanager
def capturing(
    model: nn.Module,
    *,
    layers: int | Iterable[int] | None = None,
    heads: int | Iterable[int] | None = None,
    qkv: bool = False,
    mlp: bool = False,
    attention_dtype: torch.dtype = torch.float32,
) -> Iterator[Recorder]:
    """Record the forward passes run inside the block; the hooks are removed on exit.

    ``layers`` / ``heads`` (ints, negative from the end, or None for all) choose which attention
    maps (and q/k/v, MLP activations) are stored; tokens of every block are always kept. Grad mode
    and train/eval mode are the caller's; ``rec.result`` is the trace of the last ``model(x)``.
    """
    recorder = Recorder(model, layers=layers, heads=heads, qkv=qkv, mlp=mlp, attention_dtype=attention_dtype)
    try:
        recorder.attach()  # a hooked probe makes its mixer form the matrix: no flag to switch
        yield recorder
    finally:
        recorder.detach()


def _stack(items: list[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """Per-layer tensors -> one detached (L, ...) CPU tensor; each layer is released once copied."""
    if not items:
        return None
    first = items[0]
    slab = torch.empty((len(items), *first.shape), dtype=dtype or first.dtype, device=first.device)  # (L, ...)
    _advise_huge_pages(slab)
    for i in range(len(items)):
        slab[i].copy_(items[i].detach())
        items[i] = None  # the full per-layer tensor can be freed now
    return _cpu(slab)


def capture(
    model: nn.Module,
    images: torch.Tensor,
    *,
    layers: int | Iterable[int] | None = None,
    heads: int | Iterable[int] | None = None,
    qkv: bool = False,
    mlp: bool = False,
    attention_dtype: torch.dtype = torch.float32,
) -> Trace:
    """One forward pass of ``images`` (B, C, H, W) or (C, H, W) without grad -> :class:`Trace`.

    The model is only read (see :meth:`VisionTransformer.forward_intermediates`): no flag, hook,
    mode or ``.grad`` changes, and dropout is not applied, so the logits equal eval-mode logits.
    """
    if isinstance(images, torch.Tensor) and images.ndim == 3:
        images = images[None]  # (1, C, H, W)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected images (B, C, H, W) or one image (C, H, W), got {shape}")
    _check_model(model)
    if attention_dtype not in _ATTENTION_DTYPES:
        raise ValueError(f"attention_dtype={attention_dtype} is not supported; use one of {_ATTENTION_DTYPES}")
    layer_ids = select_indices(layers, len(model.blocks), "layers")
    head_ids = select_indices(heads, model.config.heads, "heads")
    if not head_ids:
        raise ValueError("select at least one head (heads=None keeps all), or pass layers=[] to skip attention")
    param = next(model.parameters(), None)
    if param is not None:
        images = images.to(param.device)
    slab = None
    if layer_ids and getattr(model.blocks[0].attn, "has_matrix", True):  # the maps' one tensor, owned here
        B, T = images.shape[0], model.num_prefix_tokens + math.prod(model.grid_for(*images.shape[-2:]))
        slab = torch.empty((len(layer_ids), B, len(head_ids), T, T), dtype=attention_dtype, device=images.device)
        _advise_huge_pages(slab)  # (L, B, H', T, T)
    subset = None if len(head_ids) == model.config.heads else head_ids
    records = {
        layer: Record(attention=slab is not None, qkv=qkv, mlp=mlp, heads=subset, out=None if slab is None else slab[i])
        for i, layer in enumerate(layer_ids)
    }
    with torch.no_grad():
        out = model.forward_intermediates(images, records=records)
        pos = model.token_pos_embedding(out.grid)[0].float()  # (T, D), float32 on every path
    attention = _cpu(slab) if out.attention else None
    P = model.config.patch_size
    return Trace(
        logits=_cpu(out.logits),
        grid=out.grid,
        patch_size=P,
        num_prefix_tokens=model.num_prefix_tokens,
        patches=patchify(images, P).cpu(),  # (B, N, C*P*P)
        patch_embeddings=_cpu(out.patch_embeddings),
        pos_embedding=_cpu(pos).clone(),
        tokens=[_cpu(t) for t in out.tokens],
        attention=attention,
        layers=layer_ids,
        heads=head_ids,
        q=_stack(out.q),
        k=_stack(out.k),
        v=_stack(out.v),
        mlp=_stack(out.mlp),
    )
