"""`bench.py --train`, repeated in fresh processes: how far its ratios move from run to run.

    python experiments/bench_train_runs.py               # the runs still missing (default 3 of 3 rounds), then the table
    python experiments/bench_train_runs.py --runs 5      # two more
    python experiments/bench_train_runs.py --table-only

Why: one run of the bench times every row in interleaved rounds, so the rows of one run share the
machine's mood. Between runs the bound itself moves by several percent (a fresh process, fresh
memory, another tenant on the host), and with it every "% of the bound". A target such as "90% of
the bound" is judged on the median over runs, with the range beside it.

One JSON per run, experiments/results/bench_train/run-N.json (bench.py's own --json, with every
round's seconds); runs already there are kept. The table groups runs by CPU, since a ratio from
one CPU type says nothing about another, and goes to experiments/bench_train.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from cells import cell  # noqa: E402
from reliability.flags import int_at_least  # noqa: E402

RESULTS = HERE / "results" / "bench_train"
BASELINE, PEER = "train.py", "transformers MPNetModel"


def bench_once(rounds: int) -> dict:
    """One `bench.py --train` in a fresh process; its JSON report."""
    print(f"== python -m tools.bench --train --rounds {rounds}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "run.json"
        subprocess.run([sys.executable, "-m", "tools.bench", "--train", "--rounds", str(rounds), "--json", str(report)],
                       cwd=ROOT, check=True)
        return json.loads(report.read_text())


def run_missing(runs: int, rounds: int) -> None:
    for n in range(1, runs + 1):
        cell(RESULTS, f"run-{n}", lambda: bench_once(rounds))  # skipped when its JSON is there


def spread(values: list[float], fmt: str, unit: str = "") -> str:
    """median (min-max): the median is the figure, the range is how far one run can be off."""
    return (f"{format(statistics.median(values), fmt)}{unit} "
            f"({format(min(values), fmt)}-{format(max(values), fmt)}{unit})")


# Earlier versions of the training code, kept for comparison: (folder, what differed from the code as it is).
EARLIER = [
    ("bench_train_a2e459b", "Before the gradient hooks (`speed/grad_hooks.py`): lane dropout and the clipping fold only"),
    ("bench_train_e395022", "Lane dropout and the clipping fold, with training attention written out only at "
                            "dropout > 0 (so `--attention-dropout 0` took PyTorch's unfused fallback)"),
    ("bench_train_61daf19", "Before the speed path's dropout, attention and clipping: PyTorch's dropout masks and "
                            "`clip_grad_norm_`"),
]


def table() -> str:
    out = ["`tools/bench.py --train` repeated in fresh processes (`python experiments/bench_train_runs.py`): "
           "median over runs, (min-max) beside it. Each run: the median of its interleaved rounds of "
           "12 steps at batch 16, all rows on the same Banking77 + SST-2 batches. Every JSON names the "
           "commit it ran.\n", "## The code as it is\n", runs_table(RESULTS)]
    for folder, what in EARLIER:
        out += [f"## {what}\n", f"`experiments/results/{folder}/`\n", runs_table(HERE / "results" / folder)]
    return "\n".join(out)


def runs_table(results: Path) -> str:
    """The runs in one folder, grouped by CPU."""
    runs = [json.loads(p.read_text()) for p in sorted(results.glob("run-*.json"))]
    out = []
    for cpu in sorted({r["cpu"] for r in runs}):
        mine = [r for r in runs if r["cpu"] == cpu]
        rounds = sorted({r["rounds"] for r in mine})
        out.append(f"CPU: {cpu}; {len(mine)} run{'s' if len(mine) > 1 else ''} of {'/'.join(map(str, rounds))} rounds.\n")
        for dtype in ("fp32", "bf16"):
            with_dtype = [r["results"][dtype] for r in mine if dtype in r["results"]]
            if not with_dtype:
                continue
            out += [f"| {dtype} | tokens/s | % of the bound | × transformers | × train.py (default) |",
                    "| --- | ---: | ---: | ---: | ---: |",
                    f"| bound (forward / 3) | {spread([r['bound_tokens_per_s'] for r in with_dtype], '.0f')} | | | |"]
            for name in with_dtype[0]["tokens_per_s"]:
                rows = [r for r in with_dtype if name in r["tokens_per_s"]]
                speed = [r["tokens_per_s"][name] for r in rows]
                share = [100 * r["tokens_per_s"][name] / r["bound_tokens_per_s"] for r in rows]
                vs_peer = [r["tokens_per_s"][name] / r["tokens_per_s"][PEER] for r in rows if PEER in r["tokens_per_s"]]
                vs_ours = [r["tokens_per_s"][name] / r["tokens_per_s"][BASELINE] for r in rows]
                out.append(f"| {name} | {spread(speed, '.0f')} | {spread(share, '.0f', '%')} | "
                           f"{spread(vs_peer, '.2f') if vs_peer else '–'} | {spread(vs_ours, '.2f')} |")
            out.append("")
        dtypes = [d for d in ("fp32", "bf16") if any(d in r["results"] for r in mine)]
        if "step_ms" not in mine[0]["results"]["fp32"]:  # bench.py times only train.py's own step since 1438508
            continue
        phases = mine[0]["results"]["fp32"]["step_ms"]
        out += [f"Where one train.py step goes (median ms over the runs, default flags):\n",
                "| phase | " + " | ".join(dtypes) + " |", "| --- |" + " ---: |" * len(dtypes)]
        medians = {d: {ph: statistics.median(r["results"][d]["step_ms"][ph] for r in mine if d in r["results"])
                       for ph in phases} for d in dtypes}
        out += [f"| {ph} | " + " | ".join(f"{medians[d][ph]:.1f}" for d in dtypes) + " |" for ph in phases]
        out += ["| **total** | " + " | ".join(f"**{sum(medians[d].values()):.0f}**" for d in dtypes) + " |", ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int_at_least(1), default=3, help="how many runs the table should have (default 3)")
    parser.add_argument("--rounds", type=int_at_least(1), default=3, help="bench.py --rounds for new runs (default 3: "
                        "a run of every row took ~10 min on 2 cores)")
    parser.add_argument("--table-only", action="store_true", help="only rewrite experiments/bench_train.md")
    args = parser.parse_args()
    if not args.table_only:
        run_missing(args.runs, args.rounds)
    text = table()
    (HERE / "bench_train.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
