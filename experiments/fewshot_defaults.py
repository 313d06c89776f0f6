"""Few-shot fine-tuning with default flags (`--per-class 8`): the recipe's budget in steps, as the few-shot
study ran it, against the earlier budget in epochs, on sets with few classes.

    python experiments/fewshot_defaults.py            # every missing cell (about 6 min a steps cell on 2 cores)
    python experiments/fewshot_defaults.py --table-only

Rows, one JSON per (row, set, seed) cell in experiments/results/fewshot_defaults/:
  defaults   python train.py --task-a SET --task-b none --per-class 8 --seed S   (recipes.py: 400 steps)
  epochs     the recipe before: --recipe none --val-fraction 0 --head-lr 0.01 --epochs 10 (10 passes, which
             is 400 steps only for Banking77's 77 classes: 10 steps for SST-2, 30 for TREC-6)
  top-4, gradual, backbone   default flags with --freeze top-4, gradual or backbone
             (heads alone, 4,000 steps): every freezing scenario's few-shot defaults, paired with `defaults`
  gradual:20, gradual:28     two other spacings of gradual, one more group every 20 or 28 of the 400 steps (a
             twentieth of the run, and 14 equal stages), which lost to an epoch's spacing on TREC-6
Sets: TREC-6 given as your own CSV files (experiments/recipes.py's trec6-csv), and SST-2 (dev 872).
The seed picks the 8 examples per class and the heads' initialisation; both rows of a seed see the same rows.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from cells import cell  # noqa: E402
from recipes import WORK, task_flags  # noqa: E402

RESULTS = HERE / "results" / "fewshot_defaults"
SEEDS = (0, 1, 2)
SETS = ("trec6-csv", "sst2")
ROWS = {"defaults": "default flags (400 steps)",
        "epochs": "the budget in epochs before (10 passes)"}
SCENARIOS = {"top-4": "`--freeze top-4`", "gradual": "`--freeze gradual` (a group every epoch: 1-3 steps)",
             "gradual:20": "`--freeze gradual:20` (every twentieth of the run)",
             "gradual:28": "`--freeze gradual:28` (14 equal stages)", "backbone": "`--freeze backbone` (heads alone)"}


def stem(row: str, name: str, seed: int) -> str:
    return f"{row.replace(':', '-')}-{name}-{seed}"


def run(row: str, name: str, seed: int) -> dict:
    flags = task_flags(name) + ["--task-b", "none", "--per-class", "8", "--seed", str(seed), "--log-every", "100000"]
    if row == "epochs":
        flags += ["--recipe", "none", "--val-fraction", "0", "--head-lr", "0.01", "--epochs", "10"]
    elif row in SCENARIOS:
        flags += ["--freeze", row]
    cmd = [sys.executable, "train.py", *flags, "--overwrite", "--out", str(WORK / f"fewshot-{stem(row, name, seed)}")]
    print("==", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    steps = max((int(line.split("'step': ")[1].split(",")[0]) for line in proc.stderr.splitlines() if "'step': " in line),
                default=None)
    return {"accuracy": next(v for k, v in result.items() if k.startswith("acc_a_")), "steps": steps,
            "wall_s": round(time.time() - started, 1), "command": "python " + " ".join(cmd[1:-3])}


def table() -> str:
    load = lambda path: json.loads(path.read_text()) if path.is_file() else None
    lines = ["Few-shot fine-tuning, 8 examples per class, Task A alone, mean ± std over seeds (count in brackets); the "
             "seed picks the examples and the heads' initialisation. Paired: each seed's defaults minus its "
             "epochs row (the same examples). Wall time: the whole train.py process, median.", "",
             "| set | " + " | ".join(ROWS.values()) + " | paired difference | steps (defaults / epochs) | wall time |",
             "| --- | ---: | ---: | ---: | --- | ---: |"]
    cpus = set()
    for name in SETS:
        runs = {row: {s: r for s in SEEDS if (r := load(RESULTS / f"{row}-{name}-{s}.json"))} for row in ROWS}
        cpus |= {r["cpu"] for rows in runs.values() for r in rows.values()}
        cells = []
        for row in ROWS:
            acc = [r["accuracy"] for r in runs[row].values()]
            cells.append(f"{statistics.mean(acc):.2f} ± {statistics.stdev(acc):.2f} ({len(acc)})" if len(acc) > 1
                         else (f"{acc[0]:.2f} (1 seed)" if acc else "not run"))
        paired = [runs["defaults"][s]["accuracy"] - runs["epochs"][s]["accuracy"] for s in SEEDS
                  if s in runs["defaults"] and s in runs["epochs"]]
        diff = (f"{statistics.mean(paired):+.2f} ± {statistics.stdev(paired):.2f} ({len(paired)})" if len(paired) > 1
                else "–")
        steps = " / ".join(str(next(iter(runs[row].values()))["steps"]) if runs[row] else "–" for row in ROWS)
        wall = [r["wall_s"] for r in runs["defaults"].values()]
        lines.append(f"| {name} | {' | '.join(cells)} | {diff} | {steps} | "
                     f"{statistics.median(wall) / 60:.1f} min / {statistics.median([r['wall_s'] for r in runs['epochs'].values()] or [0]) / 60:.1f} min |"
                     if wall else f"| {name} | {' | '.join(cells)} | {diff} | {steps} | – |")
    lines += ["", "Every freezing scenario with its few-shot default flags, and the paired difference from full fine-tuning's "
              "default flags on the same seeds (the same examples):", "",
              "| set | " + " | ".join(SCENARIOS.values()) + " |", "| --- |" + " ---: |" * len(SCENARIOS)]
    for name in SETS:
        base = {s: r for s in SEEDS if (r := load(RESULTS / f"defaults-{name}-{s}.json"))}
        cells = []
        for row in SCENARIOS:
            runs = {s: r for s in SEEDS if (r := load(RESULTS / f"{stem(row, name, s)}.json"))}
            cpus |= {r["cpu"] for r in runs.values()}
            acc = [r["accuracy"] for r in runs.values()]
            paired = [runs[s]["accuracy"] - base[s]["accuracy"] for s in runs if s in base]
            cells.append("not run" if not acc else
                         f"{statistics.mean(acc):.2f} ± {statistics.stdev(acc) if len(acc) > 1 else 0:.2f} ({len(acc)}); "
                         f"paired {statistics.mean(paired):+.2f}" + (f" ± {statistics.stdev(paired):.2f}" if len(paired) > 1 else ""))
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += ["", "Evaluation: TREC-6 test (500), SST-2 dev (872).",
              f"CPU: {'; '.join(sorted(cpus)) or 'none yet'}. Generated by `python experiments/fewshot_defaults.py`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if not args.table_only:
        for seed in SEEDS:  # seed by seed, so that a partial table already pairs its rows
            for name in SETS:
                for row in ("epochs", "defaults", *SCENARIOS):
                    cell(RESULTS, stem(row, name, seed), lambda r=row, n=name, s=seed: run(r, n, s))
                    (HERE / "fewshot_defaults.md").write_text(table())
    (HERE / "fewshot_defaults.md").write_text(table())
    print(table())


if __name__ == "__main__":
    main()
