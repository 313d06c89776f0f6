"""The speed path: everything here makes the project faster, and nothing here changes what it computes
beyond rounding. Each piece plugs in after the plain model is built, with one call:

    speed.load_encoder(dtype="auto")      an encoder in the fastest accurate precision for this machine
                                          (quant.py for int8, onednn.py for fp32 on AVX-512), packed
                                          (packing.py: the per-token layers skip the padding)
    speed.training.speed_up(model, ...)   train.py's faster step (off with --plain)
"""
from __future__ import annotations

import sys

import torch


def load_encoder(path=None, device: str | torch.device | None = None, dtype: str | torch.dtype | None = "auto"):
    """SentenceEncoder.from_pretrained, then the precision asked for: "fp32", "bf16", "int8" (quant.py) or
    "auto", the fastest path within the accuracy targets on this hardware (hardware.encoder_precision),
    which it prints with the reason. bf16 where it is emulated runs, with a warning. fp32 on a CPU with
    AVX-512 runs its linear layers through oneDNN (onednn.py): the same numbers up to summation order."""
    from mpnet import SentenceEncoder
    from speed.hardware import encoder_precision
    from speed.memory import bound_kernel_cache
    from speed.packing import pack

    bound_kernel_cache()  # before the first forward: memory stays flat over a long stream (memory.py)
    precision, why = encoder_precision(dtype, torch.device(device or "cpu"))
    if dtype == "auto":
        print(f"dtype auto: {precision} ({why})", file=sys.stderr)
    encoder = SentenceEncoder.from_pretrained(path, device, dtype="bf16" if precision == "bf16" else "fp32")
    pack(encoder.model)  # every precision: the per-token layers skip the padding (packing.py)
    if precision == "int8":
        from speed.quant import cached_ranges, quantize
        from weights.fetch import weights_dir

        weights = weights_dir(path) / "model.safetensors"
        quantize(encoder, ranges=cached_ranges(encoder, weights), weights_file=weights)  # a layer at a time
    if precision == "fp32":
        from speed.onednn import use_where_it_helps

        use_where_it_helps(encoder, device)
    return encoder
