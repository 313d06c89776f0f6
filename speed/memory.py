"""A process's memory: how to read its peak, and two knobs that keep it flat over a long run.

Streaming a large file through the encoder (corpus.py, predict.py --input) runs thousands of
batches of different shapes; loading the int8 encoder (quant.py) makes and frees a few hundred MB
of fp32 temporaries. In both cases memory that PyTorch had finished with stayed resident, and the
peak grew with the length of the stream. The fixes, and what each measured, are below.
"""
from __future__ import annotations

import os
from functools import lru_cache
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

    oneDNN, which runs PyTorch's int8 and bf16 products (and fp32 ones on AVX-512: onednn.py), compiles
    a kernel for every new input shape and keeps up to 1,024 of them, and ideep, PyTorch's layer over
    it, keeps its own cache of 1,024 more (LRU_CACHE_CAPACITY). Length-sorted batches of real (packed)
    tokens have a new shape almost every batch, so the caches, and the resident size, grew for the whole
    stream: with oneDNN's fp32 linear layers, 8 chunks of 1,024 Banking77 sentences took the anonymous
    memory from 180 to 279 MB. A cache of 16 keeps the three shapes of the batch at hand (q/k/v/o, FFN in,
    FFN out) for all 12 layers and drops them after: 167-168 MB over the same chunks, and no slower.
    A cache of 0 (this function's earlier setting) made oneDNN compile a kernel for every call, which cost
    oneDNN's fp32 20% of its speed (and LRU_CACHE_CAPACITY=0 crashes PyTorch 2.13). The caches read the
    setting when they make their first kernel, hence "before the first forward"; a value you set wins."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
    os.environ.setdefault("LRU_CACHE_CAPACITY", "16")


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



def read_tensor(path: Path, name: str):
    """One float32 tensor of a safetensors file, read into the process's own memory rather than mapped.

    mpnet.load_checkpoint maps the file, and a mapped file's pages count as resident once read: after
    quantize() had read every fp32 weight once to make its int8 copy, all 438 MB of the file stayed
    resident beside the int8 weights, because the embeddings that stay fp32 keep the map alive (428 MB of
    file pages after an int8 load on the AVX2 EPYC). Read with pread instead, a weight is freed with its
    layer, and the file's pages stay the page cache's. (The format: an 8-byte little-endian header length,
    a JSON header of dtype, shape and byte offsets, then the data.)"""
    import torch

    stat = path.stat()
    data_start, header = safetensors_header(str(path), stat.st_size, stat.st_mtime_ns)
    entry = header[name]
    if entry["dtype"] != "F32":
        raise ValueError(f"{path}: {name} is {entry['dtype']}, expected F32")
    start, end = entry["data_offsets"]
    data = bytearray(end - start)
    with open(path, "rb") as f:
        f.seek(data_start + start)
        f.readinto(data)
    return torch.frombuffer(data, dtype=torch.float32).reshape(entry["shape"])


@lru_cache(maxsize=4)
def safetensors_header(path: str, size: int, mtime_ns: int) -> tuple[int, dict]:
    """(where the data starts, the JSON header) of a safetensors file, read once per file version."""
    import json
    import struct

    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return 8 + length, json.loads(f.read(length))
