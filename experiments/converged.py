"""Converged full-data runs: Banking77 (all 10,003 training examples) + SST-2 (all 67,349 phrases),
jointly and each alone, with early stopping, within a budget of real training tokens.

    python experiments/converged.py                 # every cell whose result is missing
    python experiments/converged.py joint           # one cell
    python experiments/converged.py --table         # only rewrite experiments/converged.md

With the joint cell and a single-task cell done, the two models are also compared example by
example on that task's test set (McNemar's exact test: the same test sentences, each model right or
wrong), written to experiments/results/converged/paired-joint-CELL.json. One seed per cell, so this
says whether the two trained models differ on this test set, not whether the recipes would over
many seeds.

Budget: 1.5M real (unpadded) training tokens for the joint run, a number that does not depend on
the machine. The joint run samples the two tasks' batches about equally (--temperature 1000), so
each single-task run gets the joint run's expected share of tokens for its task (the mean sentence
length of each training set decides it): an equal per-task budget.

Each cell trains into runs/converged-CELL with --save-every, so a session that ends mid-run loses
at most a few minutes: running this script again resumes the cell, in the precision it started in
(--dtype auto means bf16 on one CPU and fp32 on another). The wall time and commit of each session
spent on a cell are appended to runs/converged-CELL/sessions.jsonl, and the result states them.
One result file per cell: experiments/results/converged/CELL.json. The first complete set, trained
before e395022 with PyTorch's dropout masks, is kept as it was in
experiments/results/converged_before_e395022/ and tabled after the current one.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cells  # noqa: E402
from reliability.checkpoint import read_progress, write_atomic  # noqa: E402
from speed.hardware import describe  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "converged"
BEFORE = ROOT / "experiments" / "results" / "converged_before_e395022"
BUDGET = 1_500_000
# Mean real tokens per training example (all-mpnet-base-v2's tokenizer, <s> and </s> included),
# measured on the full training sets: the joint run's expected tokens per task follow from them.
MEAN_TOKENS = {"banking77": 16.21, "sst2": 13.32}
SHARE = {task: n / sum(MEAN_TOKENS.values()) for task, n in MEAN_TOKENS.items()}
COMMON = ["--epochs", "10", "--eval-every", "500", "--patience", "3", "--max-val", "2000", "--save-every", "250",
          "--max-train", "0", "--dtype", "auto", "--seed", "0", "--log-every", "50"]
CELLS = {
    "joint": ["--task-a", "banking77", "--task-b", "sst2", "--temperature", "1000", "--max-tokens", str(BUDGET)],
    "single-banking77": ["--task-a", "banking77", "--task-b", "none",
                         "--max-tokens", str(round(BUDGET * SHARE["banking77"]))],
    "single-sst2": ["--task-a", "sst2", "--task-b", "none", "--max-tokens", str(round(BUDGET * SHARE["sst2"]))],
}
# Before e395022 a fourth cell, joint-no-attn-dropout (joint with --attention-dropout 0), asked whether
# the recipe needs that dropout on full data; its answer is in the archived table. Since e395022 the
# option saves about 1% of a step (bench.py --train), too little to spend two more hours on.
# Joint against each single-task run, sentence by sentence on that task's test set:
PAIRS = [("joint", "single-banking77"), ("joint", "single-sst2")]


def stopped_by(cell: str, final: dict) -> str:
    """What ended a run: 3 validations without a new best, its token budget, or both at the same step.
    (train.py turns the budget into a step count from the mean sentence length, so a run can end on
    it a batch short of the exact number; 10 epochs are more than any budget here allows.)"""
    budget = int(CELLS[cell][CELLS[cell].index("--max-tokens") + 1])
    patience = final["stale"] >= 3
    reasons = (["early (patience)"] if patience else []) + (["token budget"] if final["tokens"] >= budget or not patience else [])
    return " and ".join(reasons)


def commit() -> str:
    """The code a session ran: the short hash of HEAD, with a + when tracked files had uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+" if dirty else "")


