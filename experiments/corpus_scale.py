"""Embedding a corpus with `mpnet.py --input/--output` (corpus.py): throughput against encode(), one
and two processes, and peak memory as the corpus grows.

    python experiments/corpus_scale.py            # every cell whose result is missing
    python experiments/corpus_scale.py --table-only

The corpus: SST-2's 67,349 training phrases followed by STS-B's train/dev/test sentences, repeated
until N lines (git-ignored files in runs/corpus/). Cells, one JSON each in experiments/results/corpus/, all with --dtype int8 (the fastest path here,
which is what makes the 1M row affordable: about 1.5 hours on 2 cores instead of 4 in fp32):
  memory-N       peak RSS of `python mpnet.py --input ... --output ... --dtype int8 --output-dtype float16`
                 for N = 10k, 30k, 100k, 1M: flat means bounded. The parent samples the child's VmHWM
                 every 10 s into runs/corpus/memory-N.progress.json, so a run cut off by the end of a
                 session resumes (the corpus tool skips finished chunks) and the cell reports the
                 largest peak of all its invocations and their summed wall time.
  speed-N        sentences/s and peak RSS on the first N lines, each way in a fresh process that
                 loads the model: encode() on a list held in memory (then np.save), mpnet.py --input
                 with 1 process and 2 threads, torchrun with 2 processes of 1 thread. N = 5,000: the
                 median of 3 interleaved rounds; N = 100,000 (the issue's size): one round, each way
                 about 12 minutes, which averages out the second-to-second noise of a shared machine
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from reliability.checkpoint import write_atomic  # noqa: E402
from cells import cell  # noqa: E402
from scale.corpus import CHUNK  # noqa: E402
from speed.memory import peak_rss_mb  # noqa: E402

RESULTS = HERE / "results" / "corpus"
WORK = ROOT / "runs" / "corpus"
MEMORY_SIZES = (10_000, 30_000, 100_000, 1_000_000)
DTYPE = ["--dtype", "int8"]
SPEED_ROUNDS = {5_000: 3, 100_000: 1}  # corpus size -> interleaved rounds
ENCODE = ("import sys, numpy as np; from speed import load_encoder; "
          "lines = open(sys.argv[1], encoding='utf-8').read().split('\\n')[:-1]; "
          "np.save(sys.argv[2], load_encoder(dtype='int8').encode(lines).numpy())")


def corpus_file(n: int) -> Path:
    import data

    path = WORK / f"corpus-{n}.txt"
    if not path.is_file():
        base = data.load("sst2", "train").texts + [s for split in ("train", "dev", "test")
                                                   for pair in data.read_stsb(split, None) for s in pair[:2]]
        lines = (base * (n // len(base) + 1))[:n]
        WORK.mkdir(parents=True, exist_ok=True)
        write_atomic(lambda p: p.write_text("\n".join(lines) + "\n", encoding="utf-8"), path)
    return path


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB of the largest process: wait4 gives this child's own rusage)."""
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=os.environ | (env or {}), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read()[-2000:]}")
    return time.time() - started, usage.ru_maxrss / 1024


def memory(n: int) -> dict:
    out, progress = WORK / f"emb16-{n}.npy", WORK / f"memory-{n}.progress.json"
    state = json.loads(progress.read_text()) if progress.is_file() else {"peak_rss_mb": 0, "wall_s": 0, "invocations": 0}
    state["invocations"] += 1
    cmd = [sys.executable, "-m", "scale.corpus", "--input", str(corpus_file(n)), "--output", str(out), *DTYPE,
           "--output-dtype", "float16"]
    started, wall_before = time.time(), state["wall_s"]
    log = open(WORK / f"memory-{n}.log", "a")  # a file, not a pipe: a pipe nobody reads fills up and blocks
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    while proc.poll() is None:
        state["peak_rss_mb"] = max(state["peak_rss_mb"], peak_rss_mb(proc.pid) or 0)
        state["wall_s"] = wall_before + time.time() - started
        write_atomic(lambda p: p.write_text(json.dumps(state)), progress)
        time.sleep(10)
    log.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {(WORK / f'memory-{n}.log').read_text()[-2000:]}")
    out.unlink()
    return {"sentences": n, "peak_rss_mb": round(state["peak_rss_mb"]), "wall_s": round(state["wall_s"], 1),
            "sentences_per_s": round(n / state["wall_s"], 1), "invocations": state["invocations"]}


