"""kill -9 at random instants of training, then resume: the run must end with the same weights as one
never interrupted, and no resume may start from further back than the last completed save.

    python tests/fault_injection.py --kills 200       # the long form (about 3 s a kill on 2 cores)

Each trial trains the tiny model (tests/kill_worker.py: 24 steps, a checkpoint after every step) in a
fresh folder, kills the process with SIGKILL at a random instant after it has started training
(uniform over the first half of the time an uninterrupted run trains), starts it again, and so on until a run finishes
by itself. Then it compares the final weights with those of
an uninterrupted run, bit for bit (same machine, same threads). tests/test_reliability.py runs a short
form in CI.
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

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from reliability.checkpoint import load_training_state, read_progress  # noqa: E402


def start(out: Path) -> subprocess.Popen:
    log = open(out.with_suffix(".log"), "a")  # stderr to a file: an unread pipe would fill and block the worker
    return subprocess.Popen([sys.executable, str(HERE / "kill_worker.py"), str(out)], stdout=subprocess.PIPE,
                            stderr=log, text=True)


def finish(out: Path) -> float:
    """An uninterrupted run; -> the seconds it trained (from its "training" line to its exit)."""
    proc = start(out)
    proc.stdout.readline()
    started = time.time()
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"kill_worker.py exited with {proc.returncode}:\n{err}")
    return time.time() - started


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_training_state(out / "last.safetensors")[0]


def trial(out: Path, rng: random.Random, max_delay: float) -> dict:
    """Kill runs in `out` until one finishes; -> kills, and the steps each resume started from."""
    kills, steps, outcome = 0, [], None
    while outcome is None:
        proc = start(out)
        if proc.stdout.readline().strip() != "training":  # it finished (or refused) before training
            proc.wait()
            outcome = proc.returncode
            break
        time.sleep(rng.uniform(0, max_delay / 2))  # within the first half: more kills a trial
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            progress = read_progress(out / "last.safetensors") if (out / "last.safetensors").exists() else None
            step = progress["step"] if progress else 0
            if steps and step < steps[-1]:
                raise AssertionError(f"lost state: a checkpoint at step {steps[-1]} was replaced by one at step {step}")
            steps.append(step)
        else:
            outcome = proc.wait()
    if outcome != 0:
        raise AssertionError(f"a resume after kill {kills} failed: {out.with_suffix('.log').read_text()[-2000:]}")
    return {"kills": kills, "steps": steps}


def run(kills: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "straight"
        max_delay = finish(reference)
        expected = weights(reference)
        done, trials, temp_left = 0, 0, 0
        while done < kills:
            out = Path(tmp) / f"trial-{trials}"
            result = trial(out, rng, max_delay)
            got = weights(out)
            for name, value in expected.items():
                if not torch.equal(got[name], value):
                    raise AssertionError(f"trial {trials}: {name} differs from the uninterrupted run after "
                                         f"{result['kills']} kills at steps {result['steps']}")
            temp_left += len(list(out.glob("*.tmp")))  # what the kills left behind (harmless; counted)
            done += result["kills"]
            trials += 1
            print(f"trial {trials}: {result['kills']} kills, resumed from steps {result['steps']}; "
                  f"same weights", flush=True)
    return {"kills": done, "trials": trials, "corrupt_or_lost": 0, "temporary_files_left": temp_left}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    started = time.time()
    result = run(args.kills, args.seed) | {"seed": args.seed, "wall_s": round(time.time() - started)}
    print(json.dumps(result))
    if args.json:
        from speed.hardware import describe

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result | {"cpu": describe()}, indent=1))


if __name__ == "__main__":
    main()
