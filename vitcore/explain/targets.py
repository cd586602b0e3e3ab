"""What an explanation explains: a class logit, or how alike two images look to the model.

A *target* turns a model's output for a batch of images into one score per image:

- :class:`ClassTarget` (``index`` None: the predicted class) reads the class logit; curves read
  its softmax probability. Needs a classification head.
- :class:`SimilarityTarget` explains how alike the pooled features f (the CLS token after the
  final LayerNorm, or whatever ``model.pool`` returns) are to a reference r: the explained
  image's own features by default ("which patches keep the representation what it is?"), or a
  second photo's ("why are these two alike?"). Works on a feature backbone without a head
  (DINOv2). Curves read the cosine similarity cos(f, r). Maps explain its linearisation at the
  clean image, ``s = f · r / (|f0| |r|)`` with f0 the clean image's features: s equals the cosine
  at the clean image (1 for the self-reference) but, unlike the cosine, whose maximum at the
  clean image has a zero gradient, it has a gradient there, so gradient methods see something.

:func:`scorer` binds a target to a model and an image: a :class:`Scorer` module, images ->
scores, used by every map and metric. :func:`frozen_view` gives libraries that insist on hooks
or ``.backward()`` (pytorch-grad-cam, torchcam) a module of their own: new module objects whose
parameters *are* the model's tensors (shared storage, no copy) with ``requires_grad=False``, so
nothing on the shared model is hooked, flagged or given a ``.grad``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassTarget", "SimilarityTarget", "Scorer", "as_target", "scorer", "frozen_view", "SIMILAR_ENOUGH"]

SIMILAR_ENOUGH = 0.5  # a similarity curve counts a point as "still alike" at cosine >= 0.5 (Curve.correct)


@dataclass(frozen=True)
class ClassTarget:
    """Explain one class's logit; ``index`` None means the model's prediction for the image."""

    index: int | None = None


@dataclass(frozen=True, eq=False)
class SimilarityTarget:
    """Explain the cosine similarity of the pooled features to a reference's.

    ``reference``: a second normalised image (C, H, W) or (1, C, H, W) at the model's input size;
    None compares with the explained image itself (then the clean score is exactly 1).
    """

    reference: torch.Tensor | None = None

    @property
    def index(self) -> None:
        return None


def as_target(target: Any) -> ClassTarget | SimilarityTarget:
    """An int (class), None (predicted class), "similarity", or a target object -> a target object."""
    if isinstance(target, (ClassTarget, SimilarityTarget)):
        return target
    if target is None:
        return ClassTarget(None)
    if target == "similarity":
        return SimilarityTarget()
    if isinstance(target, bool) or not isinstance(target, int):
        raise ValueError(f"target={target!r} must be a class index, None (the prediction) or 'similarity'")
    return ClassTarget(target)


def frozen_view(model: nn.Module) -> nn.Module:
    """A new module of the same class whose parameters and buffers are the model's tensors, frozen.

    No weight is copied (the tensors share storage); the view's parameters have
    ``requires_grad=False`` and the view is in eval mode, so a library may hook it or call
    ``.backward()`` through it (with a leaf input) without touching the shared model.
    """
    state = dict(model.state_dict())  # detached references, no copy
    with torch.device("meta"):  # a skeleton: no memory, no random numbers drawn
        view = type(model)(model.config)
    view.load_state_dict(state, assign=True)
    for name, buffer in model.named_buffers():  # non-persistent buffers are not in the state dict
        owner_name, _, bname = name.rpartition(".")
        owner = view.get_submodule(owner_name) if owner_name else view
        if getattr(owner, bname).is_meta:
            setattr(owner, bname, buffer)
    return view.requires_grad_(False).eval()


class Scorer(nn.Module):
    """A model bound to a target: images (B, C, H, W) -> one score per image (B,).

    :meth:`forward` is the explained score (class logit or cosine similarity), :meth:`outputs`
    the (B, K) form libraries index with a class (K = classes, or 1 for a similarity),
    :meth:`curve_value` what perturbation curves track (class probability or the similarity)
    and :meth:`from_tokens` the score from final tokens (B, T, D) (after the final LayerNorm).
    The model is a submodule only for ``parameters()``; nothing here changes it.
    """

    def __init__(self, model: nn.Module, target: ClassTarget | SimilarityTarget, index: int | None,
                 reference: torch.Tensor | None = None, clean: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.target = target
        self.index = index  # class index (ClassTarget) or None
        self.register_buffer("reference", reference, persistent=False)  # (D',) pooled features r, or None
        direction = None if reference is None else reference / (reference.norm() * clean.norm()).clamp_min(1e-12)
        self.register_buffer("direction", direction, persistent=False)  # (D',) r / (|r| |f0|): s = f . direction

    def on(self, model: nn.Module) -> Scorer:
        """The same target (class, or the same reference features) read from another module, e.g. a view."""
        out = Scorer(model, self.target, self.index)
        out.reference, out.direction = self.reference, self.direction
        return out

    @property
    def kind(self) -> str:
        return "class" if self.index is not None else "similarity"

    @property
    def output_index(self) -> int:
        """Column of :meth:`outputs` that holds the score."""
        return self.index if self.index is not None else 0

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.pool(tokens)  # (B, D')

    def outputs_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, K): logits, or the linearised similarity s = f . r / (|f0| |r|) as one column."""
        if self.index is not None:
            return self.model.forward_head(tokens)  # (B, C)
        return (self.pooled(tokens).float() @ self.direction)[:, None]  # (B, 1)

    def from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.outputs_from_tokens(tokens)[:, self.output_index]  # (B,)

    def outputs(self, images: torch.Tensor) -> torch.Tensor:
        return self.outputs_from_tokens(self.model.forward_features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.outputs(images)[:, self.output_index]  # (B,)

    @torch.inference_mode()
    def curve_value(self, images: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """What a perturbation curve tracks, (K,), and whether each image still "counts", (K,) bool.

        Class: the softmax probability and whether the class is still the top-1. Similarity: the
        cosine similarity and whether it is still >= :data:`SIMILAR_ENOUGH`.
        """
        values, kept = [], []
        for chunk in images.split(batch_size):
            tokens = self.model.forward_features(chunk)
            if self.index is not None:
                out = self.model.forward_head(tokens).float()  # (k, C)
                values.append(out.softmax(dim=-1)[:, self.index])
                kept.append(out.argmax(dim=-1) == self.index)
            else:
                cos = F.cosine_similarity(self.pooled(tokens).float(), self.reference[None], dim=-1)  # (k,)
                values.append(cos)
                kept.append(cos >= SIMILAR_ENOUGH)
        return torch.cat(values), torch.cat(kept)


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        features = model.pool(model.forward_features(x))[0].float()  # (D',)
    return features.clone()  # a normal tensor: it becomes a buffer of the Scorer


def scorer(model: nn.Module, image: torch.Tensor, target: Any = None) -> Scorer:
    """Bind ``target`` (see :func:`as_target`) to ``model`` for the image (1, C, H, W).

    A class target needs a head and an index in range (None: the prediction for ``image``); a
    similarity target computes its reference features once, on this model.
    """
    target = as_target(target)
    x = image if image.ndim == 4 else image[None]
    num_classes = model.config.num_classes
    if isinstance(target, SimilarityTarget):
        ref = target.reference
        if ref is not None:
            ref = ref if ref.ndim == 4 else ref[None]
            if ref.shape[1:] != x.shape[1:]:
                raise ValueError(f"the reference image is {tuple(ref.shape[1:])} but the explained one is "
                                 f"{tuple(x.shape[1:])}; preprocess both with the model's record")
            ref = ref.to(x.device, x.dtype)
        clean = _features(model, x)
        return Scorer(model, target, None, clean if ref is None else _features(model, ref), clean)
    if num_classes == 0:
        raise ValueError(
            "this model has no classification head (num_classes=0), so there is no class to explain; explain "
            "target='similarity' (what keeps its features what they are), or fit a head on its features first "
            "(vitcore.train.fewshot.train_linear_head; in the app, the page 'Teach it your classes')"
        )
    index = target.index
    if index is not None and not 0 <= index < num_classes:
        raise ValueError(f"target={index} is not a class of this model; pick an index in 0..{num_classes - 1}")
    if index is None:
        with torch.no_grad():
            index = int(model(x)[0].argmax())
    return Scorer(model, target, index, None)
