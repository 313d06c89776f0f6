"""What this CPU can do, and the one place that decides which precision to run in.

    from speed.hardware import describe, resolve_dtype
    print(describe())                 # "AMD EPYC (x86_64, 2 threads): avx2 avx512f avx512_bf16 ..."
    dtype = resolve_dtype("auto")     # training: bf16 where the CPU runs it natively, else fp32
    encoder_precision("auto")         # encoding: what speed.tune measured fastest here, else the flags table:
                                      # ("int8" on a CPU with VNNI, else fp32; bf16/fp32 on a GPU), and why

Why it matters: a bf16 matrix multiply is fast only where the hardware has bf16 dot-product
instructions (x86: AVX-512 BF16 or AMX; ARM: the BF16 extension). Elsewhere PyTorch emulates
it by converting to fp32 element by element, and bf16 becomes a trap: on a 2-core AVX2-only AMD
EPYC, encoding in bf16 measured 9 sentences/s against 48 in fp32 (5x slower), and a 2048^3 bf16
GEMM with oneDNN capped at AVX2 here runs at 1 GFLOP/s against 180 in fp32. int8 has the same
kind of trap: torch._int_mm is fast only where the CPU has VNNI; without it, int8 runs on FBGEMM (see quant.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

# The flags that decide which kernels run fast, in the order a reader would look for them.
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "avx512_vp2intersect",
                  "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimddp", "i8mm", "bf16", "sve")
BF16_FLAGS = {"x86_64": ("avx512_bf16", "amx_bf16"), "aarch64": ("bf16",)}
# Where torch._int_mm runs on oneDNN's int8 kernels. Measured on x86 only: an AVX-512 VNNI EPYC (fast, also
# with oneDNN capped at AVX2) and an AVX2-only EPYC (a reference loop, 10-20x slower than fp32). Not
# measured on ARM, so ARM takes the exact fp32 route, which is never slower than fp32.
INT8_FLAGS = {"x86_64": ("avx512_vnni", "avx_vnni", "amx_int8")}
INT8_SCHEME = 1  # quant.py's int8 scheme: a change to it makes a saved choice (speed/tune.py) stale
PRECISION = {"fp32": "fp32", "bf16": "bf16", "int8-onednn": "int8", "int8-fbgemm": "int8", "int8-fp32": "int8"}
SLOW_BF16 = ("bf16 matrix multiplies are emulated on this CPU ({why}): expect bf16 to run several times slower "
             "than fp32 (measured on a 2-core AVX2-only EPYC: 9 vs 48 sentences/s). dtype='auto' picks the fast "
             "path here instead: fp32 to train, and int8 (with VNNI) or fp32 to encode.")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 says flags, ARM says Features
            return frozenset(value.split())
    return frozenset()


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The model name, and on x86 the family number, which tells CPUs of one name apart: a cloud "AMD EPYC"
    of family 26 (Zen 5) has full-width AVX-512 units, twice the fp32 multiply-adds per cycle of family
    25's (Zen 4's, half width; Zen 3 has no AVX-512), and their flags differ by little more than avx_vnni."""
    name, family = None, None
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and name is None:
                name = value.strip()
            if key.strip() == "cpu family" and family is None:
                family = value.strip()
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    return f"{name}, family {family}" if family else name


def describe() -> str:
    """One line naming the CPU, its architecture, the threads torch uses and the flags that matter."""
    flags = [f for f in RELEVANT_FLAGS if f in cpu_flags()]
    caps = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
            if k in os.environ]
    return (f"{cpu_name()} ({platform.machine()}, {torch.get_num_threads()} threads): {' '.join(flags) or 'no flags read'}"
            + (f" [kernels capped: {' '.join(caps)}]" if caps else ""))


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """True where bf16 matmuls run in hardware: a CUDA GPU that supports bf16, or a CPU with the flags above."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ("SSE41", "AVX", "AVX2", "AVX2_VNNI"):
        return False  # oneDNN was told not to use the bf16 instructions, so they are emulated
    return any(f in cpu_flags() for f in BF16_FLAGS.get(platform.machine(), ()))


def native_int8() -> bool:
    """True where torch._int_mm has a fast kernel on this CPU (the flags above), whatever oneDNN is capped at:
    PyTorch chooses its kernel from the CPU's flags, and oneDNN then runs its AVX2 int8 kernels if capped."""
    return any(f in cpu_flags() for f in INT8_FLAGS.get(platform.machine(), ()))


def int8_kernel() -> str:
    """Where quant.Int8Linear adds up its integers on this CPU: "onednn" (torch._int_mm, fast with VNNI),
    "fbgemm" (an x86 CPU without VNNI: FBGEMM's AVX2 kernels, in every x86 build of torch), or "fp32" (exact
    fp32 matmuls, anywhere else). The three give the same integers; only the speed differs. A kernel that
    speed.tune measured fastest on this machine comes first."""
    choice = saved()
    if choice is not None and choice.kernel is not None:
        return choice.kernel
    if native_int8():
        return "onednn"
    if platform.machine() == "x86_64" and "fbgemm" in torch.backends.quantized.supported_engines:
        return "fbgemm"
    return "fp32"


