"""The training speed path: one call after the model and optimizer are built, the same arithmetic.

    install(run, val_sets)                              # what train.py does, unless --plain
    clip_grad_norm = speed_up(model, optimizer, ...)    # the same, on a model and optimizer
    ...
    loss.backward()
    norm = clip_grad_norm(model.parameters(), max_norm)  # the same contract as torch.nn.utils.clip_grad_norm_
    optimizer.step()

train.py reads as plain PyTorch: nn.Dropout, one attention call (scaled_dot_product_attention), then
clip_grad_norm_ and the optimizer step. `python train.py --plain` runs exactly that. By default it
calls speed_up() once, which swaps modules and adds hooks; no parameter changes, nor its name, so
checkpoints load either way:

    swapped in                        in place of                           what it saves (docs/training-speed.md)
    PackedMPNet (packing.py)          every layer on the padded grid        the padding's share of the work
    LaneDropout                       every nn.Dropout                      masks 3.5x cheaper to draw (lane_dropout.py)
    WrittenOutAttention               SelfAttention, in training only       SDPA's math fallback's extra passes; its
                                                                            dropout mask comes from lane_dropout too
    SparseGradEmbeddings + a hook     the word table's fresh dense gradient one 94 MB buffer kept across steps
    GradNorm hooks                    reading 109M gradients for the norm   squares summed while each one is hot
    clipping folded into fused AdamW  clip_grad_norm_'s in-place scaling    one read+write pass of 109M gradients
    FeatureCache as model.embed       the frozen bottom's forward each step its output, computed once per text

With dropout off, both paths compute the same loss and gradients up to rounding
(tests/test_speed_path.py). With dropout on, they draw different masks: the same distribution, another stream.
Under DDP the two gradient hooks stay off (they would run before DDP averages the gradients).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from heads import MultiTaskModel
from speed.feature_cache import FeatureCache, frozen_prefix
from speed.grad_hooks import GradNorm, install as install_grad_hooks
from speed.lane_dropout import LaneDropout, dropout
from speed.packing import PackedSelfAttention, pack


class WrittenOutAttention(PackedSelfAttention):
    """Packed attention whose training attention is written out: baddbmm, softmax, lane dropout, bmm.

    In training the mask needs a gradient (the relative bias trains) and the probabilities a dropout;
    PyTorch's fused CPU kernel gives neither, so SDPA falls back to its unfused math path, which makes
    a few more elementwise passes than these four calls. In eval it is SelfAttention's own SDPA call.
    """

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().attend(q, k, v, mask)
        B, H, L, d = q.shape
        q, k, v = (t.reshape(B * H, L, d) for t in (q, k, v))
        scores = torch.baddbmm(mask.reshape(B * H, L, L), q, k.transpose(1, 2), alpha=1 / math.sqrt(d))
        return torch.bmm(dropout(scores.softmax(-1), self.dropout_p), v).view(B, H, L, d)


def swap_dropout(model: nn.Module) -> None:
    """Every nn.Dropout becomes a LaneDropout with the same p."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, LaneDropout(child.p))


def folded_clip(optimizer: torch.optim.Optimizer, grad_norm: GradNorm | None) -> Callable:
    """clip_grad_norm_'s contract, with the scaling left to the fused AdamW step.

    clip_grad_norm_ scales every gradient in place: one more read and write of 109M numbers a step
    (about 30 ms on a 2-core AVX2-only EPYC). The fused AdamW kernel divides each gradient by its
    `grad_scale` as it reads it (the hook torch.amp.GradScaler unscales through), so the clipping
    rides along in the pass AdamW makes anyway: g / ((norm + 1e-6) / max_norm) here, g * (max_norm /
    (norm + 1e-6)) there, equal to rounding."""
    def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
        if grad_norm is not None:
            norm = grad_norm.total()
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
        optimizer.grad_scale = ((norm + 1e-6) / max_norm).clamp(min=1.0)
        return norm
    return clip_grad_norm


@dataclass
class SpeedPath:
    clip_grad_norm: Callable  # call it between backward() and optimizer.step(), as clip_grad_norm_
    cache_s: float = 0.0      # seconds spent filling the feature cache (0: no cache)


def speed_up(model: MultiTaskModel, optimizer: torch.optim.Optimizer, tokenizer=None,
             train_texts: list[str] | None = None, val_texts: list[str] | None = None,
             autocast: bool = False, ddp: bool = False) -> SpeedPath:
    """Install the speed path on a model whose frozen and trainable parameters are set (after freezing).

    train_texts: cache the frozen bottom's outputs for these texts, or None for no cache (the caller
    decides: not while gradual unfreezing changes what is frozen). The cache is made only when a frozen
    layer is skipped (with only the embeddings frozen it would hold a (tokens, 768) copy of every training
    set to save a table lookup); val_texts join it when the whole backbone is frozen, so that a
    validation costs milliseconds."""
    cache_s = 0.0
    pack(model.backbone)  # the per-token layers on the real tokens only (packing.py)
    frozen = frozen_prefix(model)
    if train_texts is not None and frozen > 1:
        texts = list(train_texts)
        if frozen == 1 + len(model.backbone.layers):  # the whole backbone is frozen: validation reads the cache too
            texts += val_texts or []
        cache = FeatureCache(model, tokenizer, texts, autocast=autocast)
        cache.install(model)
        cache_s = round(cache.seconds, 1)
        print(f"feature cache: {cache.nbytes() / 1e6:.0f} MB of frozen-bottom outputs in {cache_s} s", file=sys.stderr)
    swap_dropout(model)
    for layer in model.backbone.layers:
        layer.attn.__class__ = WrittenOutAttention  # a subclass that adds no state: only attend() changes
    grad_norm = None if ddp else install_grad_hooks(model, model.backbone.embeddings)
    return SpeedPath(folded_clip(optimizer, grad_norm), cache_s)


def install(run, val_sets: dict) -> None:
    """train.py's call (unless --plain): speed_up() on the run's model and optimizer, its clipping as
    the run's clip_grad_norm. It caches the frozen bottom's outputs when there is one to skip and
    nothing will thaw (every rank caches every pool). run: a train_state.Run, after freezing."""
    trainable = any(p.requires_grad for p in run.model.parameters())
    cache = trainable and not run.cfg.no_cache and run.unfreezer is None
    speed = speed_up(run.model, run.optimizer, run.tokenizer,
                     train_texts=[t for p in run.pools for t in p.texts] if cache else None,
                     val_texts=[t for ds in val_sets.values() for t in ds.texts], autocast=run.bf16,
                     ddp=run.world.size > 1)
    run.clip_grad_norm = speed.clip_grad_norm
    if speed.cache_s:  # a cache was filled in this process (on resume too): its time
        run.progress.cache_s = speed.cache_s
