"""Readers for the benchmark data in ../shared/data (never copied into this repo).

The folder is named by --data-dir, else $MPNET_DATA_DIR, else ../shared/data beside the repo.
Each reader follows the quirks documented in that dataset's SOURCE.md.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DATA_ENV = "MPNET_DATA_DIR"


def data_dir(path: str | os.PathLike | None = None) -> Path:
    folder = Path(path or os.environ.get(DATA_ENV) or ROOT.parent / "shared" / "data")
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {folder} does not exist; pass --data-dir or set ${DATA_ENV}")
    return folder


def read_stsb(split: str, folder: str | os.PathLike | None = None) -> list[tuple[str, str, float]]:
    """STS Benchmark pairs (sentence1, sentence2, gold score 0..5) for split train/dev/test.

    The sentences contain bare double quotes, so the TSV is read with quoting off.
    """
    path = data_dir(folder) / "stsb" / f"sts-{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (STS-B splits are train, dev, test)")
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        pairs = []
        for line, r in enumerate(rows, start=2):
            try:
                pairs.append((r["sentence1"], r["sentence2"], float(r["score"])))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{line}: malformed STS-B row ({e})") from e
    if not pairs:
        raise ValueError(f"{path} holds no rows")
    return pairs