# ----------------------------------------------------------------------------- the choice speed.tune measured
@dataclass
class Choice:
    candidate: str                                  # one of PRECISION's keys
    reason: str
    key: dict                                       # what the choice holds for (machine_key)
    sentences_per_s: dict[str, float | None] = field(default_factory=dict)  # None: not timed (why in notes)
    min_cosine: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    tuning_s: float = 0.0

    @property
    def precision(self) -> str:
        return PRECISION[self.candidate]

    @property
    def kernel(self) -> str | None:
        return self.candidate.split("-")[1] if self.precision == "int8" else None


def machine_key() -> dict:
    return {"cpu": cpu_name(), "flags": sorted(cpu_flags()), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "quant": INT8_SCHEME}


def cache_file(key: dict, kind: str = "tune", suffix: str = ".json") -> Path:
    """The user's cache folder's file for `key`: speed.tune's choice, or quant.py's calibration (kind)."""
    folder = os.environ.get("MPNET_CACHE_DIR") or (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                                                   / "mpnet")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(folder) / f"{kind}-{digest}{suffix}"


@lru_cache(maxsize=1)
def saved() -> Choice | None:
    """This machine's saved choice, or None (none yet, or one set aside with a line on stderr)."""
    key = machine_key()
    path = cache_file(key)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        choice = Choice(**raw)
        valid = choice.candidate in PRECISION and isinstance(choice.reason, str)
    except (ValueError, TypeError, RecursionError):  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        valid = False
    if not valid:
        print(f"{path}: not a choice speed.tune wrote; set aside (python -m speed.tune measures again)",
              file=sys.stderr)
        return None
    if choice.key != key:
        print(f"{path}: made for another machine or torch ({choice.key}); set aside", file=sys.stderr)
        return None
    return choice


_warned = False


def encoder_precision(dtype: str | torch.dtype | None, device: str | torch.device = "cpu") -> tuple[str, str]:
    """The encoder's precision, "fp32", "bf16" or "int8", and why, for SentenceEncoder.from_pretrained.

    'auto' on a CPU takes what speed.tune measured fastest on this machine among the candidates that
    keep the model's quality (saved()). Until a choice is saved, the flags table answers at once: on a
    CPU with VNNI, int8 linear layers (quant.py), which `bench.py --compare` measured at 1.29x and 1.25x
    native bf16 on Zen 4 and Zen 5 EPYCs (docs/encoding-speed.md); on a CPU without, fp32 (int8 on
    FBGEMM can be faster there: on an AVX2-only EPYC speed.tune measured it at 1.1-1.4x fp32). On a GPU,
    bf16 where it has it, else fp32. Training has no int8 path: it uses resolve_dtype below.
    """
    device = torch.device(device)
    if dtype == "int8":
        if device.type != "cpu":
            raise ValueError("dtype='int8' is a CPU path (oneDNN's or FBGEMM's int8 kernels); on a GPU use 'bf16' "
                             "or 'auto'")
        if int8_kernel() == "fp32":
            warnings.warn("int8 has no fast kernel on this CPU (no VNNI, and no FBGEMM in this torch): its exact sums "
                          "run as fp32 matmuls, no faster than dtype='fp32'", RuntimeWarning, stacklevel=2)
        return "int8", "as asked"
    if dtype == "auto":
        if device.type == "cpu":
            choice = saved()
            if choice is not None:
                return choice.precision, f"measured on this machine by speed.tune: {choice.reason}"
            if native_int8():
                return "int8", "int8 linear layers: the fastest path within the accuracy targets on CPUs with VNNI"
            if int8_kernel() == "fbgemm":
                return "fp32", ("no VNNI on this CPU, so the flags table says fp32 (int8 on FBGEMM may be faster "
                                "here: python -m speed.tune measures)")
            return "fp32", "no VNNI on this CPU, so int8 would be no faster than fp32"
        return ("bf16", "this GPU runs bf16 natively") if native_bf16(device) else ("fp32", "this GPU has no bf16")
    if not isinstance(dtype, torch.dtype) and dtype not in (None, "fp32", "bf16"):  # the encoder's own list
        raise ValueError(f"dtype must be 'auto', 'fp32', 'bf16' or 'int8' (or a torch dtype), not {dtype!r}")
    return ("bf16" if resolve_dtype(dtype, device) == torch.bfloat16 else "fp32"), "as asked"


def precision_of(dtype: str, device: str) -> str:
    """What a training --dtype means here: "bf16" (autocast) or "fp32" (resolve_dtype below)."""
    return "bf16" if resolve_dtype(dtype, device) == torch.bfloat16 else "fp32"


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype:
    """'auto' -> bf16 where native, else fp32; 'fp32'/'bf16' or a torch dtype as asked.

    Asking for bf16 where it is emulated runs as asked but warns once, naming what is missing.
    """
    global _warned
    names = {None: torch.float32, "fp32": torch.float32, "float32": torch.float32,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype in names:
        resolved = names[dtype]
    else:
        raise ValueError(f"dtype must be 'auto', 'fp32', 'bf16' or a torch dtype, not {dtype!r}")
    if resolved == torch.bfloat16 and torch.device(device).type == "cpu" and not native_bf16(device) and not _warned:
        _warned = True
        wanted = " or ".join(BF16_FLAGS.get(platform.machine(), ("a bf16 instruction set",)))
        why = ("oneDNN is capped below it by ONEDNN_MAX_CPU_ISA" if os.environ.get("ONEDNN_MAX_CPU_ISA")
               else f"no {wanted}")
        warnings.warn(SLOW_BF16.format(why=why), RuntimeWarning, stacklevel=2)
    return resolved
