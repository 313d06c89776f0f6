"""Training strategies with few labels, over several seeds: where freezing and layer-wise learning
rates should matter (ULMFiT, SetFit), rather than on full data where they are all within noise.

    python experiments/fewshot.py                      # every missing cell: K=8 first, seed by seed
    python experiments/fewshot.py --k 8 --rows heads flat
    python experiments/fewshot.py --rows setfit        # the SetFit reference, K=8 only (pip install -r requirements-bench.txt)
    python experiments/fewshot.py --k 8 --rows contrastive   # a contrastive stage, then Banking77 (K=8 only)
    python experiments/fewshot.py --table-only

Data: K = 8 or 32 training examples per class from Banking77 (77 intents) and from SST-2 (2 labels),
drawn per seed (train.py --per-class K: the seed picks the examples and the heads' initialisation).
Test: all of Banking77 test (3,080) and SST-2 dev (872).

Budget: a fixed number of optimizer steps of 16 examples, STEPS[K], with no validation split: K
examples per class leave nothing to hold out, so each run keeps its last step (SetFit's practice
too). 400 steps are 10 passes over the 632 joint examples at K=8; 800 steps are 5 passes over the
2,528 at K=32. The heads-only row gets 10x the steps, which its cached backbone makes cheap. Every
full-model row gets the same steps, so wall time is the cost column. Each result also keeps the
final training loss per task: near zero means the run had converged on its small set.

The contrastive row (K=8) is SetFit's and CPFT's idea done with this project's own parts: first the
embedding is trained on pairs of the K-shot set with the same label (train.py, a pair task with
in-batch negatives: every other pair of the batch, mostly of other labels, is a negative), then the
trained run is exported (tools.export) and the single-task Banking77 row starts from it
($MPNET_WEIGHTS_DIR) instead of all-mpnet-base-v2. Its wall time is both stages'.

Each cell (K, seed, row) is one JSON in experiments/results/fewshot/, written when it finishes;
cells already there are skipped, so the study completes across sessions. Its run folder (1.7 GB of
checkpoints) is deleted once the JSON is written.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from cells import cell  # noqa: E402

RESULTS = HERE / "results" / "fewshot"
KS = (8, 32)
SEEDS = (0, 1, 2)
STEPS = {8: 400, 32: 800}
JOINT = ["--task-a", "banking77", "--task-b", "sst2"]
# The heads' LR in every row that trains the backbone. train.py's default (1e-3, decaying to 0 over
# the run) leaves a fresh 77-way head far from converged in 400 steps: seed 0's full fine-tuning ended
# with a Banking77 training loss of 0.95, still falling by 0.1 per 50 steps. The design's tiers give
# the heads 1e-4, slower still. SetFit's differentiable head uses 1e-2.
HEAD_LR = "1e-2"
BASELINE = "flat"  # the row the paired table subtracts
T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57}  # Student's t, 97.5% quantile, by degrees of freedom


def rows(k: int) -> dict[str, tuple[str, list[str]]]:
    """name -> (what the table calls it, train.py flags). All joint Banking77 + SST-2 unless named single.
    Every row that trains the backbone gives the heads HEAD_LR, so the rows differ only in how the
    backbone is treated (see HEAD_LR)."""
    steps, head = STEPS[k], ["--head-lr", HEAD_LR]
    return {
        "heads": ("heads only, backbone frozen and cached (10x the steps, constant head LR 3e-3)",
                  JOINT + ["--freeze", "backbone", "--schedule", "constant", "--warmup", "0", "--head-lr", "3e-3"]),
        "flat": ("full fine-tuning, one LR (3e-5)", JOINT + head),
        "no-attn-dropout": ("full fine-tuning, one LR, no attention-probability dropout (--attention-dropout 0)",
                            JOINT + head + ["--attention-dropout", "0"]),
        "tiers": ("the design's three tiers (layers 6-11 5e-5, rest 1e-5)",
                  JOINT + head + ["--lr-groups", "tiers", "--lr", "5e-5"]),
        "llrd-0.9": ("layer-wise LR decay 0.9 (top 5e-5)", JOINT + head + ["--lr-groups", "llrd:0.9", "--lr", "5e-5"]),
        "gradual": (f"gradual unfreezing, one more group every {STEPS[8] // 20} (K=8) or {STEPS[32] // 20} (K=32) steps",
                    JOINT + head + ["--freeze", f"gradual:{steps // 20}"]),
        "top-8": ("top-8 layers unfrozen, the rest cached", JOINT + head + ["--freeze", "top-8"]),
        "top-4": ("top-4 layers unfrozen, the rest cached", JOINT + head + ["--freeze", "top-4"]),
        "single-banking77": ("single task: Banking77 alone, full fine-tuning",
                             ["--task-a", "banking77", "--task-b", "none"] + head),
        "single-sst2": ("single task: SST-2 alone, full fine-tuning", ["--task-a", "sst2", "--task-b", "none"] + head),
    }


SETFIT = "SetFit 1.2 on all-mpnet-base-v2, one model per task (reference; see setfit_cell)"
SETFIT_KS = (8,)  # at K=32 a SetFit seed takes over an hour on 2 cores: not part of the study
CONTRASTIVE = ("single task: Banking77 alone, a contrastive stage first (in-batch negatives on every same-label "
               "pair, 1 epoch, LR 2e-5), then full fine-tuning as the row above")
CONTRASTIVE_KS = (8,)  # K=32 has 77 x 496 same-label pairs: 2,400 steps, hours here
ROW_NAMES = [*rows(8), "contrastive", "setfit"]


def train_cell(k: int, seed: int, name: str, weights: Path | None = None) -> dict:
    """One train.py run of row name; weights: the encoder to start from ($MPNET_WEIGHTS_DIR), else
    all-mpnet-base-v2."""
    steps = STEPS[k] * (10 if name == "heads" else 1)
    # --save-every = the budget: one checkpoint, at the end, instead of one per (tiny) epoch
    # --recipe none: every flag below as written (the study predates the scenario recipes it informed)
    flags = ["--recipe", "none", "--per-class", str(k), "--seed", str(seed), "--val-fraction", "0", "--batch-size", "16",
             "--epochs", "100000", "--max-steps", str(steps), "--save-every", str(steps), "--log-every", "50",
             *rows(k)[name][1]]
    out = ROOT / "runs" / "fewshot" / f"{k}-{seed}-{name}"
    cmd = [sys.executable, str(ROOT / "train.py"), *flags, "--overwrite", "--out", str(out)]  # a cell run again replaces its folder
    print(f"== K={k} seed={seed} {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    env = os.environ | ({"MPNET_WEIGHTS_DIR": str(weights)} if weights else {})
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True, env=env)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    losses = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    final_loss = {key: record[key] for record in losses for key in record if key.startswith("loss_")}  # last of each
    shutil.rmtree(out)
    return result | {"final_train_loss": final_loss, "command": "python train.py " + " ".join(flags)}


def same_label_pairs(texts: list[str], labels: list[int]) -> list[tuple[int, str, str]]:
    """(label, a, b) for every unordered pair of two examples with that label (K=8, 77 labels: 77 x 28 = 2,156)."""
    by_label: dict[int, list[str]] = {}
    for text, label in zip(texts, labels):
        by_label.setdefault(label, []).append(text)
    return [(label, a, b) for label, group in by_label.items() for i, a in enumerate(group) for b in group[i + 1:]]


def contrastive_cell(k: int, seed: int) -> dict:
    """Stage 1: train.py on the same-label pairs of this seed's K-shot Banking77 set (train.py's own draw),
    in-batch negatives, one epoch; its test pairs are one pair per label of the same set (a check that
    stage 1 learnt, not a held-out score). Export. Stage 2: the single-banking77 row from that encoder."""
    import csv

    import data
    from train_config import TrainConfig

    train = data.load_tasks(TrainConfig(task_a="banking77", task_b="none", per_class=k, seed=seed,
                                        val_fraction=0.0))[0]["a"]
    pairs = same_label_pairs(train.texts, train.labels)
    work = ROOT / "runs" / "fewshot" / f"{k}-{seed}-contrastive"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    check = list({label: (a, b) for label, a, b in reversed(pairs)}.values())  # each label's first pair
    for name, rows_ in (("pairs.csv", [(a, b) for _, a, b in pairs]), ("check.csv", check)):
        with open(work / name, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("anchor", "positive"), *rows_])
    stage1 = [sys.executable, str(ROOT / "train.py"), "--recipe", "none", "--task-a", str(work / "pairs.csv"),
              "--task-b", "none", "--test-a", str(work / "check.csv"), "--val-fraction", "0", "--epochs", "1",
              "--batch-size", "16", "--lr", "2e-5", "--warmup", "0.1", "--seed", str(seed), "--log-every", "50",
              "--out", str(work / "stage1")]
    print(f"== K={k} seed={seed} contrastive stage: {len(pairs)} pairs", file=sys.stderr, flush=True)
    proc = subprocess.run(stage1, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
    first = json.loads(proc.stdout.strip().splitlines()[-1])
    subprocess.run([sys.executable, "-m", "tools.export", str(work / "stage1"), str(work / "encoder")], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL)
    second = train_cell(k, seed, "single-banking77", weights=work / "encoder")
    shutil.rmtree(work)
    return second | {"train_s": round(first["train_s"] + second["train_s"], 1), "stage1_train_s": first["train_s"],
                     "stage1_pairs": len(pairs), "stage1_check": {key.split("_")[0]: v for key, v in first.items() if "_a_" in key},
                     "stage1_command": "python " + " ".join(stage1[1:])}


def setfit_cell(k: int, seed: int) -> dict:
    """SetFit as its docs set it up: contrastive fine-tuning of the body on pairs drawn from the K-shot
    set, then scikit-learn's logistic regression on the embeddings; default TrainingArguments (batch
    16, one epoch, oversampled pairs, body LR 2e-5), one model per task, on the same examples as
    train.py's rows. One cap: on Banking77 the default oversampling draws every negative pair
    (190k at K=8: 12k steps, hours on 2 cores), so max_steps is our STEPS[K]; SST-2 runs uncapped."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    import data
    from data import per_class_sample
    from weights.fetch import weights_dir

    result, started = {}, time.time()
    for name in ("banking77", "sst2"):
        train = per_class_sample(data.load(name, "train"), k, seed + 2)  # train.py's draw for this seed
        test = data.load(name, data.EVAL_SPLIT[name])
        model = SetFitModel.from_pretrained(str(weights_dir()))
        args = TrainingArguments(seed=seed, max_steps=STEPS[k] if name == "banking77" else -1,
                                 output_dir=str(ROOT / "runs" / "fewshot" / "setfit"), report_to="none",
                                 save_strategy="no", show_progress_bar=False)
        Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": train.texts, "label": train.labels})).train()
        predicted = model.predict(test.texts, as_numpy=True)
        result[f"acc_{name}_{test.split}"] = round(100 * float((predicted == test.labels).mean()), 2)
    return result | {"train_s": round(time.time() - started, 1)}


