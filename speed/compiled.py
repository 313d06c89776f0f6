"""torch.compile for long fp32 encoding jobs: `python -m scale.corpus --input ... --compile`.

Inductor compiles the plain encoder's forward into fused CPU kernels. `freezing` treats the weights as
constants, so that it can prepack them for oneDNN. On a Zen 4 EPYC that ran 1.10x faster than the eager
fp32 path (speed.load_encoder, oneDNN linear layers) with the same embeddings to 1e-5, after 31 s of
compiling from a cold cache: a job pays that back above about 24,000 sentences
(experiments/compile_breakeven.md). So it is one flag for long jobs, never the default.

fp32 only: compiling the int8 path fuses the rounding of its per-token quantisation differently, and its
integers would no longer be those every other kernel computes (quant.py).
"""
from __future__ import annotations

import torch

BREAKEVEN = "about 24,000 sentences on a Zen 4 EPYC (experiments/compile_breakeven.md)"


def compiled_encoder(path=None, device: str | torch.device | None = None):
    """SentenceEncoder.from_pretrained in fp32, its forward compiled (dynamic shapes: batches of any length
    share one compile). The compile happens at the first encode()."""
    import torch._inductor.config as inductor

    from mpnet import SentenceEncoder

    inductor.freezing = True
    encoder = SentenceEncoder.from_pretrained(path, device)
    encoder.model.forward = torch.compile(encoder.model.forward, dynamic=True)
    return encoder