def run_cell(cell: str) -> None:
    out = ROOT / "runs" / f"converged-{cell}"
    progress = read_progress(out / "last.safetensors") if (out / "last.safetensors").is_file() else None
    resume = progress is not None and not progress.get("done")
    # A run keeps the precision it started in (train.py refuses a resume where --dtype auto would now
    # mean another): on resume, name it; argparse takes the last --dtype.
    started_in = json.loads((out / "run.json").read_text()).get("precision") if resume else None
    keep = ["--dtype", started_in] if started_in else []
    cmd = ([sys.executable, str(ROOT / "train.py"), *CELLS[cell], *COMMON, *keep, "--out", str(out)]
           + (["--resume"] if resume else ["--overwrite"]))  # a cell run again replaces its folder
    print(("resuming: " if resume else "running: ") + " ".join(cmd[1:]), flush=True)
    start, code = time.time(), commit()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    wall = time.time() - start
    session = {"wall_s": round(wall, 1), "cpu": describe(), "commit": code, "returncode": proc.returncode}
    with open(out / "sessions.jsonl", "a") as f:
        f.write(json.dumps(session) + "\n")
    if proc.returncode != 0:
        sys.exit(f"{cell}: train.py exited with {proc.returncode}; run this script again to resume")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    sessions = [json.loads(line) for line in (out / "sessions.jsonl").read_text().splitlines()]
    final = read_progress(out / "last.safetensors")
    result |= {"cell": cell, "command": "python train.py " + " ".join(CELLS[cell] + COMMON),
               "wall_s_all_sessions": round(sum(s["wall_s"] for s in sessions), 1),
               "cpus": sorted({s["cpu"] for s in sessions}), "commits": list(dict.fromkeys(s["commit"] for s in sessions)),
               "precision": json.loads((out / "run.json").read_text())["precision"],
               "steps": final["step"], "tokens": final["tokens"],
               "stopped": stopped_by(cell, final),
               "history": final["history"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(lambda p: p.write_text(json.dumps(result, indent=2)), RESULTS / f"{cell}.json")


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar test: of the n sentences exactly one model gets right, how unlikely is
    a split at least this uneven if either model were as likely to be the one (binomial, p = 1/2)?"""
    n, k = only_a + only_b, min(only_a, only_b)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0


def paired_comparison(cell_a: str, cell_b: str) -> dict:
    """Both cells' best checkpoints on the test set of each task they share, scored in the precision
    each run trained in; per task: accuracies and the discordant counts."""
    import torch

    import data
    from eval import load_run
    from train_config import TrainConfig, precision

    result = {"cells": [cell_a, cell_b]}
    models = {cell: load_run(ROOT / "runs" / f"converged-{cell}") for cell in (cell_a, cell_b)}
    datasets = [[spec["dataset"] for spec in info["tasks"].values()] for _, _, info in models.values()]
    for dataset in (d for d in datasets[0] if d in datasets[1]):
        ds = data.load(dataset, data.EVAL_SPLIT[dataset])
        right = {}
        for cell, (model, tokenizer, info) in models.items():
            # Runs from before 5b4d86b have no recorded precision; they trained in what their --dtype meant here.
            bf16 = (info.get("precision") or precision(TrainConfig(dtype=info["config"]["dtype"]))) == "bf16"
            head = next(t for t, v in info["tasks"].items() if v["dataset"] == dataset)
            probs = model.predict_proba(tokenizer, ds.texts, autocast=bf16)[head]
            right[cell] = probs.argmax(-1) == torch.tensor(ds.labels)
        only_a, only_b = int((right[cell_a] & ~right[cell_b]).sum()), int((right[cell_b] & ~right[cell_a]).sum())
        result[f"{dataset}_{ds.split}"] = {
            "n": len(ds), **{f"acc_{cell}": round(100 * float(right[cell].float().mean()), 2) for cell in right},
            f"only_{cell_a}_right": only_a, f"only_{cell_b}_right": only_b, "mcnemar_p": round(mcnemar_p(only_a, only_b), 4)}
    return result


def paired_lines(folder: Path) -> str:
    lines = []
    for path in sorted(folder.glob("paired-*.json")):
        r = json.loads(path.read_text())
        a, b = r["cells"]
        parts = [f"{name.replace('_', ' ')}: {v[f'acc_{b}']:.2f} against {v[f'acc_{a}']:.2f}, {v[f'only_{b}_right']} "
                 f"sentences right only in {b} and {v[f'only_{a}_right']} only in {a}, p = {v['mcnemar_p']:.2f}"
                 for name, v in r.items() if name not in ("cells", "cpu")]
        lines.append(f"{b} against {a}, sentence by sentence (McNemar's exact test; one seed each, so this "
                     f"compares two trained models, not two recipes): " + "; ".join(parts) + ".")
    return "".join(f"\n{line}\n" for line in lines)


def table(folder: Path) -> str:
    rows = ["| run | Banking77 test | SST-2 dev | training tokens | steps | best at step | stopped by | "
            "wall time | precision | code | CPU |", "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | --- | --- |"]
    found = sorted(p.stem for p in folder.glob("*.json") if not p.stem.startswith("paired-"))
    for cell in [c for c in CELLS if folder == RESULTS or c in found] + [c for c in found if c not in CELLS]:
        path = folder / f"{cell}.json"
        if not path.is_file():
            rows.append(f"| {cell} | not run yet | | | | | | | | | |")
            continue
        r = json.loads(path.read_text())
        best = min(r["history"], key=lambda h: (sum(v for k, v in h.items() if k.startswith("val_loss")), 0))
        banking77, sst2 = r.get("acc_a_banking77_test"), r.get("acc_b_sst2_dev", r.get("acc_a_sst2_dev"))
        # Results from before 5b4d86b record neither: they ran with --dtype auto (bf16 exactly where
        # the CPU has native bf16), and all of them before e395022.
        precision = r.get("precision") or ("bf16" if all("avx512_bf16" in cpu for cpu in r["cpus"]) else "fp32")
        rows.append(f"| {cell} | {'–' if banking77 is None else f'{banking77:.2f}'} | "
                    f"{'–' if sst2 is None else f'{sst2:.2f}'} | {r['tokens']:,} | {r['steps']:,} | "
                    f"{best['step']:,} | {r['stopped']} | {r['wall_s_all_sessions'] / 60:.0f} min | {precision} | "
                    f"{', '.join(r.get('commits', ['before e395022']))} | {'; '.join(r['cpus'])} |")
    return "\n".join(rows) + "\n" + paired_lines(folder)


def report() -> str:
    return ("Converged runs (`python experiments/converged.py`): seed 0, batch 16, AdamW (lr 3e-5, heads 1e-3, "
            "linear warmup 10% and decay to the budget); bf16 autocast where the run started on a CPU with native "
            "bf16, else fp32, kept on resume; validation on up to 2,000 held-out training examples per task every "
            "500 steps and at each epoch's end, the best validation loss kept, stop after 3 validations without a "
            "new best. Wall time is the sum over the sessions a run took; code is the commit of each session.\n\n"
            + table(RESULTS)
            + "\nBefore e395022 (PyTorch's dropout masks; `experiments/results/converged_before_e395022/`); "
              "joint-no-attn-dropout is joint with `--attention-dropout 0`.\n\n" + table(BEFORE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cells", nargs="*", help=f"any of {', '.join(CELLS)} (default: every cell without a result)")
    parser.add_argument("--table", action="store_true", help="only rewrite experiments/converged.md")
    args = parser.parse_args()
    if unknown := [c for c in args.cells if c not in CELLS]:
        parser.error(f"unknown cell {unknown[0]!r}; cells: {', '.join(CELLS)}")
    if not args.table:
        for cell in args.cells or CELLS:
            if (RESULTS / f"{cell}.json").is_file():
                print(f"{cell}: done ({RESULTS / f'{cell}.json'})")
                continue
            run_cell(cell)
        for pair in PAIRS:
            name = "paired-" + "-".join(pair)
            if (RESULTS / f"{name}.json").is_file() or not all((RESULTS / f"{c}.json").is_file() for c in pair):
                continue
            if missing := [c for c in pair if not (ROOT / "runs" / f"converged-{c}" / "best.safetensors").is_file()]:
                print(f"{name}: needs the checkpoint runs/converged-{missing[0]}/best.safetensors; skipped")
                continue
            cells.cell(RESULTS, name, lambda: paired_comparison(*pair))  # once, then read back
    text = report()
    (ROOT / "experiments" / "converged.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