# ----------------------------------------------------------------------------- the table
def accuracy(result: dict, dataset: str) -> float | None:
    return next((v for key, v in result.items() if key.startswith("acc_") and dataset in key), None)


def load_all() -> dict[tuple[int, int, str], dict]:
    """Every finished cell's result, read once: (K, seed, row) -> result JSON."""
    results = {}
    for path in sorted(RESULTS.glob("*.json")):
        k, seed, name = path.stem.split("-", 2)
        results[int(k), int(seed), name] = json.loads(path.read_text())
    return results


def summary(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def column_title(k: int, dataset: str) -> str:
    return f"{'Banking77 test' if dataset == 'banking77' else 'SST-2 dev'}, K={k}"


def table() -> str:
    names = {**{n: w for n, (w, _) in rows(8).items()}, "contrastive": CONTRASTIVE, "setfit": SETFIT}
    columns = [(k, dataset) for k in KS for dataset in ("banking77", "sst2")]
    results = load_all()
    stats = {}  # (row, k, dataset) -> (mean, std, n)
    for name in names:
        for k, dataset in columns:
            values = [a for seed in SEEDS if (r := results.get((k, seed, name))) and (a := accuracy(r, dataset)) is not None]
            if values:
                stats[name, k, dataset] = (*summary(values), len(values))
    lines = ["| strategy | " + " | ".join(column_title(k, d) for k, d in columns) + " | wall time, median (K=8 / K=32) |",
             "| --- |" + " ---: |" * (len(columns) + 1)]
    for name, what in names.items():
        cells = []
        for k, dataset in columns:
            if (name, k, dataset) not in stats:
                if (name.startswith("single-") and not name.endswith(dataset)) or (name == "contrastive" and dataset != "banking77"):
                    cells.append("–")
                elif name == "contrastive" and k not in CONTRASTIVE_KS:
                    cells.append("not run (hours a seed here)")
                elif name == "setfit" and k not in SETFIT_KS:
                    cells.append("not run (over an hour a seed here)")
                else:
                    cells.append("not run yet")
                continue
            mean, std, n = stats[name, k, dataset]
            best = max((s for (r, kk, d), s in stats.items() if (kk, d) == (k, dataset)), key=lambda s: s[0])
            mark = "**" if mean == best[0] else ""
            tie = " ~" if not mark and best[0] - mean <= max(std, best[1]) else ""
            cells.append(f"{mark}{mean:.2f} ± {std:.2f}{mark}{tie} ({n})")
        walls = [[r["train_s"] for seed in SEEDS if (r := results.get((k, seed, name)))] for k in KS]
        wall = " / ".join(f"{statistics.median(w):.0f} s" if w else "–" for w in walls)
        lines.append(f"| {what} | " + " | ".join(cells) + f" | {wall} |")
    paired = paired_table(results, names, columns)
    cpus = sorted({r["cpu"] for r in results.values() if r.get("cpu")})
    worst = max(((max(r["final_train_loss"].values()), "-".join(map(str, cell))) for cell, r in results.items()
                 if r.get("final_train_loss")), default=None)
    return "\n".join([
        f"Few-shot strategies: mean ± standard deviation over seeds (count in brackets); the seed picks the K "
        f"examples per class and the heads' initialisation. Budget: {STEPS[8]} steps of 16 at K=8, {STEPS[32]} at "
        f"K=32, no validation, last step kept; heads at LR {HEAD_LR} in every row that trains the backbone; bf16 autocast where the CPU has native bf16, else fp32. "
        f"**Bold**: the best mean in its column; ~: behind it by no more than the larger of the two standard "
        f"deviations, so not shown to be worse. CPU: {'; '.join(cpus) or 'none yet'}.", "", *lines, "",
        f"Paired by seed: each row minus {BASELINE!r} on the same seed, hence on the same K examples per class "
        f"(mean ± standard deviation of the differences over seeds). Most of the spread above is which examples "
        f"were drawn, and pairing removes it. **Bold**: a paired t-test rejects \"no difference\" at 95% "
        f"(|mean| > t · std / √n; with 3 seeds t = 4.30, so the mean must exceed 2.5 standard deviations).",
        "", *paired, "", *contrastive_line(results),
        *([f"Convergence: the largest final training loss (mean of the last 50 steps) of any cell is "
           f"{worst[0]:.3f} ({worst[1]})."] if worst else []),
        "Generated by `python experiments/fewshot.py`.", ""])


def contrastive_line(results: dict[tuple[int, int, str], dict]) -> list[str]:
    """The contrastive stage against the same single-task fine-tuning without it, paired by seed."""
    diffs = [accuracy(r, "banking77") - accuracy(base, "banking77") for seed in SEEDS
             if (r := results.get((8, seed, "contrastive"))) and (base := results.get((8, seed, "single-banking77")))]
    if not diffs:
        return []
    mean, std = summary(diffs)
    clear = len(diffs) > 1 and abs(mean) > T975[len(diffs) - 1] * std / len(diffs) ** 0.5
    return [f"The contrastive stage minus single-task Banking77 fine-tuning without it, paired by seed, K=8: "
            f"{'**' if clear else ''}{mean:+.2f} ± {std:.2f}{'**' if clear else ''} ({len(diffs)}; "
            f"{', '.join(f'{d:+.2f}' for d in diffs)}).", ""]


def paired_table(results: dict[tuple[int, int, str], dict], names: dict[str, str],
                 columns: list[tuple[int, str]]) -> list[str]:
    """Each row's accuracy minus BASELINE's, seed by seed, summarised over the seeds both have."""
    lines = ["| strategy minus full fine-tuning | " + " | ".join(column_title(k, d) for k, d in columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for name, what in names.items():
        if name == BASELINE:
            continue
        cells = []
        for k, dataset in columns:
            diffs = [a - b for seed in SEEDS
                     if (r := results.get((k, seed, name))) and (base := results.get((k, seed, BASELINE)))
                     and (a := accuracy(r, dataset)) is not None and (b := accuracy(base, dataset)) is not None]
            if not diffs:
                cells.append("")
                continue
            mean, std = summary(diffs)
            n = len(diffs)
            clear = n > 1 and abs(mean) > T975[n - 1] * std / n ** 0.5  # a paired t-test at 95%, two-sided
            cells.append(f"{'**' if clear else ''}{mean:+.2f} ± {std:.2f}{'**' if clear else ''} ({n})")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="*", choices=KS, default=list(KS))
    parser.add_argument("--seeds", type=int, nargs="*", default=list(SEEDS))
    parser.add_argument("--rows", nargs="*", choices=ROW_NAMES, default=ROW_NAMES[:-1],
                        help="default: every train.py row and the contrastive one (the SetFit row needs --rows "
                             "setfit and the setfit package)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if not args.table_only:
        for k in args.k:
            for seed in args.seeds:
                for name in args.rows:
                    if (name == "setfit" and k not in SETFIT_KS) or (name == "contrastive" and k not in CONTRASTIVE_KS):
                        continue
                    if name == "setfit":
                        compute = lambda: setfit_cell(k, seed)  # noqa: E731
                    elif name == "contrastive":
                        compute = lambda: contrastive_cell(k, seed)  # noqa: E731
                    else:
                        compute = lambda: train_cell(k, seed, name)  # noqa: E731
                    cell(RESULTS, f"{k}-{seed}-{name}", compute)
    text = table()
    (HERE / "fewshot.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
