"""Converged full-data runs: Banking77 (all 10,003 training examples) + SST-2 (all 67,349 phrases),
jointly and each alone, with early stopping, within a budget of real training tokens.

    python experiments/converged.py                 # every cell whose result is missing
    python experiments/converged.py joint           # one cell
    python experiments/converged.py --table         # only rewrite experiments/converged.md

With both joint cells done, the two joint models are also compared example by example on the test
sets (McNemar's exact test: the same test sentences, each model right or wrong), written to
experiments/results/converged/paired-joint.json. One seed per cell, so this says whether the two
trained models differ on these test sets, not whether the recipes would over many seeds.

Budget: 1.5M real (unpadded) training tokens for the joint run, a number that does not depend on
the machine. The joint run samples the two tasks' batches about equally (--temperature 1000), so
each single-task run gets the joint run's expected share of tokens for its task (the mean sentence
length of each training set decides it): an equal per-task budget.

Each cell trains into runs/converged-CELL with --save-every, so a session that ends mid-run loses
at most a few minutes: running this script again resumes the cell, in the precision it started in
(--dtype auto means bf16 on one CPU and fp32 on another). The wall time of each session spent on a
cell is appended to runs/converged-CELL/sessions.jsonl and the result states their sum.
One result file per cell: experiments/results/converged/CELL.json.
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
from checkpoint import read_progress, write_atomic  # noqa: E402
from hardware import describe  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "converged"
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
    # The joint run again without attention-probability dropout (faster, see bench.py --train):
    # does the default recipe need it on full data?
    "joint-no-attn-dropout": ["--task-a", "banking77", "--task-b", "sst2", "--temperature", "1000",
                              "--max-tokens", str(BUDGET), "--attention-dropout", "0"],
}


def stopped_by(cell: str, final: dict) -> str:
    """What ended a run: 3 validations without a new best, its token budget, or both at the same step.
    (train.py turns the budget into a step count from the mean sentence length, so a run can end on
    it a batch short of the exact number; 10 epochs are more than any budget here allows.)"""
    budget = int(CELLS[cell][CELLS[cell].index("--max-tokens") + 1])
    patience = final["stale"] >= 3
    reasons = (["early (patience)"] if patience else []) + (["token budget"] if final["tokens"] >= budget or not patience else [])
    return " and ".join(reasons)


def run_cell(cell: str) -> None:
    out = ROOT / "runs" / f"converged-{cell}"
    progress = read_progress(out / "last.safetensors") if (out / "last.safetensors").is_file() else None
    resume = progress is not None and not progress.get("done")
    # A run keeps the precision it started in (train.py refuses a resume where --dtype auto would now
    # mean another): on resume, name it; argparse takes the last --dtype.
    started_in = json.loads((out / "run.json").read_text()).get("precision") if resume else None
    keep = ["--dtype", started_in] if started_in else []
    cmd = ([sys.executable, str(ROOT / "train.py"), *CELLS[cell], *COMMON, *keep, "--out", str(out)]
           + (["--resume"] if resume else []))
    print(("resuming: " if resume else "running: ") + " ".join(cmd[1:]), flush=True)
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    wall = time.time() - start
    with open(out / "sessions.jsonl", "a") as f:
        f.write(json.dumps({"wall_s": round(wall, 1), "cpu": describe(), "returncode": proc.returncode}) + "\n")
    if proc.returncode != 0:
        sys.exit(f"{cell}: train.py exited with {proc.returncode}; run this script again to resume")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    sessions = [json.loads(line) for line in (out / "sessions.jsonl").read_text().splitlines()]
    final = read_progress(out / "last.safetensors")
    result |= {"cell": cell, "command": "python train.py " + " ".join(CELLS[cell] + COMMON),
               "wall_s_all_sessions": round(sum(s["wall_s"] for s in sessions), 1),
               "cpus": sorted({s["cpu"] for s in sessions}), "steps": final["step"], "tokens": final["tokens"],
               "stopped": stopped_by(cell, final),
               "history": final["history"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(lambda p: p.write_text(json.dumps(result, indent=2)), RESULTS / f"{cell}.json")


PAIRED = ("joint", "joint-no-attn-dropout")
PAIRED_RESULT = RESULTS / f"paired-{PAIRED[0]}.json"


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar test: of the n sentences exactly one model gets right, how unlikely is
    a split at least this uneven if either model were as likely to be the one (binomial, p = 1/2)?"""
    n, k = only_a + only_b, min(only_a, only_b)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0


