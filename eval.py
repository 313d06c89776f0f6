"""Evaluation. Metrics are written out in numpy (tests cross-check them with scikit-learn, scipy).

    python eval.py --checkpoint runs/default --dataset reviews-topic --split test
    python eval.py --checkpoint runs/tickets     # a run on your own data: the test rows it saved
    python eval.py --stsb test                  # the bare encoder's STS-B cosine-Spearman (x100)
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from metrics import cosines, pearson, rankdata, retrieval, spearman  # noqa: F401 (eval.spearman)
from reliability.flags import device
from reliability.saved_run import load_run  # run.json checked, the weights against it


# ----------------------------------------------------------------------------- classification
def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j] = examples of true class i predicted as class j."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return counts


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """Accuracy; per-class precision, recall, F1 and support; macro and weighted averages.

    A class never predicted has precision 0 (and F1 0), as scikit-learn's zero_division=0.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    weights = support / support.sum()
    return {
        "accuracy": float(tp.sum() / cm.sum()),
        "precision": precision, "recall": recall, "f1": f1, "support": support,
        "macro": {"precision": precision.mean(), "recall": recall.mean(), "f1": f1.mean()},
        "weighted": {"precision": precision @ weights, "recall": recall @ weights,
                     "f1": f1 @ weights},
        "confusion": cm,
    }


def format_report(report: dict, label_names: list[str]) -> str:
    width = max(12, max(len(n) for n in label_names))
    lines = [f"accuracy {100 * report['accuracy']:.2f}%", "",
             f"{'class':{width}}  precision  recall     f1  support"]
    for i, name in enumerate(label_names):
        lines.append(f"{name:{width}}  {report['precision'][i]:9.3f} {report['recall'][i]:7.3f} "
                     f"{report['f1'][i]:6.3f} {report['support'][i]:8d}")
    for avg in ("macro", "weighted"):
        r = report[avg]
        lines.append(f"{avg + ' avg':{width}}  {r['precision']:9.3f} {r['recall']:7.3f} "
                     f"{r['f1']:6.3f} {int(report['support'].sum()):8d}")
    return "\n".join(lines)


def format_confusion(cm: np.ndarray, label_names: list[str], max_full: int = 12) -> str:
    """The whole matrix for a few classes; for many (Banking77's 77), the most frequent mix-ups."""
    if len(label_names) <= max_full:
        short = [n[:10] for n in label_names]
        lines = ["confusion (rows: true, columns: predicted)",
                 " " * 12 + " ".join(f"{s:>10}" for s in short)]
        for i, row in enumerate(cm):
            lines.append(f"{short[i]:>11} " + " ".join(f"{v:10d}" for v in row))
        return "\n".join(lines)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    pairs = sorted(((off[i, j], i, j) for i, j in zip(*np.nonzero(off))), reverse=True)[:15]
    return "\n".join(["most frequent confusions (true -> predicted: count)"] +
                     [f"  {label_names[i]} -> {label_names[j]}: {n}" for n, i, j in pairs])


def confident_mistakes(texts: list[str], y_true: np.ndarray, probs: np.ndarray,
                       label_names: list[str], k: int = 10) -> str:
    """The k wrong predictions the model was surest of: where to look first in error analysis."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y_true)
    surest_first = wrong[np.argsort(-probs[wrong, pred[wrong]])]
    lines = [f"most confident mistakes ({len(wrong)} wrong in all)"]
    for i in surest_first[:k]:
        lines.append(f"  p={probs[i, pred[i]]:.2f} predicted {label_names[pred[i]]}, "
                     f"true {label_names[y_true[i]]}: {texts[i]!r}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- correlation (STS-B)
def stsb_spearman(encoder, split: str = "test", data_dir: str | None = None,
                  batch_size: int = 32) -> float:
    """Cosine similarity of each pair's embeddings, Spearman against the gold scores, x100."""
    from data import read_stsb

    pairs = read_stsb(split, data_dir)
    unique = list(dict.fromkeys(s for p in pairs for s in p[:2]))  # each sentence once
    row = {s: i for i, s in enumerate(unique)}
    emb = encoder.encode(unique, batch_size=batch_size)
    first, second = emb[[row[p[0]] for p in pairs]], emb[[row[p[1]] for p in pairs]]
    cosine = (first * second).sum(dim=1).numpy()  # rows are unit length
    return 100 * spearman(cosine, np.array([p[2] for p in pairs]))


