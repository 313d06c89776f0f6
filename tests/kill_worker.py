"""Run by tests/fault_injection.py: train the tiny model with a checkpoint after every step, resuming
from OUT/last.safetensors when an earlier run there was killed.

    python tests/kill_worker.py OUT

Prints "training" once set up (the driver kills only after that line), and exits 0 when the run is
done. A checkpoint it cannot resume from is refused with one line starting "error:" and exit code 2.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import train as train_mod  # noqa: E402
from mpnet import Tokenizer  # noqa: E402
from reliability.checkpoint import read_progress  # noqa: E402
from test_train import config, tasks, tiny_model  # noqa: E402
from weights.fetch import fetch  # noqa: E402

EPOCHS = 6  # 4 steps an epoch: 24 steps, each followed by a save


def main(out: Path) -> None:
    cfg = config(out.parent, epochs=EPOCHS, batch_size=2, save_every=1, out=str(out))
    last = out / "last.safetensors"
    progress = read_progress(last) if last.is_file() else None
    if last.is_file() and progress is None:
        sys.exit(f"error: {last} is not a readable checkpoint")
    if progress and progress.get("done"):
        return
    tokenizer = Tokenizer(fetch() / "tokenizer.json")
    print("training", flush=True)
    train_mod.train(cfg, tiny_model(), tokenizer, tasks(), tasks(), resume=progress is not None)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
