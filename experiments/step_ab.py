"""Two checkouts' training steps (or encoding), timed in fresh processes, interleaved: did a change
move the speed?

    python experiments/step_ab.py --a /path/to/old/checkout --b . --pairs 3
    python experiments/step_ab.py --a /path/to/old/checkout --b . --pairs 3 --encode --name encode

--encode times each checkout's encode() instead, on the first --sentences STS-B test sentences (batch
32, fp32), by both routes in the same process, round by round: speed.load_encoder(dtype="fp32") (the
fast path) and SentenceEncoder.from_pretrained() as it is (the plain model).

Each run is a fresh process started in one checkout (its own train.py, data.py, model): train.py's set-up
on Banking77 + SST-2 (as `tools/bench.py --train` builds it: --no-cache, no validation split), one warm-up
pass over the batches, then --rounds passes of --steps calls of that checkout's own train.train_step, fp32.
Runs alternate a, b, b, a, a, b, ... (each pair's first side flips, so that neither checkout always
starts right after the other): a machine that slows down or speeds up hits both alike. One JSON
per run in experiments/results/layout_ab/ (tokens/s per round, the checkout's commit, the CPU); the
summary is the median of the per-pair ratios b / a, with their range.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "layout_ab"

CHILD = r"""
import contextlib, io, itertools, json, statistics, subprocess, sys, tempfile, time
sys.path.insert(0, ".")
import torch
import data, train
steps, rounds = int(sys.argv[1]), int(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp:
    cfg = train.TrainConfig(task_a="banking77", task_b="sst2", dtype="fp32", no_cache=True, val_fraction=0.0, out=tmp)
    load = data.load_tasks if hasattr(data, "load_tasks") else train.load_tasks
    train_sets, _, _ = load(cfg)
    torch.manual_seed(0)
    model, tokenizer = train.build(cfg, train_sets)
    with contextlib.redirect_stderr(io.StringIO()):
        run = train.setup(cfg, model, tokenizer, train_sets, resume=False)
    batches = list(itertools.islice(run.sampler, steps))
    tokens = sum(len(ids) for p, rows in batches for ids in run.tokenizer.encode([run.pools[p].texts[i] for i in rows]))
    import freeze
    seconds = []
    if hasattr(train, "make_batch"):  # the step takes a Batch (since #49); older checkouts take rows
        step = lambda p, rows: train.train_step(run, train.make_batch(run, p, rows))
    else:
        step = lambda p, rows: train.train_step(run, p, rows)
    for r in range(rounds + 1):  # round 0 warms up (AdamW's state, the allocator) and is dropped
        freeze.train_mode(run.model)
        start = time.perf_counter()
        for p, rows in batches:
            step(p, rows)
        if r:
            seconds.append(time.perf_counter() - start)
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip())
try:
    from speed.hardware import describe
except ImportError:
    from hardware import describe
print(json.dumps({"commit": commit + ("+changes" if dirty else ""), "cpu": describe(), "tokens": tokens,
                  "round_s": seconds, "tokens_per_s": tokens / statistics.median(seconds)}))
"""


ENCODE_CHILD = r"""
import json, statistics, subprocess, sys, time
sys.path.insert(0, ".")
import torch
import data
from mpnet import SentenceEncoder
from speed import load_encoder
count, rounds = int(sys.argv[1]), int(sys.argv[2])
sentences = list(dict.fromkeys(s for p in data.read_stsb("test") for s in p[:2]))[:count]
torch.manual_seed(0)
encoders = {"fast": load_encoder(dtype="fp32"), "plain": SentenceEncoder.from_pretrained()}
seconds = {name: [] for name in encoders}
for r in range(rounds + 1):  # round 0 warms up and is dropped
    for name, encoder in encoders.items():
        start = time.perf_counter()
        encoder.encode(sentences, batch_size=32)
        if r:
            seconds[name].append(time.perf_counter() - start)
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip())
from speed.hardware import describe
print(json.dumps({"commit": commit + ("+changes" if dirty else ""), "cpu": describe(), "sentences": count,
                  "round_s": seconds, "rates": {k: count / statistics.median(v) for k, v in seconds.items()}}))
"""


def one_run(tree: Path, steps: int, rounds: int, encode: bool = False) -> dict:
    out = subprocess.run([sys.executable, "-c", ENCODE_CHILD if encode else CHILD, str(steps), str(rounds)],
                         cwd=tree, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def rates(result: dict) -> dict[str, float]:
    """{route: items per second}: tokens/s of the step, or sentences/s of each encode route."""
    return result.get("rates") or {"step": result["tokens_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, required=True, help="the checkout before the change")
    parser.add_argument("--b", type=Path, required=True, help="the checkout after it")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="run", help="prefix of the result files")
    parser.add_argument("--alternate", action="store_true", help="odd pairs run b first")
    parser.add_argument("--encode", action="store_true", help="time encode(), not the training step")
    parser.add_argument("--sentences", type=int, default=512, help="with --encode: how many")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    ratios: dict[str, list[float]] = {}
    for pair in range(args.pairs):
        result = {}
        for side in ("a", "b") if pair % 2 == 0 or not args.alternate else ("b", "a"):
            path = RESULTS / f"{args.name}-{pair}-{side}.json"
            if not path.is_file():  # resumable: one file per run
                size = args.sentences if args.encode else args.steps
                path.write_text(json.dumps(one_run(getattr(args, side), size, args.rounds, args.encode), indent=1))
            result[side] = json.loads(path.read_text())
            shown = ", ".join(f"{route} {rate:.1f}/s" for route, rate in rates(result[side]).items())
            print(f"pair {pair} {side}: {result[side]['commit']} {shown}", flush=True)
        for route, rate in rates(result["b"]).items():
            ratios.setdefault(route, []).append(rate / rates(result["a"])[route])
    print(f"CPU: {result['a']['cpu']}")
    for route, values in ratios.items():
        print(f"{route}: b / a, median of {len(values)} pairs: {statistics.median(values):.3f} "
              f"(range {min(values):.3f}-{max(values):.3f})")


if __name__ == "__main__":
    main()
