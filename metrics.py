"""How a pair task is scored: the correlation of cosine with gold scores, and retrieval among pairs.

    spearman(cosines, gold)                    # STS-B's measure: Spearman's rho of cosine vs score
    retrieval(anchors, positives)              # in-batch negatives' measure: {"acc1", "mrr10"}

Written out in numpy; tests cross-check them with scipy. train.py validates a pair task with these,
and eval.py reports them.
"""
from __future__ import annotations

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


def cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row i's cosine similarity: (N, D), (N, D) -> (N,)."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    norms = np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1)
    return (first * second).sum(axis=1) / np.maximum(norms, 1e-12)


def retrieval(anchors: np.ndarray, positives: np.ndarray, k: int = 10) -> dict[str, float]:
    """Each anchor searches all the positives by cosine; its own is the right answer.
    acc1: the share found first; mrr10: the mean of 1 / its rank, 0 beyond rank k."""
    a = np.asarray(anchors, dtype=np.float64)
    p = np.asarray(positives, dtype=np.float64)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    sims = a @ p.T
    own = np.diag(sims)
    rank = 1 + (sims > own[:, None]).sum(axis=1)  # ties go the anchor's way
    return {"acc1": float(np.mean(rank == 1)), "mrr10": float(np.mean(np.where(rank <= k, 1 / rank, 0.0)))}
