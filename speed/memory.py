"""A process's memory: how to read its peak, and two knobs that keep it flat over a long run.

Streaming a large file through the encoder (corpus.py, predict.py --input) runs thousands of
batches of different shapes; loading the int8 encoder (quant.py) makes and frees a few hundred MB
of fp32 temporaries. In both cases memory that PyTorch had finished with stayed resident, and the
peak grew with the length of the stream. The fixes, and what each measured, are below.
"""
from __future__ import annotations

import os
from pathlib import Path


def peak_rss_mb(pid: int | str = "self") -> float | None:
    """Peak resident memory (VmHWM) of a process, this one by default, in MB; None where /proc has
    no answer (not Linux, or the process is gone). Not ru_maxrss: on Linux a child inherits its
    parent's value across fork and exec, and a running child has no rusage yet."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def bound_kernel_cache() -> None:
    """Keep memory flat over a long stream: call before the model's first forward.

    oneDNN, which runs PyTorch's CPU matrix multiplies, compiles a kernel for every new input
    shape and keeps up to 1,024 of them. Length-sorted batches of real (packed) tokens have a new
    shape almost every batch, so the cache, and the resident size, grew for the whole stream:
    encoding 8,192 sentences in chunks of 1,024 took the anonymous memory from 238 to 435 MB, and
    a 30,000-sentence corpus peaked 200 MB above a 10,000-sentence one. With the cache off, the
    same 8 chunks stayed at 193-210 MB, at the same speed in fp32 (kernels are cheap to create next
    to a batch's matrix multiplies). oneDNN reads the setting when it makes its first kernel,
    hence "before the first forward"; an explicit ONEDNN_PRIMITIVE_CACHE_CAPACITY wins."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")


def release_freed_memory() -> None:
    """Hand memory that PyTorch has freed back to the OS (glibc only; elsewhere a no-op).

    glibc keeps freed blocks in its heap for reuse, and blocks of ever-changing sizes (activations of
    batches of varying shape, the per-layer temporaries of quantisation) are not reused well.
    malloc_trim(0) returns them: loading the int8 encoder left 864 MB of anonymous memory resident,
    and 330 MB after one trim; quant.py trims after every layer, predict.py after every chunk."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass
