"""Two processes write one output at the same instant: the output is one writer's, whole, and a writer
that loses says so in one line.

    python tests/writer_races.py --trials 100 --json experiments/results/fault_injection/writers-100.json

Three races, each `--trials` times:
  corpus   two corpus jobs (scale.corpus.embed_file, the tiny encoder) into one emb.npy, one asking
           for float32 rows and the other float16 (the race that once left a float16 header on
           float32 rows);
  predict  two predict.py commands (predict.main) into one --output, each with its own input;
  beside   a train.py run (the tiny model) and a corpus job whose --output lies in the run folder.

Two long-lived worker processes (`--worker`) take the writers' parts: each trial, the driver hands each
worker one job, the second after a random 0-30 ms, so that the two overlap in most trials and follow
each other in some. Afterwards:
  * the output is exactly what one writer alone writes (bit for bit), never a mix;
  * every writer either finished (exit 0), or lost the race with one line naming the holder (InUse,
    exit 1 on the command line), never a traceback;
  * both finished only if one came after the other: then the output is the later one's;
  * `beside`: both always finish, and the run's weights and the rows are the uninterrupted ones'.
tests/test_nothing_lost.py runs a short form in CI.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


# ----------------------------------------------------------------------------- the worker
def run_job(job: dict) -> dict:
    """One writer's part; -> {"status": "ok" | "refused" | "failed", "line": ..., "t0", "t1"}."""
    import predict
    from mpnet import SentenceEncoder, Tokenizer
    from reliability.lock import InUse
    from scale.corpus import embed_file
    from test_train import config, tasks, tiny_model
    from weights.fetch import fetch

    t0 = time.time()
    try:
        if job["kind"] == "corpus":
            encoder = SentenceEncoder(tiny_model().backbone.eval(), Tokenizer(fetch() / "tokenizer.json"))
            embed_file(encoder, Path(job["source"]), Path(job["output"]), dtype=job["dtype"], chunk_size=50)
        elif job["kind"] == "predict":
            predict.main(["--checkpoint", job["run"], "--input", job["source"], "--output", job["output"]])
        else:  # train
            import train as train_mod

            cfg = config(Path(job["output"]).parent, epochs=2, batch_size=2, out=job["output"])
            train_mod.train(cfg, tiny_model(), Tokenizer(fetch() / "tokenizer.json"), tasks(), tasks())
        status, line = "ok", ""
    except InUse as e:
        status, line = "refused", str(e)
    except SystemExit as e:  # predict.main's one line
        status, line = ("ok", "") if e.code in (None, 0) else ("refused" if "in use" in str(e.code) else "failed",
                                                               str(e.code))
    except Exception as e:  # noqa: BLE001  (reported, and fails the trial)
        status, line = "failed", f"{type(e).__name__}: {e}"
    return {"status": status, "line": line, "t0": t0, "t1": time.time()}


def worker() -> None:
    import io
    from contextlib import redirect_stderr

    print("ready", flush=True)
    for request in sys.stdin:
        with redirect_stderr(io.StringIO()):  # progress lines; the result carries what matters
            result = run_job(json.loads(request))
        print(json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- the driver
class Workers:
    def __init__(self):
        self.procs = [subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True) for _ in range(2)]
        for p in self.procs:
            assert p.stdout.readline().strip() == "ready"

    def race(self, jobs: list[dict], rng: random.Random) -> list[dict]:
        for proc, job in zip(self.procs, jobs):
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            time.sleep(rng.uniform(0, 0.03))
        return [json.loads(p.stdout.readline()) for p in self.procs]

    def close(self) -> None:
        for p in self.procs:
            p.stdin.close()
            p.wait(timeout=60)


def one_writer(results: list[dict], got: bytes, alone: list[bytes], what: str) -> str:
    """Check a race of two writers of one output; -> "overlapped" or "one after the other"."""
    statuses = [r["status"] for r in results]
    if "failed" in statuses:
        raise AssertionError(f"{what}: a writer failed: {[r['line'] for r in results]}")
    for r in results:
        if r["status"] == "refused" and ("\n" in r["line"] or "is in use by another" not in r["line"]):
            raise AssertionError(f"{what}: the loser's message is not one line naming the holder: {r['line']!r}")
    if statuses.count("ok") == 2:
        later = max(range(2), key=lambda i: results[i]["t1"])
        if got != alone[later]:
            raise AssertionError(f"{what}: both finished, and the output is not the later one's")
        return "one after the other"
    winner = statuses.index("ok")
    if got != alone[winner]:
        raise AssertionError(f"{what}: the output is not the winner's alone (a mix, or damaged)")
    return "overlapped"


