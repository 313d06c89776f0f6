"""kill -9 at random instants, then resume: the work must end as if never interrupted, and no resume may
start from further back than the last completed save.

    python tests/fault_injection.py --kills 200                  # training (about 3 s a kill on 2 cores)
    python tests/fault_injection.py --kills 100 --corpus         # the corpus command (scale/corpus.py)

Each trial runs tests/kill_worker.py in a fresh folder: it trains the tiny model (24 steps, a checkpoint
after every step), or with --corpus embeds 3,000 lines with the tiny encoder (375 chunks, a record after
each). The driver kills it with SIGKILL at a random instant after it has started (uniform over the
first half of the time an uninterrupted run takes), starts it again, and so on until a run finishes by
itself or the kills asked for are spent (the last run is then left to finish). Then it compares the
final weights, or the final .npy row for row, with those of an uninterrupted run, bit for bit (same
machine, same threads). tests/test_reliability.py runs a short form of each in CI.
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from reliability.checkpoint import load_training_state, read_progress  # noqa: E402


def start(out: Path, corpus: Path | None) -> subprocess.Popen:
    log = open(out.with_suffix(".log"), "a")  # stderr to a file: an unread pipe would fill and block the worker
    extra = ["--corpus", str(corpus)] if corpus else []
    return subprocess.Popen([sys.executable, str(HERE / "kill_worker.py"), str(out), *extra], stdout=subprocess.PIPE,
                            stderr=log, text=True)


def finish(out: Path, corpus: Path | None) -> float:
    """An uninterrupted run; -> the seconds it worked (from its "started" line to its exit)."""
    proc = start(out, corpus)
    proc.stdout.readline()
    started = time.time()
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"kill_worker.py exited with {proc.returncode}:\n{err}")
    return time.time() - started


def final(out: Path, corpus: Path | None) -> dict[str, torch.Tensor]:
    """What the work produced: the trained weights, or the embeddings as one tensor."""
    if corpus:
        return {"embeddings": torch.from_numpy(np.load(out / "emb.npy"))}
    return load_training_state(out / "last.safetensors")[0]


DONE = 10**9  # saved() once the .npy is complete


def saved(out: Path, corpus: Path | None) -> int:
    """How far the last completed save got: the checkpoint's step, or the number of chunks recorded as done."""
    if corpus:
        record = out / "emb.npy.partial.done-0"
        if (out / "emb.npy").exists():
            return DONE
        return len(json.loads(record.read_text())["chunks"]) if record.exists() else 0
    progress = read_progress(out / "last.safetensors") if (out / "last.safetensors").exists() else None
    return progress["step"] if progress else 0


def trial(out: Path, rng: random.Random, max_delay: float, corpus: Path | None, most: int) -> dict:
    """Kill runs in `out` until one finishes, at most `most` times (then the last run is left to finish);
    -> kills, and the step (or chunk count) each resume started from."""
    kills, steps, outcome = 0, [], None
    while outcome is None:
        proc = start(out, corpus)
        if proc.stdout.readline().strip() != "started":  # it finished (or refused) before starting
            proc.wait()
            outcome = proc.returncode
            break
        if kills == most:
            outcome = proc.wait()
            break
        time.sleep(rng.uniform(0, max_delay / 2))  # within the first half: more kills a trial
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            step = saved(out, corpus)
            if steps and step < steps[-1]:
                raise AssertionError(f"lost state: a checkpoint at step {steps[-1]} was replaced by one at step {step}")
            steps.append(step)
        else:
            outcome = proc.wait()
    if outcome != 0:
        raise AssertionError(f"a resume after kill {kills} failed: {out.with_suffix('.log').read_text()[-2000:]}")
    return {"kills": kills, "steps": steps}


def run(kills: int, seed: int = 0, corpus: bool = False) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        source = None
        if corpus:
            source = Path(tmp) / "sentences.txt"
            source.write_text("".join(f"sentence {i}: {'word ' * (i % 17)}the end\n" for i in range(3000)), encoding="utf-8")
        reference = Path(tmp) / "straight"
        max_delay = finish(reference, source)
        expected = final(reference, source)
        done, trials, temp_left = 0, 0, 0
        while done < kills:
            out = Path(tmp) / f"trial-{trials}"
            result = trial(out, rng, max_delay, source, most=kills - done)
            got = final(out, source)
            for name, value in expected.items():
                if not torch.equal(got[name], value):
                    raise AssertionError(f"trial {trials}: {name} differs from the uninterrupted run after "
                                         f"{result['kills']} kills at steps {result['steps']}")
            temp_left += len(list(out.glob("*.tmp")))  # what the kills left behind (harmless; counted)
            done += result["kills"]
            trials += 1
            steps = ["done" if s == DONE else s for s in result["steps"]]
            print(f"trial {trials}: {result['kills']} kills, resumed from {'chunks' if corpus else 'steps'} {steps}; "
                  f"the same {'embeddings' if corpus else 'weights'}", flush=True)
    return {"kills": done, "trials": trials, "corrupt_or_lost": 0, "temporary_files_left": temp_left,
            "work": "corpus" if corpus else "train"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", action="store_true", help="kill the corpus command instead of training")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    started = time.time()
    result = run(args.kills, args.seed, args.corpus) | {"seed": args.seed, "wall_s": round(time.time() - started)}
    report(result, args.json)


def report(result: dict, path: Path | None) -> None:
    """Print the result; with a path, also write it there with the CPU named (tests/writer_races.py too)."""
    print(json.dumps(result))
    if path:
        from speed.hardware import describe

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result | {"cpu": describe()}, indent=1))


if __name__ == "__main__":
    main()