def paired_comparison(cell_a: str, cell_b: str) -> dict:
    """Both cells' best checkpoints on each task's test set, scored the way train.py scores them
    (bf16 autocast where the run used it); per task: accuracies and the discordant counts."""
    import torch

    import data
    from eval import load_run
    from train import TrainConfig, uses_bf16

    result = {"cells": [cell_a, cell_b]}
    models = {cell: load_run(ROOT / "runs" / f"converged-{cell}") for cell in (cell_a, cell_b)}
    for task, spec in models[cell_a][2]["tasks"].items():
        ds = data.load(spec["dataset"], data.EVAL_SPLIT[spec["dataset"]])
        right = {}
        for cell, (model, tokenizer, info) in models.items():
            autocast = uses_bf16(TrainConfig(dtype=info["config"]["dtype"]))
            head = next(t for t, v in info["tasks"].items() if v["dataset"] == spec["dataset"])
            probs = model.predict_proba(tokenizer, ds.texts, autocast=autocast)[head]
            right[cell] = probs.argmax(-1) == torch.tensor(ds.labels)
        only_a, only_b = int((right[cell_a] & ~right[cell_b]).sum()), int((right[cell_b] & ~right[cell_a]).sum())
        result[f"{spec['dataset']}_{ds.split}"] = {
            "n": len(ds), **{f"acc_{cell}": round(100 * float(right[cell].float().mean()), 2) for cell in right},
            f"only_{cell_a}_right": only_a, f"only_{cell_b}_right": only_b, "mcnemar_p": round(mcnemar_p(only_a, only_b), 4)}
    return result


def paired_line() -> str:
    if not PAIRED_RESULT.is_file():
        return ""
    r = json.loads(PAIRED_RESULT.read_text())
    a, b = r["cells"]
    parts = [f"{name.replace('_', ' ')}: {v[f'acc_{b}']:.2f} against {v[f'acc_{a}']:.2f}, {v[f'only_{b}_right']} "
             f"sentences right only in {b} and {v[f'only_{a}_right']} only in {a}, p = {v['mcnemar_p']:.2f}"
             for name, v in r.items() if name not in ("cells", "cpu")]
    return (f"\n{b} against {a}, sentence by sentence (McNemar's exact test; one seed each, so this compares "
            f"two trained models, not two recipes): " + "; ".join(parts) + ".\n")


def table() -> str:
    rows = ["| run | Banking77 test | SST-2 dev | training tokens | steps | best at step | stopped by | "
            "wall time | CPU |", "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for cell in CELLS:
        path = RESULTS / f"{cell}.json"
        if not path.is_file():
            rows.append(f"| {cell} | not run yet | | | | | | | |")
            continue
        r = json.loads(path.read_text())
        best = min(r["history"], key=lambda h: (sum(v for k, v in h.items() if k.startswith("val_loss")), 0))
        banking77, sst2 = r.get("acc_a_banking77_test"), r.get("acc_b_sst2_dev", r.get("acc_a_sst2_dev"))
        rows.append(f"| {cell} | {'–' if banking77 is None else f'{banking77:.2f}'} | "
                    f"{'–' if sst2 is None else f'{sst2:.2f}'} | {r['tokens']:,} | {r['steps']:,} | "
                    f"{best['step']:,} | {r['stopped']} | {r['wall_s_all_sessions'] / 60:.0f} min | "
                    f"{'; '.join(r['cpus'])} |")
    return ("Converged runs (`python experiments/converged.py`): seed 0, batch 16, AdamW (lr 3e-5, heads 1e-3, "
            "linear warmup 10% and decay to the budget), bf16 autocast where the CPU has native bf16, else fp32; "
            "validation on up to 2,000 held-out training examples per task every 500 steps and at each epoch's "
            "end, the best validation loss kept, stop after 3 validations without a new best; joint-no-attn-dropout is "
            "joint with `--attention-dropout 0`.\n\n" + "\n".join(rows) + "\n" + paired_line())


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
        if all((RESULTS / f"{cell}.json").is_file() for cell in PAIRED):
            cells.cell(RESULTS, PAIRED_RESULT.stem, lambda: paired_comparison(*PAIRED))  # once, then read back
    text = table()
    (ROOT / "experiments" / "converged.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
