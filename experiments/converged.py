"""Converged full-data runs: Banking77 (all 10,003 training examples) + SST-2 (all 67,349 phrases),
jointly and each alone, with early stopping, within a budget of real training tokens.

    python experiments/converged.py                 # every cell whose result is missing
    python experiments/converged.py joint           # one cell
    python experiments/converged.py --table         # only rewrite experiments/converged.md

Budget: 1.5M real (unpadded) training tokens for the joint run, a number that does not depend on
the machine. The joint run samples the two tasks' batches about equally (--temperature 1000), so
each single-task run gets the joint run's expected share of tokens for its task (the mean sentence
length of each training set decides it): an equal per-task budget.

Each cell trains into runs/converged-CELL with --save-every, so a session that ends mid-run loses
at most a few minutes: running this script again resumes the cell. The wall time of each session
spent on a cell is appended to runs/converged-CELL/sessions.jsonl and the result states their sum.
One result file per cell: experiments/results/converged/CELL.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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


def run_cell(cell: str) -> None:
    out = ROOT / "runs" / f"converged-{cell}"
    progress = read_progress(out / "last.safetensors") if (out / "last.safetensors").is_file() else None
    resume = progress is not None and not progress.get("done")
    cmd = [sys.executable, str(ROOT / "train.py"), *CELLS[cell], *COMMON, "--out", str(out)] + (["--resume"] if resume else [])
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
               "stopped": "early (patience)" if final["stale"] >= 3 else "token budget",
               "history": final["history"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(lambda p: p.write_text(json.dumps(result, indent=2)), RESULTS / f"{cell}.json")


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
        rows.append(f"| {cell} | {r.get('acc_a_banking77_test', '–')} | "
                    f"{r.get('acc_b_sst2_dev', r.get('acc_a_sst2_dev', '–'))} | {r['tokens']:,} | {r['steps']:,} | "
                    f"{best['step']:,} | {r['stopped']} | {r['wall_s_all_sessions'] / 60:.0f} min | "
                    f"{'; '.join(r['cpus'])} |")
    return ("Converged runs (`python experiments/converged.py`): seed 0, batch 16, AdamW (lr 3e-5, heads 1e-3, "
            "linear warmup 10% and decay to the budget), bf16 autocast where the CPU has native bf16, else fp32; "
            "validation on up to 2,000 held-out training examples per task every 500 steps and at each epoch's "
            "end, the best validation loss kept, stop after 3 validations without a new best.\n\n" + "\n".join(rows) + "\n")


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
    (ROOT / "experiments" / "converged.md").write_text(table())
    print(table())


if __name__ == "__main__":
    main()
