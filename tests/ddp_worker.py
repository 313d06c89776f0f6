"""Run by tests/test_ddp.py, alone or under torchrun: train the tiny model for a few steps with
dropout off, record the first step's gradients and every step's loss over the whole batch, and
have rank 0 write them beside the run's own files.

    python tests/ddp_worker.py OUT FREEZE_SPEC POOLS
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py OUT FREEZE_SPEC POOLS

POOLS: "one" (both labels on every example, as the reviews set) or "two" (each task its own file, as
Banking77 + SST-2: every batch leaves one head out of the loss, which DDP must be told about).
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train as train_mod  # noqa: E402
from scale.ddp import World  # noqa: E402
from heads import MultiTaskModel  # noqa: E402
from mpnet import MPNet, MPNetConfig, Tokenizer  # noqa: E402
from data import LabelledTexts  # noqa: E402
from test_train import recording, tasks  # noqa: E402
from weights.fetch import fetch  # noqa: E402


def forbidden(*args, **kwargs):
    raise AssertionError("a rank other than 0 tried to write a file")


def two_pools() -> dict:
    one = tasks()
    return {t: LabelledTexts(ds.name, ds.split, ds.texts, ds.labels, ds.label_names, source=f"toy-{t}")
            for t, ds in one.items()}


def main(out: Path, spec: str, pools: str) -> None:
    world = World.from_env("cpu")
    if not world.main:
        for name in ("save_training_state", "save_weights", "write_atomic"):
            setattr(train_mod, name, forbidden)
    torch.manual_seed(0)
    cfg = MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = MultiTaskModel(MPNet(cfg), {"a": 4, "b": 2}, dropout=0.0)
    tokenizer = Tokenizer(fetch() / "tokenizer.json")

    grads, losses = {}, []
    # each rank's total is its share of the whole batch's mean, times the number of ranks (ddp.py)
    setup, loss = recording(grads, losses, loss_value=lambda total: world.sum([float(total.detach())])[0] / world.size)
    train_mod.setup = setup
    train_mod.multitask_loss = loss
    run_cfg = train_mod.TrainConfig(epochs=2, batch_size=4, lr=1e-3, head_lr=3e-3, warmup=0.25, clip=1e6,
                                    dtype="fp32", log_every=1000, freeze=spec, out=str(out))
    data = tasks() if pools == "one" else two_pools()
    train_mod.train(run_cfg, model, tokenizer, data, data, world=world)
    if world.main:
        save_file(grads, out / "grads.safetensors")
        (out / "losses.json").write_text(json.dumps(losses))
    world.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
