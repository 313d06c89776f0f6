"""Two things train.py does to each gradient the moment backward writes it, in a single process.

Autograd runs a parameter's post-accumulate-grad hook as soon as its `.grad` is complete, while the
rest of backward is still to come. Two costs of a training step move into such hooks:

1. `reuse_word_gradient`: the word table's gradient lands in one buffer kept across steps.
   Backward of a plain `F.embedding` allocates a fresh dense (30527, 768) gradient every step,
   94 MB, though a batch of 16 sentences touches a few hundred of its rows. glibc serves an
   allocation that large from a fresh memory mapping whenever its heap has no room for it, and
   the first write to each of its 22,896 4-KiB pages is a page fault: `torch.zeros(30527, 768)`
   took 40 ms on a 2-core AVX2-only AMD EPYC, against 5 ms to zero a buffer already in memory.
   Whether a step pays depends on what the heap looks like: in one measured run about half the
   backward passes took those 22,896 faults and the others none (docs/training-speed.md).
   Instead the lookup asks autograd for a sparse gradient (the T looked-up rows, T x 768, in token
   order), and the hook adds those rows into the kept buffer and makes the buffer `.grad`:

       backward  ->  .grad = sparse (indices: token ids, values: T x 768)
       hook      ->  buffer.zero_().index_add_(0, indices, values);  .grad = buffer
       zero_grad(set_to_none=True) drops .grad; the buffer stays for the next step

   `index_add_` adds the rows in the same order as embedding's own dense backward, so the gradient
   is bit-identical, not merely close (tests/test_grad_hooks.py).

2. `GradNorm`: the total gradient norm that clipping needs, summed as the gradients land.
   `get_total_norm` after backward reads all 109M gradients once more, from memory (~30 ms a step
   on that EPYC). A hook squares each gradient right after backward wrote it, while much of it is
   still in cache. The same squares, summed in another order: equal to rounding.

Not under DDP: there the hooks would run before DDP has averaged the gradients across processes.
"""
from __future__ import annotations

import torch
from torch import nn

import torch.nn.functional as F

from mpnet import Embeddings, position_ids_from


class SparseGradEmbeddings(Embeddings):
    """mpnet.Embeddings whose word lookup hands autograd its gradient as the looked-up rows (sparse)."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = position_ids_from(input_ids, self.padding_idx)
        x = (F.embedding(input_ids, self.word, self.padding_idx, sparse=True)
             + F.embedding(positions, self.position, self.padding_idx))
        return self.dropout(self.norm(x))


def reuse_word_gradient(embeddings: Embeddings) -> None:
    """Make the word table's gradient land in one buffer kept across steps (1. above): the module
    becomes a SparseGradEmbeddings (same parameters, same names) and the word table gets the hook.

    A table frozen at this point keeps the plain path, also when gradual unfreezing thaws it later (last,
    after every layer): autograd takes a hook only on a tensor that requires a gradient."""
    word = embeddings.word
    if isinstance(embeddings, SparseGradEmbeddings) or not word.requires_grad:  # set up already, or frozen
        return
    buffer = torch.zeros_like(word)

    def densify(param: torch.Tensor) -> None:
        grad = param.grad
        if grad is not None and grad.is_sparse:  # dense: a second backward accumulated into the buffer
            param.grad = buffer.zero_().index_add_(0, grad._indices()[0], grad._values())

    embeddings.__class__ = SparseGradEmbeddings  # a subclass that adds no state: only forward() changes
    word.register_post_accumulate_grad_hook(densify)


class GradNorm:
    """The gradients' total L2 norm, its squares summed during backward (2. above).

    Parameters that were frozen when it was built (gradual unfreezing thaws them later) have no
    hook: total() reads their gradients at the end instead.
    """

    def __init__(self, model: nn.Module):
        self.squares: list[torch.Tensor] = []
        self.unhooked = [p for p in model.parameters() if not p.requires_grad]  # listed once, not walked each step
        for p in model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self.add)

    def add(self, param: torch.Tensor) -> None:
        grad = param.grad.flatten()  # dense: reuse_word_gradient's hook, registered first, ran already
        self.squares.append(torch.dot(grad, grad))

    def total(self) -> torch.Tensor:
        """sqrt(sum of all squares) since the last call: one backward's gradients."""
        late = [p.grad.flatten() for p in self.unhooked if p.grad is not None]
        squares, self.squares = self.squares + [torch.dot(g, g) for g in late], []
        return torch.stack(squares).sum().sqrt() if squares else torch.zeros(())


def install(model: nn.Module, embeddings: Embeddings) -> GradNorm:
    """Both hooks on a model whose trainable parameters are set (after freezing): the word table's
    first, so that GradNorm squares the dense buffer, not the sparse rows. Once per model: a second
    set of hooks would count every square twice."""
    reuse_word_gradient(embeddings)
    if not isinstance(getattr(model, "grad_norm", None), GradNorm):
        model.grad_norm = GradNorm(model)
    return model.grad_norm
