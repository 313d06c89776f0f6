"""The speed path: everything here makes the project faster, and nothing here changes what it computes
beyond rounding. Each piece plugs in after the plain model is built, with one call:

    speed.load_encoder(dtype="auto")      an encoder in the fastest accurate precision for this machine
    speed.training.speed_up(model, ...)   train.py's faster step (off with --plain)
"""
from __future__ import annotations

import sys

import torch


def load_encoder(path=None, device: str | torch.device | None = None, dtype: str | torch.dtype | None = "auto"):
    """SentenceEncoder.from_pretrained, then the precision asked for: "fp32", "bf16", "int8" (quant.py) or
    "auto", the fastest path within the accuracy targets on this hardware (hardware.encoder_precision),
    which it prints with the reason. bf16 where it is emulated runs, with a warning."""
    from mpnet import SentenceEncoder
    from speed.hardware import encoder_precision

    precision, why = encoder_precision(dtype, torch.device(device or "cpu"))
    if dtype == "auto":
        print(f"dtype auto: {precision} ({why})", file=sys.stderr)
    encoder = SentenceEncoder.from_pretrained(path, device, dtype="bf16" if precision == "bf16" else "fp32")
    if precision == "int8":
        from speed.quant import quantize

        quantize(encoder)
    return encoder
