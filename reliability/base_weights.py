"""Run folders the size of what trained: a frozen part of the backbone is not saved again.

A run whose backbone starts as all-mpnet-base-v2's model.safetensors and stays partly frozen
saves, in best.safetensors and last.safetensors, only the parameters that trained (the heads,
and any backbone layers that were unfrozen). The frozen rest is bit-identical to the file it
came from (freeze.py), so run.json pins that file by its sha256 instead of copying 438 MB:

    "base_weights": {"file": ".../model.safetensors", "sha256": "78c0197b..."}

Loading (eval.py, predict.py, --resume, tools.export) fills the missing parameters from a file
with that sha256, and refuses in one line if there is none. A full fine-tune trains every
parameter, so it saves them all, as before, and needs no reference.
"""
from __future__ import annotations

import hashlib
import sys
from functools import lru_cache
from pathlib import Path

import torch

from weights.fetch import DEFAULT_DIR, PINNED, fetch, weights_dir

PREFIX = "backbone."  # the backbone's parameters in a MultiTaskModel's state dict


def sha256_of(path: Path) -> str:
    """The file's sha256 (0.9 s for 438 MB), computed once per process per file version."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def reference(backbone: torch.nn.Module) -> dict | None:
    """{"file", "sha256"} of the weights folder's model.safetensors if `backbone` holds its weights
    (its word embeddings compared exactly: a backbone built otherwise, a test's tiny one, say,
    has none), else None."""
    from safetensors import safe_open

    path = weights_dir() / "model.safetensors"
    if not path.is_file():
        return None
    with safe_open(path, framework="pt") as f:
        if "embeddings.word_embeddings.weight" not in f.keys():
            return None
        word = f.get_tensor("embeddings.word_embeddings.weight")
    own = backbone.embeddings.word.detach().cpu()
    if word.shape != own.shape or not torch.equal(word, own.to(word.dtype)):
        return None
    return {"file": str(path.resolve()), "sha256": sha256_of(path)}


def trained_part(model: torch.nn.Module, base: dict | None) -> dict[str, torch.Tensor]:
    """The state dict to save: all of it without a base reference, else everything but the backbone
    parameters that are frozen now (freezing only ever thaws, so frozen now means never trained)."""
    state = model.state_dict()
    if base is None:
        return state
    frozen = {PREFIX + name for name, p in model.backbone.named_parameters() if not p.requires_grad}
    return {k: v for k, v in state.items() if k not in frozen}


def find(base: dict, what: str) -> Path:
    """A model.safetensors whose sha256 is base's: $MPNET_WEIGHTS_DIR's, the project's own folder's
    (fetched there first if it is empty and base is the pinned file), or the one the run started
    from. Else a ValueError in one line."""
    candidates = [weights_dir() / "model.safetensors", DEFAULT_DIR / "model.safetensors", Path(base["file"])]
    pinned = base["sha256"] == PINNED["model.safetensors"][1]
    if pinned and not any(p.is_file() for p in candidates[:2]):
        print(f"{what} needs all-mpnet-base-v2's weights, which are not here; fetching them", file=sys.stderr)
        fetch()
    for path in dict.fromkeys(candidates):
        if path.is_file() and sha256_of(path) == base["sha256"]:
            return path
    looked = ", ".join(str(p) for p in dict.fromkeys(candidates))
    fix = "python weights/fetch.py fetches it" if pinned else "put that file in $MPNET_WEIGHTS_DIR"
    raise ValueError(f"{what} saves only the trained parameters; the frozen rest is the model.safetensors "
                     f"with sha256 {base['sha256'][:12]}..., and no file matches it ({looked}): {fix}")


def frozen_rest(base: dict, backbone_cfg, what: str) -> dict[str, torch.Tensor]:
    """The base file's backbone parameters, named as in a MultiTaskModel's state dict."""
    from mpnet import load_checkpoint

    backbone = load_checkpoint(find(base, what), backbone_cfg)
    return {PREFIX + k: v for k, v in backbone.state_dict().items()}


def complete(weights: dict[str, torch.Tensor], base: dict | None, backbone_cfg, what: str) -> dict:
    """Saved weights, with the frozen rest filled in from base's file if the backbone's are not all
    there (else as they are: a full fine-tune, or a run from before this file)."""
    from mpnet import checkpoint_names

    if base is None or sum(k.startswith(PREFIX) for k in weights) == len(checkpoint_names(backbone_cfg)):
        return weights
    return frozen_rest(base, backbone_cfg, what) | weights


def check_unchanged(base: dict | None, out: Path) -> None:
    """--resume of a run that saved only what trained: its frozen rest comes from the weights that
    loaded now (weights_dir()), so they must still be the file the run started from."""
    if base is None:
        return
    path = weights_dir() / "model.safetensors"
    if not path.is_file() or sha256_of(path) != base["sha256"]:
        raise ValueError(f"--resume: {out} saved only what trained, on top of the model.safetensors with "
                         f"sha256 {base['sha256'][:12]}..., and {path} is not that file now; restore it "
                         f"(python weights/fetch.py), or start a fresh run with another --out")
