"""Evaluation. Metrics are written out in numpy (tests cross-check them against scipy).

    python eval.py --stsb test        # cosine-Spearman of the bare encoder on STS-B (x100)
"""
from __future__ import annotations

import argparse

import numpy as np


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n; tied values share the mean of the ranks they span (as scipy's 'average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # start a new group wherever the sorted value changes
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2  # mean of ranks s+1 .. e
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    return float((a @ b) / np.sqrt((a @ a) * (b @ b)))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the ranks."""
    return pearson(rankdata(a), rankdata(b))


def stsb_spearman(encoder, split: str = "test", data_dir: str | None = None, batch_size: int = 32) -> float:
    """Cosine similarity of the two sentences' embeddings, Spearman against the gold scores, x100."""
    from data import read_stsb

    pairs = read_stsb(split, data_dir)
    first = encoder.encode([p[0] for p in pairs], batch_size=batch_size)
    second = encoder.encode([p[1] for p in pairs], batch_size=batch_size)
    cosine = (first * second).sum(dim=1).numpy()  # rows are unit length
    return 100 * spearman(cosine, np.array([p[2] for p in pairs]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stsb", metavar="SPLIT", choices=["train", "dev", "test"], help="STS-B split")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    if args.stsb:
        import torch

        from mpnet import SentenceEncoder

        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        encoder = SentenceEncoder.from_pretrained(dtype=dtype)
        score = stsb_spearman(encoder, args.stsb, args.data_dir)
        print(f"STS-B {args.stsb} cosine-Spearman ({args.dtype}): {score:.2f}")
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