def speed(n: int, rounds: int) -> dict:
    source, out = corpus_file(n), WORK / "emb-speed.npy"
    ways = {
        "encode() on a list": ([sys.executable, "-c", ENCODE, str(source), str(out)], None),
        "mpnet.py --input, 1 process": ([sys.executable, "-m", "scale.corpus", "--input", str(source), "--output", str(out),
                                         *DTYPE], None),
        "torchrun, 2 processes x 1 thread": ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                              "--nproc_per_node=2", "-m", "scale.corpus", "--input", str(source), "--output",
                                              str(out), *DTYPE], {"OMP_NUM_THREADS": "1"}),
    }
    walls, peaks = {name: [] for name in ways}, {name: [] for name in ways}
    for _ in range(rounds):
        for name, (cmd, env) in ways.items():
            out.unlink(missing_ok=True)
            wall, peak = timed(cmd, env)
            walls[name].append(wall)
            peaks[name].append(peak)
    return {"sentences": n, "sentences_per_s": {k: round(n / statistics.median(v), 1) for k, v in walls.items()},
            "peak_rss_mb": {k: round(max(v)) for k, v in peaks.items()},
            "rounds_s": {k: [round(x, 1) for x in v] for k, v in walls.items()}}


def rows_done(n: int) -> int:
    """Rows of an unfinished memory-N run already recorded as embedded (corpus.py's .done records)."""
    chunks = set()
    for record in WORK.glob(f"emb16-{n}.npy.partial.done-*"):
        chunks.update(json.loads(record.read_text())["chunks"])
    return min(n, len(chunks) * CHUNK)


def table() -> str:
    lines = []
    mem = [json.loads(p.read_text()) for n in MEMORY_SIZES if (p := RESULTS / f"memory-{n}.json").is_file()]
    if mem:
        lines += [f"Peak RSS of `python mpnet.py --input corpus.txt --output emb.npy --dtype int8 --output-dtype float16` "
                  f"(fresh process; CPU: {mem[0]['cpu']}):", "",
                  "| sentences | peak RSS | wall time | sentences/s |", "| ---: | ---: | ---: | ---: |"]
        # A cell finished over several invocations (sessions) has no meaningful wall time: the first
        # was paused while other benchmarks had the CPU. Its peak RSS is the largest of all of them.
        lines += [f"| {m['sentences']:,} | {m['peak_rss_mb']:,} MB | "
                  + (f"{m['wall_s']:.0f} s | {m['sentences_per_s']:.1f} |" if m["invocations"] == 1
                     else f"resumed, {m['invocations']} runs | see the 100k row |") for m in mem]
        for n in MEMORY_SIZES:  # a cell still under way: what its progress file holds so far
            progress = WORK / f"memory-{n}.progress.json"
            if not (RESULTS / f"memory-{n}.json").is_file() and progress.is_file():
                state, done = json.loads(progress.read_text()), rows_done(n)
                lines.append(f"| {n:,} (unfinished: {done:,} rows so far) | {state['peak_rss_mb']:,.0f} MB so far "
                             f"| {state['invocations']} runs so far | |")
        lines += [""]
    for n, rounds in SPEED_ROUNDS.items():
        path = RESULTS / f"speed-{n}.json"
        if not path.is_file():
            continue
        sp = json.loads(path.read_text())
        base, peaks = sp["sentences_per_s"]["encode() on a list"], sp.get("peak_rss_mb", {})
        lines += [f"Throughput on {n:,} sentences, each way a fresh process including model load "
                  f"({'median of 3 interleaved rounds' if rounds > 1 else 'one round'}; CPU: {sp['cpu']}):", "",
                  "| how | sentences/s | × encode() | peak RSS (largest process) |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {k} | {v:.1f} | {v / base:.2f} | {f'{peaks[k]:,} MB' if k in peaks else 'not measured'} |"
                  for k, v in sp["sentences_per_s"].items()] + [""]
    return "\n".join(lines) + "Generated by `python experiments/corpus_scale.py`.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--only", choices=["memory", "speed"], help="run only these cells")
    args = parser.parse_args()
    if not args.table_only:
        if args.only != "speed":
            for n in MEMORY_SIZES:
                cell(RESULTS, f"memory-{n}", lambda: memory(n))
        if args.only != "memory":
            for n, rounds in SPEED_ROUNDS.items():
                cell(RESULTS, f"speed-{n}", lambda: speed(n, rounds))
    (HERE / "corpus_scale.md").write_text(table())
    print(table())


if __name__ == "__main__":
    main()