# ----------------------------------------------------------------------------- a trained run
def evaluate_checkpoint(folder: str, dataset: str | None = None, split: str = "test",
                        data_dir: str | None = None, device: str = "cpu") -> str:
    """Reports for a train.py run: on a named dataset, or (dataset=None) each task on its own data:
    the test rows a run on your own files saved (test-a.jsonl / test-b.jsonl), the `split` of a
    built-in dataset. A classification task gets its report; a pair task its correlation (scored
    pairs) or retrieval (positive pairs). The data load before the model does."""
    import data
    from train import pair_scores

    if dataset in data.PAIR_DATASETS:
        ds = data.PAIR_DATASETS[dataset](split, data_dir)  # fails before the model loads
    else:
        ds = data.load(dataset, split, data_dir) if dataset else None
    if dataset is None:
        cases = own_test_sets(Path(folder), split, data_dir)
    model, tokenizer, info = load_run(folder)
    model.to(device)
    if dataset is not None:
        task = next((t for t, v in info["tasks"].items() if v["dataset"] == dataset), None)
        if task is None:
            trained = ", ".join(v["dataset"] for v in info["tasks"].values())
            raise ValueError(f"{folder} has no head for {dataset!r}; its heads were trained on: "
                             f"{trained}")
        if (isinstance(ds, data.LabelledTexts)
                and ds.label_names != info["tasks"][task]["label_names"]):
            raise ValueError(f"{dataset}/{split} labels differ from those the head was trained on")
        cases = [(task, ds)]
    reports = []
    for task, ds in cases:
        if isinstance(ds, data.SentencePairs):
            scores = pair_scores(model, tokenizer, task, ds, autocast=False, with_loss=False)
            shown = ", ".join(f"{name.rsplit('_', 1)[0]} {100 * v:.2f}"
                              for name, v in scores.items())
            reports.append(f"{folder}: task {task} on {ds.name} ({ds.split}, {len(ds)} pairs)\n"
                           f"{shown}")
            continue
        names = ds.label_names
        probs = model.predict_proba(tokenizer, ds.texts)[task].numpy()
        y = np.array(ds.labels)
        report = classification_report(y, probs.argmax(axis=1), len(names))
        reports += [f"{folder}: task {task} on {ds.name} ({ds.split}, {len(ds)} examples)",
                    format_report(report, names), format_confusion(report["confusion"], names),
                    confident_mistakes(ds.texts, y, probs, names)]
    return "\n\n".join(reports)


def own_test_sets(folder: Path, split: str, data_dir: str | None) -> list[tuple[str, object]]:
    """(task, dataset) for each task of the run at folder: its saved test rows, or its built-in
    dataset's split."""
    import data
    from reliability.checkpoint import read_json_object

    cases = []
    for task, spec in read_json_object(folder / "run.json")["tasks"].items():
        if "test_rows" in spec:
            path = folder / spec["test_rows"]
            if "pair_loss" in spec:
                pairs = data.read_pairs(path, (-math.inf, math.inf))
                cases.append((task, replace(pairs, split="test")))
            else:
                rows = data.read_user_rows(path, "text", "label")
                cases.append((task, data.user_dataset(path, rows, spec["label_names"], "test")))
        elif spec["dataset"] in data.PAIR_DATASETS:
            cases.append((task, data.PAIR_DATASETS[spec["dataset"]](split, data_dir)))
        else:
            cases.append((task, data.load(spec["dataset"], split, data_dir)))
    return cases


def main() -> None:
    from data import DATASETS, PAIR_DATASETS

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a train.py output folder (uses its best.safetensors)")
    parser.add_argument("--dataset", choices=list(DATASETS | PAIR_DATASETS),
                        help="a built-in dataset to score the checkpoint on (default: each task on "
                             "its own data: --split of a built-in dataset, the test rows a run on "
                             "your own files saved)")
    parser.add_argument("--split", default="test", choices=["train", "dev", "test"])
    parser.add_argument("--stsb", metavar="SPLIT", choices=["train", "dev", "test"],
                        help="STS-B split")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "int8", "auto"], default="fp32",
                        help="for --stsb")
    parser.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    if args.checkpoint and not (Path(args.checkpoint) / "run.json").is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no run.json there; give a train.py "
                     f"output folder")
    if args.stsb:
        from speed import load_encoder

        encoder = load_encoder(device=args.device, dtype=args.dtype)
        score = stsb_spearman(encoder, args.stsb, args.data_dir)
        print(f"STS-B {args.stsb} cosine-Spearman ({args.dtype}): {score:.2f}")
    elif args.checkpoint:
        try:
            print(evaluate_checkpoint(args.checkpoint, args.dataset, args.split, args.data_dir,
                                      args.device))
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f"error: {e}")
    else:
        parser.error("give --checkpoint (and --dataset for a built-in one), or --stsb SPLIT")


if __name__ == "__main__":
    main()
