"""predict.py --dtype auto on trained runs: does int8 pass its check against fp32, and what does it buy?

    python experiments/predict_int8.py            # trains the runs it needs (a few minutes each), then measures
    python experiments/predict_int8.py --table-only

Runs (trained here with default flags when missing, in runs/predict-int8/):
  reviews        `python train.py`: the whole backbone fine-tuned on the two review tasks
  banking77      `--task-a banking77 --task-b none --freeze backbone`: heads on the pretrained backbone
  banking77-sst2 `--task-a banking77 --task-b sst2 --max-steps 2000`: the whole backbone fine-tuned on both
                 benchmarks, 2,000 steps of 16 (about 40% of an epoch of the two; ~15 min on 2 cores, where
                 the converged run of experiments/converged.py takes hours); its check covers Banking77's
                 3,080 test rows and SST-2's 872 dev rows (GLUE hides its test labels)
For each run and CPU type, one cell in experiments/results/predict_int8/ (RUN-CPU.json, CPU as cells.cpu_type()
names it, since a speed ratio belongs to the CPU it was measured on, and the run is trained anew on each
machine): the check's verdict on the run's test rows
(speed/int8_check.py: the same label on >= 99.5% of rows, accuracy within 0.3 points; where int8 fails
on a CPU with native bf16, bf16 autocast's), and the throughput of Classifier.predict on 2,000 SST-2
training sentences in fp32, in int8 and as --dtype auto serves the run, 3 rounds interleaved in one
process (median, and the spread over rounds).

    python experiments/predict_int8.py --alternatives   # also: how close do other precisions come to fp32?

With --alternatives, one more cell per run and CPU type (alternatives-RUN-CPU.json): the same check for precisions that
predict.py does not serve, on the same rows against the same fp32 labels: bf16 autocast, and int8 without
the outlier channels summed in fp32 (quant.OUTLIER_CHANNELS = 0: quant.py before them). Agreement only,
no timing: they say how strict the check is, and what the outlier channels buy, not what is fast.
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

from cells import cell, cpu_type  # noqa: E402

RESULTS = HERE / "results" / "predict_int8"
WORK = ROOT / "runs" / "predict-int8"
RUNS = {"reviews": [], "banking77": ["--task-a", "banking77", "--task-b", "none", "--freeze", "backbone"],
        "banking77-sst2": ["--task-a", "banking77", "--task-b", "sst2", "--max-steps", "2000"]}
SENTENCES, ROUNDS = 2000, 3


def cells(prefix: str = "") -> list[dict]:
    """Every CPU type's cell for each run, in RUNS's order."""
    return [json.loads(path.read_text()) for name in RUNS
            for path in sorted(RESULTS.glob(f"{prefix}{name}-family*.json"))]


def trained(name: str) -> Path:
    out = WORK / name
    if not (out / "best.safetensors").is_file() or not (out / "run.json").is_file():
        subprocess.run([sys.executable, "train.py", *RUNS[name], "--out", str(out), "--overwrite"], cwd=ROOT, check=True)
    return out


def measure(name: str) -> dict:
    import data
    from predict import Classifier
    from speed import int8_check

    out = trained(name)
    for verdict_file in (int8_check.CHECK_FILE, int8_check.BF16_CHECK_FILE):  # measure the checks, not cached verdicts
        (out / verdict_file).unlink(missing_ok=True)
    started = time.time()
    auto = Classifier.from_checkpoint(out, dtype="auto")
    check_s = time.time() - started
    verdict = json.loads((out / int8_check.CHECK_FILE).read_text())
    bf16_file = out / int8_check.BF16_CHECK_FILE
    bf16_verdict = json.loads(bf16_file.read_text()) if bf16_file.is_file() else None
    engines = {"fp32": Classifier.from_checkpoint(out), "int8": Classifier.from_checkpoint(out, dtype="int8"), "served": auto}
    texts = data.load("sst2", "train").texts[:SENTENCES]
    rates: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(ROUNDS):
        for precision, clf in engines.items():
            started = time.time()
            clf.predict(texts)
            rates[precision].append(SENTENCES / (time.time() - started))
    served = "int8" if int8_check.is_int8(auto.model) else "bf16" if auto.autocast else "fp32"
    return {"run": name, "verdict": verdict, "bf16_verdict": bf16_verdict, "served": served, "check_s": check_s,
            "rates": rates}


def alternatives(name: str) -> dict:
    import numpy as np

    from eval import load_run
    from mpnet import SentenceEncoder
    from speed import int8_check
    from speed.quant import quantize

    out = trained(name)
    model, tokenizer, info = load_run(out)
    sets = int8_check.test_sets(out, info)
    truth = {task: np.array(ds.labels) for task, ds in sets.items()}
    fp32 = int8_check.labels(model, tokenizer, sets)
    bf16 = int8_check.labels(model, tokenizer, sets, autocast=True)
    plain = load_run(out)[0]
    quantize(SentenceEncoder(plain.backbone, tokenizer), outlier_channels=0)
    verdicts = {"bf16 autocast": int8_check.judge("", fp32, bf16, truth),
                "int8, no outlier channels in fp32 (before)": int8_check.judge("", fp32, int8_check.labels(plain, tokenizer, sets), truth)}
    return {"run": name, "verdicts": {k: {"agreement": v.agreement, "accuracy": v.accuracy, "passed": v.passed}
                                      for k, v in verdicts.items()}}


def alternatives_table() -> list[str]:
    rows = cells(prefix="alternatives-")
    if not rows:
        return []
    lines = ["", "Other precisions against the same fp32 labels (`--alternatives`; predict.py serves neither):", "",
             "| run | precision | same label | accuracy fp32 -> it | would pass | CPU |", "| --- | --- | ---: | --- | --- | --- |"]
    for r in rows:
        for precision, v in r["verdicts"].items():
            accuracy = ", ".join(f"{t} {a:.2f} -> {b:.2f}" for t, (a, b) in v["accuracy"].items())
            lines.append(f"| {r['run']} | {precision} | {100 * v['agreement']:.2f}% | {accuracy} | "
                         f"{'yes' if v['passed'] else 'no'} | {r['cpu']} |")
    return lines


def table() -> str:
    lines = ["`predict.py --dtype auto` on trained runs: the int8 check on each run's test rows (the same label as "
             "fp32 on >= 99.5% of rows, accuracy within 0.3 points; where int8 fails on a CPU with native bf16, bf16 "
             "autocast takes the same check), and `Classifier.predict` throughput on "
             f"{SENTENCES:,} SST-2 training sentences, median of {ROUNDS} interleaved rounds (min-max).", "",
             "| run | test rows | same label | accuracy fp32 -> int8 | served | fp32 sentences/s | int8 sentences/s | "
             "int8 / fp32 | served / fp32 | first check | CPU |",
             "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in cells():
        name, v, rates = r["run"], r["verdict"], r["rates"]
        accuracy = ", ".join(f"{t} {a:.2f} -> {b:.2f}" for t, (a, b) in v["accuracy"].items())
        fp32, int8 = (statistics.median(rates[k]) for k in ("fp32", "int8"))
        spread = lambda k: f"{min(rates[k]):.0f}-{max(rates[k]):.0f}"
        served_speed = f"{statistics.median(rates['served']) / fp32:.2f}" if "served" in rates else "–"
        served = r["served"]
        if r.get("bf16_verdict"):  # int8 failed on a CPU with native bf16, so bf16 took the same check
            b = r["bf16_verdict"]
            served += f" (bf16: {100 * b['agreement']:.2f}% the same, {'passed' if b['passed'] else 'failed'})"
        lines.append(f"| {name} | {v['rows']:,} | {100 * v['agreement']:.2f}% | {accuracy} | {served} | "
                     f"{fp32:.0f} ({spread('fp32')}) | {int8:.0f} ({spread('int8')}) | {int8 / fp32:.2f} | {served_speed} | "
                     f"{r['check_s']:.0f} s | {r['cpu']} |")
    lines += ["", "reviews: `python train.py` (the whole backbone fine-tuned); banking77: `--task-a banking77 --task-b none "
              "--freeze backbone` (heads on the pretrained backbone); banking77-sst2: `--task-a banking77 --task-b sst2 "
              "--max-steps 2000` (the whole backbone, both benchmarks). The test rows count each task's rows once per task. "
              "A row's speed ratio belongs to its CPU and to the fp32 route of its commit (in its result file): "
              "fp32 linear layers run on oneDNN where the CPU has AVX-512 since speed/onednn.py (docs/encoding-speed.md).",
              "Generated by `python experiments/predict_int8.py`."]
    return "\n".join(lines + alternatives_table()) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--alternatives", action="store_true", help="also check bf16 and partial int8 (no timing)")
    args = parser.parse_args()
    if not args.table_only:
        for name in RUNS:
            print(f"== {name}", file=sys.stderr, flush=True)
            cell(RESULTS, f"{name}-{cpu_type()}", lambda n=name: measure(n))
        if args.alternatives:
            for name in RUNS:
                cell(RESULTS, f"alternatives-{name}-{cpu_type()}", lambda n=name: alternatives(n))
    (HERE / "predict_int8.md").write_text(table())
    print(table())


if __name__ == "__main__":
    main()
