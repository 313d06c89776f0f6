"""Training checkpoints: one file, written atomically, loaded without pickle.

A resumable checkpoint has five parts: model weights, optimizer state (AdamW's two moments and
step counts), the LR schedule, the sampler's position and RNG, and torch's RNG. If they were
separate files, a crash between two writes would pair new weights with an old optimizer, and a
resume would carry on from a state no run ever had. So all five go into ONE safetensors file:

    last.safetensors
      tensors   model.<param name>            the weights
                optimizer.<param index>.<key> exp_avg, exp_avg_sq, step
                rng.torch                     torch's CPU RNG state (uint8)
      metadata  format = "mpnet-train-checkpoint/1"
                state  = JSON: optimizer param groups, scheduler, sampler, progress

The file is written under a temporary name, flushed to disk, and renamed over the old one.
A rename is atomic, so at every instant, also under `kill -9` or a power cut, `last.safetensors`
is either the complete previous checkpoint or the complete new one.

Why not torch.save: its format is pickle, and unpickling a file runs whatever code the file asks
for; a run folder someone else shared could do anything on `--resume`. safetensors holds only
tensors and a JSON header, so loading one cannot execute code.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from weights.fetch import sync_folder  # the one copy: the fetcher may import nothing of the project

FORMAT = "mpnet-train-checkpoint/1"
FULL = (errno.ENOSPC, errno.EDQUOT)  # a full disk, a full quota


def write_atomic(write: Callable[[Path], None], path: Path) -> None:
    """write(tmp) then rename onto path; the data is on disk before the rename makes it visible.

    The temporary file sits in a scratch folder of its own beside the path (mkdtemp, .NAME.XXXX.tmp):
    two writers never write into one file, and a writer that itself goes through a temporary file, as
    safetensors' save_file does from 0.8 on, leaves that one in the scratch folder too, never beside
    the output. A write that fails removes the folder: only a kill -9 leaves one behind, and a fresh
    run removes it (run_folder.start_fresh). The file gets the mode open() would give it, 0666 less
    the umask, whatever mode the writer chose."""
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    tmp = scratch / path.name
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(scratch, ignore_errors=True)
        code = e.errno if isinstance(e, OSError) and e.errno in FULL else None
        if code is None and "(os error 28)" in str(e):  # safetensors' own I/O error for ENOSPC
            code = errno.ENOSPC
        if code is not None:  # named after the file it was for, not the scratch
            raise OSError(code, os.strerror(code), str(path)) from e
        raise
    scratch.rmdir()
    sync_folder(path.parent)


def disk_full(e: BaseException, then: str, path: Path | None = None) -> str | None:
    """The one line for a full disk (or quota), what to do `then` included; None for any other error.
    path: the file being written, where the error does not name it."""
    if not isinstance(e, OSError) or e.errno not in FULL:
        return None
    return (f"error: the disk is full (writing {e.filename or path or 'a file'}); what was written before "
            f"is whole: free some space, then {then}")


def umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def scratch_left_by(path: Path) -> list[Path]:
    """What a killed write_atomic of `path` can leave: its scratch folder, or (before the scratch
    folders) a NAME.XXXX.tmp file beside it. Found by prefix, so any name works."""
    names = (f".{path.name}.", f"{path.name}.")
    return [p for p in path.parent.iterdir() if p.name.startswith(names) and p.name.endswith(".tmp")]


def read_json_object(path: Path) -> dict:
    """A JSON file that must hold one object (run.json): bad JSON, a list, or nesting deep enough to
    exhaust the parser's recursion is one ValueError naming the file, not a traceback."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is not readable JSON ({type(e).__name__})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not the object a run writes")
    return value


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Model weights only (best.safetensors): what eval.py and predict need."""
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    write_atomic(lambda p: save_file(tensors, p, metadata=metadata), path)


def save_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler, sampler, progress: dict, rng_states: list[torch.Tensor] | None = None,
                        weights: dict[str, torch.Tensor] | None = None) -> None:
    """The whole resumable state as one file (see the module docstring). rng_states: the torch RNG of
    each process under torchrun, in rank order (default: this process's); weights: the part of the
    model's state dict to keep (default: all of it; reliability/base_weights.py)."""
    weights = model.state_dict() if weights is None else weights
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in weights.items()}
    opt = optimizer.state_dict()
    for index, slots in opt["state"].items():
        for key, value in slots.items():
            tensors[f"optimizer.{index}.{key}"] = value.detach().contiguous()
    rng_states = rng_states or [torch.get_rng_state()]
    tensors["rng.torch"] = rng_states[0]
    for rank, rng in enumerate(rng_states[1:], 1):
        tensors[f"rng.torch.{rank}"] = rng
    sampler_state = sampler.state_dict()
    # Each pool's remaining order as a tensor, not as JSON in the header: safetensors refuses a header over
    # 100 MB, which a JSON list passes at about 11M rows.
    for i, order in enumerate(sampler_state.pop("orders")):
        tensors[f"sampler.order.{i}"] = torch.tensor(order, dtype=torch.int64)
    state = {"optimizer_groups": opt["param_groups"], "scheduler": scheduler.state_dict(),
             "sampler": sampler_state, "progress": progress}
    metadata = {"format": FORMAT, "state": json.dumps(state)}
    write_atomic(lambda p: save_file(tensors, p, metadata=metadata), path)


def load_training_state(path: Path) -> tuple[dict, dict, dict]:
    """-> (model state dict, optimizer state dict, the rest: scheduler, sampler, progress, torch_rng: a list
    with each rank's RNG state).

    Refuses anything that is not a complete checkpoint written by save_training_state.
    """
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError(f"{path} is a safetensors file but not a train.py checkpoint "
                                 f"(format {metadata.get('format')!r}, expected {FORMAT!r})")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable checkpoint ({e}); it was not written by train.py, "
                         f"or it was damaged. Nothing was loaded.") from None
    state = json.loads(metadata["state"])
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            slots.setdefault(int(index), {})[key] = value
    groups = state.pop("optimizer_groups")
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])  # JSON made the tuple a list
    orders = sorted(int(name.rsplit(".", 1)[1]) for name in tensors if name.startswith("sampler.order."))
    if orders:  # checkpoints before the orders moved out of the header keep them in state["sampler"]
        state["sampler"]["orders"] = [tensors[f"sampler.order.{i}"].tolist() for i in orders]
    ranks = sorted(int(name.rsplit(".", 1)[1]) for name in tensors if name.startswith("rng.torch."))
    state["torch_rng"] = [tensors["rng.torch"]] + [tensors[f"rng.torch.{r}"] for r in ranks]  # one per rank
    return model, {"state": slots, "param_groups": groups}, state


def read_progress(path: Path) -> dict | None:
    """The progress record of a checkpoint (step, epoch, done...), read from its header alone; None if unreadable."""
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        return json.loads(metadata["state"])["progress"] if metadata.get("format") == FORMAT else None
    except (SafetensorError, OSError, KeyError, ValueError):
        return None
