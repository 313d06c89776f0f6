"""The word-embedding table's gradient, written into one buffer that lives as long as the model.

Why. Backward of a plain `F.embedding` allocates a fresh dense (30527, 768) gradient every step,
94 MB, though a batch of 16 sentences touches a few hundred of its rows. An allocation that large
never stays in the process: glibc hands anything over 32 MB back to the kernel on free, so each
step maps 94 MB anew and takes ~23,000 page faults while zeroing it. On the 2-core AMD EPYC of
README "Training speed", `torch.zeros(30527, 768)` took ~50 ms; zeroing a buffer already in memory
takes ~9 ms.

How. The lookup asks autograd for a sparse gradient instead (the T looked-up rows, T x 768, in
token order). As soon as it lands in `.grad`, a hook adds those rows into the kept buffer and makes
the buffer `.grad`, so clipping and the fused AdamW see the usual dense gradient:

    backward  ->  .grad = sparse (indices: token ids, values: T x 768)
    hook      ->  buffer.zero_().index_add_(0, indices, values);  .grad = buffer
    zero_grad(set_to_none=True) drops .grad; the buffer stays for the next step

`index_add_` adds the rows in the same order as embedding's own dense backward, so the gradient is
bit-identical, not merely close (tests/test_word_grad.py). A second backward before zero_grad adds
its sparse rows into the dense `.grad`, as autograd does for any sparse gradient: the same sum,
rounded in another order where both batches share a token.

Single process only: under DDP the hook would densify a gradient that DDP is still reducing.
"""
from __future__ import annotations

import torch

from mpnet import Embeddings


def reuse_word_gradient(embeddings: Embeddings) -> None:
    """Make the word table's gradient land in one buffer kept across steps (see the module docstring).

    A table frozen at this point keeps the plain path, also when gradual unfreezing thaws it later (last,
    after every layer): autograd takes a hook only on a tensor that requires a gradient."""
    word = embeddings.word
    if embeddings.sparse_grad or not word.requires_grad:  # set up already (one buffer is enough), or frozen
        return
    buffer = torch.zeros_like(word)

    def densify(param: torch.Tensor) -> None:
        grad = param.grad
        if grad is not None and grad.is_sparse:  # dense: a second backward accumulated into the buffer
            param.grad = buffer.zero_().index_add_(0, grad._indices()[0], grad._values())

    embeddings.sparse_grad = True
    word.register_post_accumulate_grad_hook(densify)