def run(trials: int, seed: int = 0) -> dict:
    import numpy as np
    import torch

    from test_reliability import tiny_run_folder

    rng, counts = random.Random(seed), {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "sentences.txt"
        source.write_text("".join(f"sentence {i}: {'word ' * (i % 13)}the end\n" for i in range(400)))
        inputs = [tmp / "a.txt", tmp / "b.txt"]
        for i, path in enumerate(inputs):
            path.write_text("".join(f"input {'ab'[i]} line {j}\n" for j in range(300)))
        run_folder = tiny_run_folder(tmp)
        workers = Workers()
        try:
            # what each writer writes alone
            alone_rows = []
            for dtype in ("float32", "float16"):
                out = tmp / f"alone-{dtype}.npy"
                assert workers.race([{"kind": "corpus", "source": str(source), "output": str(out), "dtype": dtype},
                                     {"kind": "corpus", "source": str(source), "output": str(tmp / "x.npy"),
                                      "dtype": dtype}], rng)[0]["status"] == "ok"
                alone_rows.append(out.read_bytes())
            alone_predictions = []
            for i, path in enumerate(inputs):
                out = tmp / f"alone-{i}.jsonl"
                workers.race([{"kind": "predict", "run": str(run_folder), "source": str(path), "output": str(out)},
                              {"kind": "predict", "run": str(run_folder), "source": str(path),
                               "output": str(tmp / f"y{i}.jsonl")}], rng)
                alone_predictions.append(out.read_bytes())
            straight = tmp / "straight" / "run"
            workers.race([{"kind": "train", "output": str(straight)},
                          {"kind": "corpus", "source": str(source), "output": str(tmp / "z.npy"), "dtype": "float32"}],
                         rng)
            from safetensors.torch import load_file

            straight_weights = load_file(straight / "best.safetensors")

            for t in range(trials):
                out = tmp / f"corpus-{t}.npy"
                jobs = [{"kind": "corpus", "source": str(source), "output": str(out), "dtype": d}
                        for d in ("float32", "float16")]
                order = rng.sample([0, 1], 2)  # who starts first
                results = workers.race([jobs[i] for i in order], rng)
                results = [results[order.index(i)] for i in range(2)]
                how = one_writer(results, out.read_bytes(), alone_rows, f"corpus trial {t}")
                counts[f"corpus: {how}"] = counts.get(f"corpus: {how}", 0) + 1

                out = tmp / f"predict-{t}.jsonl"
                jobs = [{"kind": "predict", "run": str(run_folder), "source": str(p), "output": str(out)} for p in inputs]
                order = rng.sample([0, 1], 2)
                results = workers.race([jobs[i] for i in order], rng)
                results = [results[order.index(i)] for i in range(2)]
                how = one_writer(results, out.read_bytes(), alone_predictions, f"predict trial {t}")
                counts[f"predict: {how}"] = counts.get(f"predict: {how}", 0) + 1

                folder = tmp / f"beside-{t}" / "run"
                folder.mkdir(parents=True)  # the run folder exists, and the corpus job is told to write in it
                results = workers.race([{"kind": "train", "output": str(folder)},
                                        {"kind": "corpus", "source": str(source), "output": str(folder / "emb.npy"),
                                         "dtype": "float32"}], rng)
                if [r["status"] for r in results] != ["ok", "ok"]:
                    raise AssertionError(f"beside trial {t}: {[r['line'] for r in results]}")
                weights = load_file(folder / "best.safetensors")
                if not all(torch.equal(weights[k], v) for k, v in straight_weights.items()):
                    raise AssertionError(f"beside trial {t}: the run's weights differ from the uninterrupted run's")
                if (folder / "emb.npy").read_bytes() != alone_rows[0]:
                    raise AssertionError(f"beside trial {t}: the rows differ")
                overlapped = results[1]["t0"] < results[0]["t1"] and results[0]["t0"] < results[1]["t1"]
                key = f"beside: {'overlapped' if overlapped else 'one after the other'}"
                counts[key] = counts.get(key, 0) + 1
                np.load(folder / "emb.npy")  # a valid .npy
                print(f"trial {t + 1}: {counts}", flush=True)
        finally:
            workers.close()
    return {"trials_per_race": trials, "races": 3 * trials, "corrupt_or_mixed": 0, "outcomes": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker()
    started = time.time()
    result = run(args.trials, args.seed) | {"seed": args.seed, "wall_s": round(time.time() - started)}
    from fault_injection import report

    report(result, args.json)


if __name__ == "__main__":
    main()
