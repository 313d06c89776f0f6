"""STS-B fine-tuning, the project's pair task against sentence-transformers' own trainer, in one run.

    python experiments/stsb_peer.py                         # this session's budget (see --help)
    python experiments/stsb_peer.py --epochs 4 --max-train 0 --seeds 0 1 2   # the full study
    python experiments/stsb_peer.py --table-only

Both start from all-mpnet-base-v2 and train on the same STS-B training pairs (train.py's own
selection: data.load_tasks with the same --max-train and seed) with CoSENT, scale 20. The peer is
SentenceTransformerTrainer with CoSENTLoss, as sentence-transformers' STS-B example configures it:
batch 16, warmup 10%, its default learning rate 5e-5 and weight decay 0, gradient clipping at 1.
The project gets the same numbers as flags. The two alternate cell by cell, seed by seed, on
one CPU. Each reports STS-B test Spearman (cosine, x100) and its training seconds alone (no
validation, no test scoring): train.py's epoch_train_s, the trainer's train_runtime.

Each cell (system, seed) is one JSON in experiments/results/stsb_peer/<budget>/; cells already there
are skipped. Needs requirements-bench.txt (datasets, accelerate) for the peer.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from cells import cell  # noqa: E402

LR, WARMUP, BATCH, WEIGHT_DECAY = 5e-5, 0.1, 16, 0.0


def project(seed: int, epochs: int, max_train: int, threads: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="stsb-peer-"))
    try:
        command = [sys.executable, str(ROOT / "train.py"), "--task-a", "stsb", "--task-b", "none",
                   "--epochs", str(epochs), "--max-train", str(max_train), "--seed", str(seed),
                   "--batch-size", str(BATCH), "--lr", str(LR), "--warmup", str(WARMUP),
                   "--weight-decay", str(WEIGHT_DECAY), "--out", str(out / "run"), "--log-every", "50"]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            raise SystemExit(f"train.py failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        history = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
        return {"system": "project", "seed": seed, "spearman": result["spearman_a_stsb_test"],
                "train_s": round(sum(r["train_s"] for r in history), 1), "epochs": epochs,
                "max_train": max_train, "command": " ".join(command[1:])}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def peer(seed: int, epochs: int, max_train: int, threads: int) -> dict:
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.losses import CoSENTLoss

    import data
    import metrics
    from train_config import TrainConfig
    from weights.fetch import weights_dir

    torch.set_num_threads(threads)
    train, _, final = data.load_tasks(TrainConfig(task_a="stsb", task_b="none", max_train=max_train, seed=seed))
    pairs, test = train["a"], final["a"]
    model = SentenceTransformer(str(weights_dir()), device="cpu")
    dataset = Dataset.from_dict({"sentence1": pairs.first, "sentence2": pairs.second,
                                 "score": [s / 5 for s in pairs.scores]})
    out = Path(tempfile.mkdtemp(prefix="stsb-peer-st-"))
    try:
        args = SentenceTransformerTrainingArguments(
            output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=BATCH,
            learning_rate=LR, warmup_ratio=WARMUP, weight_decay=WEIGHT_DECAY, seed=seed,
            save_strategy="no", report_to=[], logging_steps=50, use_cpu=True)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                             loss=CoSENTLoss(model))
        runtime = trainer.train().metrics["train_runtime"]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    emb = model.encode(test.first + test.second, batch_size=32, convert_to_numpy=True)
    cos = metrics.cosines(emb[:len(test)], emb[len(test):])
    return {"system": "sentence-transformers", "seed": seed, "spearman": round(100 * metrics.spearman(cos, test.scores), 2),
            "train_s": round(runtime, 1), "epochs": epochs, "max_train": max_train,
            "config": {"lr": LR, "warmup_ratio": WARMUP, "batch": BATCH, "weight_decay": WEIGHT_DECAY,
                       "loss": "CoSENTLoss(scale=20)"}}


def table(folder: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    if not rows:
        return "no cells yet"
    lines = [f"STS-B test Spearman (cosine, x100) after CoSENT fine-tuning; budget: {folder.name}; "
             f"CPU: {rows[0]['cpu']}", "",
             "| system | seeds | Spearman, mean ± std | training s, median (min-max) |",
             "|---|---|---|---|"]
    for system in ("project", "sentence-transformers"):
        mine = [r for r in rows if r["system"] == system]
        if not mine:
            continue
        sp = [r["spearman"] for r in mine]
        ts = [r["train_s"] for r in mine]
        std = statistics.stdev(sp) if len(sp) > 1 else float("nan")
        lines.append(f"| {system} | {', '.join(str(r['seed']) for r in mine)} | {statistics.mean(sp):.2f} ± "
                     f"{std:.2f} | {statistics.median(ts):.0f} ({min(ts):.0f}-{max(ts):.0f}) |")
    both = {r["seed"]: r for r in rows if r["system"] == "project"}
    ratios = [both[r["seed"]]["train_s"] / r["train_s"] for r in rows
              if r["system"] == "sentence-transformers" and r["seed"] in both]
    if ratios:
        lines += ["", f"project / sentence-transformers training time, per seed: "
                      f"{', '.join(f'{x:.2f}' for x in ratios)}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-train", type=int, default=1600, help="0: all 5,749 training pairs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    folder = HERE / "results" / "stsb_peer" / f"{args.epochs}ep-{args.max_train or 'all'}"
    if not args.table_only:
        for seed in args.seeds:
            for name, run in (("project", project), ("st", peer)):
                started = time.time()
                cell(folder, f"{name}-seed{seed}", lambda: run(seed, args.epochs, args.max_train, args.threads))
                print(f"{name} seed {seed}: {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    text = table(folder)
    if folder.is_dir():  # the default budget's table is experiments/stsb_peer.md, another budget's beside it
        default = args.epochs == 1 and args.max_train == 1600
        (HERE / ("stsb_peer.md" if default else f"stsb_peer_{folder.name}.md")).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
