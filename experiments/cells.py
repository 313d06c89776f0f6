"""One result file per experiment cell: a cell whose JSON exists is read back, not run again, so a
table can be completed across sessions and any cell rerun by deleting its file."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Callable

from reliability.checkpoint import write_atomic
from speed.hardware import cpu_flags, cpu_name, describe

ROOT = Path(__file__).resolve().parent.parent


def cell(results: Path, name: str, compute: Callable[[], dict]) -> dict:
    """results/NAME.json if it exists; else compute(), stamped with this CPU and the code's commit, written
    atomically."""
    path = results / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = compute() | {"cpu": describe(), "commit": commit}
    results.mkdir(parents=True, exist_ok=True)
    write_atomic(lambda p: p.write_text(json.dumps(result, indent=2)), path)
    return result


def cpu_type() -> str:
    """This CPU's type in a file name: "family26-avx512" (Zen 5). The family number alone does not say
    enough, since Zen 3 (AVX2 only) and Zen 4 (AVX-512) are both family 25."""
    family = cpu_name().rpartition("family ")[2] if "family" in cpu_name() else "unknown"
    return f"family{family}-{'avx512' if 'avx512f' in cpu_flags() else 'avx2'}"


def frozen_embeddings(texts: list[str]):
    """(N, 768) numpy: the embeddings heads on a frozen backbone read (raw mean-pooled), computed as
    train.py's feature cache computes them (bf16 autocast where the CPU runs it natively, as --dtype auto).
    The encoder is loaded once per process."""
    import torch

    from freeze import freeze_backbone
    from heads import MultiTaskModel
    from speed.feature_cache import FeatureCache
    from speed.hardware import native_bf16

    global _PROBE_MODEL
    if "_PROBE_MODEL" not in globals():
        from mpnet import SentenceEncoder

        encoder = SentenceEncoder.from_pretrained()
        _PROBE_MODEL = (MultiTaskModel(encoder.model, {"a": 2}), encoder.tokenizer)
        freeze_backbone(_PROBE_MODEL[0])
    model, tokenizer = _PROBE_MODEL
    cache = FeatureCache(model, tokenizer, texts, autocast=native_bf16())
    return torch.stack([cache.features[tuple(ids)] for ids in tokenizer.encode(texts)]).float().numpy()
