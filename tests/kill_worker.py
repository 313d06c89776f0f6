"""Run by tests/fault_injection.py, killed and started again at random instants.

    python tests/kill_worker.py OUT                    # train the tiny model, a checkpoint after every step
    python tests/kill_worker.py OUT --corpus INPUT     # embed INPUT with the tiny encoder into OUT/emb.npy

Each resumes what an earlier run in OUT left (last.safetensors; emb.npy.partial and its chunk records).
Prints "started" once set up (the driver kills only after that line), and exits 0 when the work is
done. A checkpoint it cannot resume from is refused with one line starting "error:" and exit code 2.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import train as train_mod  # noqa: E402
from mpnet import Tokenizer  # noqa: E402
from mpnet import SentenceEncoder  # noqa: E402
from reliability.checkpoint import read_progress  # noqa: E402
from scale.corpus import embed_file  # noqa: E402
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
    print("started", flush=True)
    train_mod.train(cfg, tiny_model(), tokenizer, tasks(), tasks(), resume=progress is not None)


def embed(out: Path, source: Path) -> None:
    """The corpus command's embed_file, with the tiny encoder (the same seed every start: the same weights)."""
    if (out / "emb.npy").exists():  # finished: the .npy is only ever renamed into place complete
        return
    encoder = SentenceEncoder(tiny_model().backbone.eval(), Tokenizer(fetch() / "tokenizer.json"))
    out.mkdir(exist_ok=True)
    print("started", flush=True)
    embed_file(encoder, source, out / "emb.npy", chunk_size=8)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[2] == "--corpus":
        embed(Path(sys.argv[1]), Path(sys.argv[3]))
    else:
        main(Path(sys.argv[1]))
