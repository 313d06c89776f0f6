"""Scenario recipes (recipes.py), measured: heads on a frozen backbone with default flags, against the
defaults before the recipes and against scikit-learn's logistic regression on the same embeddings.

    python experiments/recipes.py                  # every missing cell, most important first
    python experiments/recipes.py --table-only
    pkill -TERM -f 'train.py.*runs/recipes/'       # stop a long cell: train.py saves, and a rerun resumes it

Sets (Task A only, --task-b none):
  banking77   77 intents, 10,003 training rows, test 3,080 (built in)
  trec6-csv   TREC's 6 question types, 5,452 rows, test 500, given as your own CSV files (--task-a FILE
              --test-a FILE), so the own-data path is the one measured
  trec50      TREC's 50 fine question types (built in as trec-fine; not used in any earlier study), test 500
  sst2        2 labels, 67,349 phrases, SST-2 dev 872 (`--recipe none` one seed: its cache pass alone is minutes)

Rows, one JSON per (row, set, seed) cell in experiments/results/recipes/:
  defaults    python train.py --task-a SET --task-b none --freeze backbone --seed S   (the recipe picks the rest)
  before      the same with --recipe none: TrainConfig's defaults, as every user got before the recipes
  constant-refit  the defaults row when --refit ran at the search's constant learning rate for the best epoch
              count (the default before commit 2a15b38)
  decay-refit the defaults row with --refit decaying linearly to 0 over the best epoch count (commit 18f502c,
              tried and not kept). No flag gives either: their files are kept as run, stamped with their commit
  logreg      LogisticRegression (scikit-learn defaults, max_iter 5000) on the embeddings the heads read,
              fitted on all training rows (what the refit trains on) and on seed S's training split
  scenario    python train.py --task-a SET --task-b none --freeze SPEC --seed S, for the scenarios that train
              the backbone (full fine-tuning, top-4, gradual), with --scenarios SET; and gradual unfreezing's
              default before it spread the groups over the run: one group per epoch, --freeze gradual:STEPS
              with STEPS an epoch's steps (cells scenario-gradual-epoch-SET-SEED)
The wall time of a train.py row is the whole process: loading, the cache pass, training, the refit and
the test pass.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from cells import cell, frozen_embeddings  # noqa: E402
from reliability import run_folder  # noqa: E402
from train_config import TrainConfig  # noqa: E402

RESULTS = HERE / "results" / "recipes"
WORK = ROOT / "runs" / "recipes"
SEEDS = (0, 1, 2)
SETS = {"banking77": SEEDS, "trec6-csv": SEEDS, "trec50": SEEDS, "sst2": SEEDS}
ROWS = {"defaults": "default flags (`--freeze backbone`)", "before": "`--recipe none` (the defaults before)",
        "constant-refit": "default flags when the refit ran at the search's constant LR (the default before)",
        "decay-refit": "default flags with the refit decaying over the best epoch count, not twice it (tried)"}
# The scenarios that train the backbone, each with no flag but --freeze: their recipe is TrainConfig's own
# (BERT's: 3 epochs, warmup then linear decay, the validation split picks the best epoch), the best the
# project knows for them at full data (docs/strategies.md); cells scenario-SPEC-SET-SEED.
SCENARIOS = {"none": "full fine-tuning", "top-4": "top 4 layers (cache below)", "gradual": "gradual unfreezing"}
# Gradual unfreezing's default before: one more group per epoch, so 3 epochs trained the heads, then layer 11, then
# layers 10-11. An epoch is (rows - the 10% validation split) // batch 16 steps.
BERT = TrainConfig()  # the recipe of the scenarios that train the backbone: TrainConfig's own defaults
EPOCH_STEPS = {"banking77": 9003 // 16, "trec6-csv": 4907 // 16}
# Longer stages than the default's twentieth of the run at full data (918 // 20 = 45 steps on TREC-6): 14 equal
# stages, the last group thawed for the last one. Cells variant-SPEC-SET-SEED.
VARIANTS = {"trec6-csv": ["gradual:65"], "banking77": ["gradual:120"]}


def variant_cell(spec: str, name: str, seed: int) -> str:
    return f"variant-{spec.replace(':', '-')}-{name}-{seed}"
EVAL_SPLIT = {"banking77": "test", "trec6-csv": "test", "trec50": "test", "sst2": "dev"}


def trec_csv_files() -> tuple[Path, Path]:
    """TREC's coarse labels as a user would hand them over: text,label CSV files."""
    import data

    WORK.mkdir(parents=True, exist_ok=True)
    paths = []
    for split in ("train", "test"):
        ds, path = data.load("trec", split), WORK / f"trec6-{split}.csv"
        if not path.is_file():
            with open(path.with_suffix(".tmp"), "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["text", "label"])
                writer.writerows((t, ds.label_names[y]) for t, y in zip(ds.texts, ds.labels))
            path.with_suffix(".tmp").rename(path)
        paths.append(path)
    return paths[0], paths[1]


def task_flags(name: str) -> list[str]:
    if name == "trec6-csv":
        train_csv, test_csv = trec_csv_files()
        return ["--task-a", str(train_csv), "--test-a", str(test_csv)]
    return ["--task-a", {"trec50": "trec-fine"}.get(name, name)]


def head(row: str, name: str, seed: int, freeze: str = "backbone") -> dict:
    flags = task_flags(name) + ["--task-b", "none", "--freeze", freeze, "--seed", str(seed), "--log-every", "100000"]
    if row == "before":
        flags += ["--recipe", "none"]
    out = WORK / (f"{row}-{name}-{seed}" if freeze == "backbone" else f"{row}-{freeze}-{name}-{seed}")
    # A cell stopped part-way (`kill -TERM` the train.py child: it saves last.safetensors and exits) continues
    # from there when run again, and its wall time adds up the parts; any other cell run again starts afresh.
    last = out / "last.safetensors"
    resume = last.is_file() and not (run_folder.read_progress(last) or {}).get("done")
    earlier_s = float((out / "cell_wall_s").read_text()) if resume and (out / "cell_wall_s").is_file() else 0.0
    cmd = [sys.executable, "train.py", *flags, "--resume" if resume else "--overwrite", "--out", str(out)]
    print("==", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall_s = earlier_s + time.time() - started
    if proc.returncode != 0:
        if out.is_dir():
            (out / "cell_wall_s").write_text(f"{wall_s:.1f}")
        raise SystemExit(f"train.py exited {proc.returncode} (run again to resume {out}):\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for checkpoint in out.glob("*.safetensors"):  # 0.9 GB a run: 17 runs filled this machine's disk
        checkpoint.unlink()
    recipe = [line for line in proc.stderr.splitlines() if line.startswith("recipe for")]
    accuracy = next(v for k, v in result.items() if k.startswith("acc_a_"))
    return {"accuracy": accuracy, "wall_s": round(wall_s, 1), "resumed": resume, "cache_s": result["cache_s"],
            "best_epoch": result["best_epoch"], "refit_rows": result.get("refit_rows"),
            "recipe": recipe[0] if recipe else None, "command": "python " + " ".join(cmd[1:-3])}


def logreg(name: str) -> dict:
    """One embedding pass over the training and evaluation texts, then the fits."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    import data

    if name == "trec6-csv":
        full, test = data.load("trec", "train"), data.load("trec", "test")
    else:
        dataset = {"trec50": "trec-fine"}.get(name, name)
        full, test = data.load(dataset, "train"), data.load(dataset, EVAL_SPLIT[name])
    started = time.time()
    x_full, x_test = frozen_embeddings(full.texts), frozen_embeddings(test.texts)
    embed_s = time.time() - started
    y_full, y_test = np.array(full.labels), np.array(test.labels)

    def fit(rows) -> float:
        probe = LogisticRegression(max_iter=5000).fit(x_full[rows], y_full[rows])
        return round(100 * float((probe.predict(x_test) == y_test).mean()), 2)

    per_seed = {}
    for seed in SETS[name]:  # the rows train.py trains on before the refit: data.split_off's permutation
        order = list(range(len(full)))
        random.Random(seed).shuffle(order)
        per_seed[str(seed)] = fit(sorted(order[int(len(full) * 0.1):]))
    return {"all_rows": fit(list(range(len(full)))), "train_split_per_seed": per_seed, "rows": len(full),
            "embed_s": round(embed_s, 1)}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({len(values)})"


def table() -> str:
    load = lambda path: json.loads(path.read_text()) if path.is_file() else None
    lines = ["Heads on the frozen backbone (`--task-b none --freeze backbone`), mean ± std over seeds (count "
             "in brackets); the seed picks the validation split and the head's initialisation. Logistic "
             "regression: scikit-learn's defaults on the same raw mean-pooled embeddings. Wall time: the "
             "whole train.py process (loading, cache pass, training, refit, test pass), median.", "",
             "| set | train.py, default flags | wall time | the refit at a constant LR (before) | the refit decaying over the "
             "best count (tried) | train.py, `--recipe none` | logistic regression, all rows | logistic regression, the "
             "training split | default − LR (all rows) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    cpus = set()
    for name in SETS:
        runs = {row: [r for s in SETS[name] if (r := load(RESULTS / f"{row}-{name}-{s}.json"))] for row in ROWS}
        lr = load(RESULTS / f"logreg-{name}.json")
        cpus |= {r["cpu"] for rows in runs.values() for r in rows} | ({lr["cpu"]} if lr else set())
        if not runs["defaults"]:
            continue
        acc = [r["accuracy"] for r in runs["defaults"]]
        wall = statistics.median(r["wall_s"] for r in runs["defaults"])
        before = mean_std([r["accuracy"] for r in runs["before"]]) if runs["before"] else "not run"
        constant = mean_std([r["accuracy"] for r in runs["constant-refit"]]) if runs["constant-refit"] else "–"
        decay = mean_std([r["accuracy"] for r in runs["decay-refit"]]) if runs["decay-refit"] else "–"
        lr_all = f"{lr['all_rows']:.2f}" if lr else "not run"
        lr_split = mean_std(list(lr["train_split_per_seed"].values())) if lr else "not run"
        gap = f"{statistics.mean(acc) - lr['all_rows']:+.2f}" if lr else "–"
        lines.append(f"| {name} | {mean_std(acc)} | {wall / 60:.1f} min | {constant} | {decay} | {before} | {lr_all} | {lr_split} "
                     f"| {gap} |")
    lines += refit_change(load)
    lines += scenario_table(load, cpus)
    recipes = {r["recipe"] for name in SETS for s in SETS[name] if (r := load(RESULTS / f"defaults-{name}-{s}.json"))}
    lines += ["", "What the default flags chose: " + "; ".join(sorted(filter(None, recipes))) + ".",
              f"CPU: {'; '.join(sorted(cpus))}. Generated by `python experiments/recipes.py`.", ""]
    return "\n".join(lines)


def refit_change(load) -> list[str]:
    """Each earlier refit against the default's, paired by seed: the same split and the same search, so the same
    best epoch count; only the refit differs."""
    lines = []
    for row, words in (("constant-refit", "at the search's constant learning rate for the best epoch count (before)"),
                       ("decay-refit", "decaying to 0 over the best epoch count, not twice it (tried)")):
        changes = []
        for name in SETS:
            pairs = [(default["accuracy"], other["accuracy"]) for s in SETS[name]
                     if (default := load(RESULTS / f"defaults-{name}-{s}.json"))
                     and (other := load(RESULTS / f"{row}-{name}-{s}.json"))]
            if len(pairs) >= 2:
                diffs = [a - b for a, b in pairs]
                changes.append(f"{name} {statistics.mean(diffs):+.2f} ± {statistics.stdev(diffs):.2f} ({len(pairs)})")
        if changes:
            lines += ["", f"The default refit against the refit {words}, paired by seed (the same split and search): "
                      + ", ".join(changes) + "."]
    return lines


def scenario_table(load, cpus: set) -> list[str]:
    """Every freezing scenario with default flags, on the sets where its cells exist."""
    lines = ["", "Every freezing scenario with no flag but `--freeze SPEC` (mean ± std over seeds "
             + ", ".join(map(str, SEEDS)) + ", their count in brackets; heads only is the default-flags column above). "
             "The scenarios that train the backbone keep BERT's recipe, the best the project knows for them at full "
             "data, so their default flags are that recipe; that is also their budget: "
             f"{BERT.epochs} epochs of batch {BERT.batch_size} ({BERT.warmup:.0%} warmup, then {BERT.schedule} decay), "
             f"the best epoch picked on a {BERT.val_fraction:.0%} validation split. Gradual unfreezing "
             "unfreezes one more group every epoch or every twentieth of the run, whichever is sooner (freeze.apply): "
             "here the twentieth, so all train for the run's last third; "
             "its earlier default, one group per epoch, trained only the heads, then layer 11, then "
             "layers 10-11 in 3 epochs (`--freeze gradual:STEPS`, STEPS an epoch's steps: "
             + ", ".join(f"{n} {k}" for k, n in EPOCH_STEPS.items()) + "). Wall time: the whole process, median; "
             "runs of one row may have shared the 2 cores with another job.", "",
             "| set | " + " | ".join(f"{label} (`--freeze {spec}`)" for spec, label in SCENARIOS.items())
             + " | gradual, one group per epoch (the default before) | heads only (`--freeze backbone`) |",
             "| --- |" + " ---: |" * (len(SCENARIOS) + 2)]
    for name in SETS:
        cells = {spec: [r for s in SETS[name] if (r := load(RESULTS / f"scenario-{spec}-{name}-{s}.json"))]
                 for spec in [*SCENARIOS, "gradual-epoch"]}
        if not any(cells.values()):
            continue
        cpus |= {r["cpu"] for rows in cells.values() for r in rows}
        heads = [r["accuracy"] for s in SETS[name] if (r := load(RESULTS / f"defaults-{name}-{s}.json"))]
        row = [f"{mean_std([r['accuracy'] for r in rows])}, {statistics.median(r['wall_s'] for r in rows) / 60:.0f} min"
               if rows else "not run" for rows in cells.values()]
        lines.append(f"| {name} | " + " | ".join(row) + f" | {mean_std(heads) if heads else 'not run'} |")
    for name, specs in VARIANTS.items():
        for spec in specs:
            rows = [r for s in SETS[name] if (r := load(RESULTS / f"{variant_cell(spec, name, s)}.json"))]
            if rows:
                cpus |= {r["cpu"] for r in rows}
                lines += ["", f"14 equal stages (the heads alone, one more group each next stage, everything in the last): "
                          f"`--freeze {spec}` on {name}: {mean_std([r['accuracy'] for r in rows])}, "
                          f"{statistics.median(r['wall_s'] for r in rows) / 60:.0f} min."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--before-seeds", type=int, nargs="+", default=list(SEEDS),
                        help="the seeds of the `--recipe none` row (default: every seed of the set)")
    parser.add_argument("--no-logreg", action="store_true", help="skip the logistic-regression cells")
    parser.add_argument("--scenarios", nargs="+", default=[], choices=list(SETS),
                        help="also run every backbone-training scenario (SCENARIOS) with default flags on these sets")
    parser.add_argument("--scenario-seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--scenario-specs", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS),
                        help="only these of the scenarios, in this order (SST-2's full fine-tuning is ~1.5 h a seed)")
    args = parser.parse_args()
    if not args.table_only and args.scenarios:
        for seed in args.scenario_seeds:  # seed by seed, so that a cut-short session leaves whole seeds
            for name in args.scenarios:
                for spec in args.scenario_specs:
                    cell(RESULTS, f"scenario-{spec}-{name}-{seed}", lambda: head("scenario", name, seed, spec))
                for spec in VARIANTS.get(name, []):
                    cell(RESULTS, variant_cell(spec, name, seed), lambda: head("variant", name, seed, spec))
                if name in EPOCH_STEPS:
                    cell(RESULTS, f"scenario-gradual-epoch-{name}-{seed}",
                         lambda: head("scenario", name, seed, f"gradual:{EPOCH_STEPS[name]}"))
    elif not args.table_only:
        for name in args.sets:  # the target's cells first: defaults and the reference, then the row before
            for seed in SETS[name]:
                cell(RESULTS, f"defaults-{name}-{seed}", lambda: head("defaults", name, seed))
            if not args.no_logreg:
                cell(RESULTS, f"logreg-{name}", lambda: logreg(name))
        for name in args.sets:
            for seed in [s for s in SETS[name] if s in args.before_seeds]:
                cell(RESULTS, f"before-{name}-{seed}", lambda: head("before", name, seed))
    text = table()
    (HERE / "recipes.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
