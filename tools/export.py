"""A train.py run's encoder as a sentence-transformers model folder: fine-tune here, deploy there.

    python -m tools.export runs/stsb exported/
    SentenceTransformer("exported/").encode(sentences)         # the run's embeddings (to 1e-5)
    SentenceEncoder.from_pretrained("exported/").encode(...)   # and the project loads it back

The folder has all-mpnet-base-v2's own layout: modules.json (Transformer, then mean Pooling, then
Normalize), config.json and model.safetensors under the checkpoint's tensor names (the inverse of
mpnet.checkpoint_names), 1_Pooling/config.json, sentence_bert_config.json (the 384-token limit) and
the tokenizer files. It is the backbone alone, whatever the run trained: a pair task's embedding,
or the backbone under classification heads (the heads are not part of a sentence encoder).

The folder is written beside OUT and renamed into place when whole; an OUT that exists and is not
empty is refused, so nothing of yours is replaced.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mpnet import SKIPPED, checkpoint_names
from reliability.checkpoint import umask
from reliability.saved_run import load_run
from weights.fetch import ST_FILES, weights_dir

# all-mpnet-base-v2's files that a fine-tuned encoder keeps as they are (the run's tokenizer.json
# is its own copy of the same file; config.json gets the run's backbone sizes).
KEPT = ("config.json",) + ST_FILES


def run_config(base: Path, model) -> str:
    """all-mpnet-base-v2's config.json with each size the run's backbone has (the same, for a run that
    started from it), so that a loader builds the backbone the tensors fit."""
    raw = json.loads((base / "config.json").read_text(encoding="utf-8"))
    for field in dataclasses.fields(model.backbone.cfg):
        if field.name in raw:
            raw[field.name] = getattr(model.backbone.cfg, field.name)
    return json.dumps(raw, indent=2) + "\n"


def backbone_tensors(model) -> dict[str, torch.Tensor]:
    """The backbone's parameters under the checkpoint's names, float32 and contiguous."""
    state = model.backbone.state_dict()
    return {name: state[ours].detach().float().contiguous()
            for name, ours in checkpoint_names(model.backbone.cfg).items()}


def check_target(out: Path) -> None:
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder; name a new one (nothing was written)")


def export(run: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write run's backbone as a sentence-transformers folder at out (absent or empty); -> out."""
    run, out, base = Path(run), Path(out), weights_dir()
    check_target(out)
    missing = [name for name in KEPT if not (base / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{base} lacks {', '.join(missing)}: run `python weights/fetch.py` first")
    model, _, _ = load_run(run)  # run.json checked, the weights against it
    tensors = backbone_tensors(model)
    with safe_open(base / "model.safetensors", framework="pt") as f:  # the unused pooler, as upstream
        tensors |= {name: f.get_tensor(name).contiguous() for name in SKIPPED if name in f.keys()}
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        save_file(tensors, scratch / "model.safetensors", metadata={"format": "pt"})
        for name in KEPT:
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base / name, scratch / name)
        (scratch / "config.json").write_text(run_config(base, model), encoding="utf-8")
        shutil.copyfile(run / "tokenizer.json", scratch / "tokenizer.json")
        for path in [scratch, *scratch.rglob("*")]:  # mkdtemp's and safetensors' 0700/0600: the umask's
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask())
        check_target(out)  # still free
        if out.exists():
            out.rmdir()
        os.replace(scratch, out)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a train.py output folder (its best.safetensors)")
    parser.add_argument("out", help="the folder to write: absent or empty")
    args = parser.parse_args(argv)
    try:
        check_target(Path(args.out))
        out = export(args.run, args.out)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"{out}: a sentence-transformers model; load it with SentenceTransformer({str(out)!r}) "
          f"or SentenceEncoder.from_pretrained({str(out)!r})")


if __name__ == "__main__":
    main()
