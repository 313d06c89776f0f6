"""train.py under torchrun: 2 CPU processes (gloo) against 1, the same global batch, on the tiny config.

Each case launches tests/ddp_worker.py twice: alone, and under `python -m torch.distributed.run
--nproc_per_node=2`. Dropout is off (each rank draws its own masks), gradient clipping is off (it
would hide a wrongly scaled gradient), so the two runs compute the same maths in another order.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from reliability.checkpoint import load_training_state

ROOT = Path(__file__).resolve().parent.parent
U = 2.0 ** -24  # float32 unit roundoff
# 2 epochs, global batch 4: one pool of 8 examples carrying both labels gives 2 steps an epoch; two
# pools (the same 8 texts, one task each) give 4.
STEPS_PER_EPOCH = {"one": 2, "two": 4}


def launch(out: Path, spec: str, pools: str, processes: int) -> None:
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    cmd = runner + [str(ROOT / "tests" / "ddp_worker.py"), str(out), spec, pools]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("spec, pools", [("none", "two"), ("gradual:1", "two"), ("top-1", "one"), ("backbone", "two")])
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, spec, pools):
    one, two = tmp_path / "one", tmp_path / "two"
    launch(one, spec, pools, 1)
    launch(two, spec, pools, 2)

    # Rank 0 alone wrote: one set of run files (rank 1 would have raised on any write, see the worker).
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir()) == [
        "best.safetensors", "grads.safetensors", "last.safetensors", "losses.json", "losses.jsonl", "metrics.jsonl"]

    # The first step's gradients, after DDP's all-reduce. Each differs by rounding only: the ranks
    # see 2 examples instead of 4, so every matrix product is blocked differently. A length-n dot
    # product in fp32 is exact to n*u relative; the longest here is n = 64 (the FFN), a value passes
    # through at most 2 * (2 layers + embeddings + head) = 8 such products forward and back, so
    # |difference| <= 2 * 8 * 64 * u * max|gradient|. A gradient scaled wrongly (by the number of
    # processes, or by a rank's share of the labels) is off by 50% or more.
    g1, g2 = load_file(one / "grads.safetensors"), load_file(two / "grads.safetensors")
    assert set(g1) == set(g2) and g1
    largest = max(float(g.abs().max()) for g in g1.values())
    for name in g1:
        assert float((g1[name] - g2[name]).abs().max()) <= 2 * 8 * 64 * U * largest, name

    # The whole batch's loss at every step (summed over the ranks): it moves smoothly with the weights,
    # so its relative difference can grow by at most 64 * u per step taken.
    l1, l2 = json.loads((one / "losses.json").read_text()), json.loads((two / "losses.json").read_text())
    assert len(l1) == len(l2) == 2 * STEPS_PER_EPOCH[pools]
    for step, (a, b) in enumerate(zip(l1, l2), 1):
        assert abs(a - b) <= step * 64 * U * abs(a), step

    # Validation is sharded over the ranks and summed: the same numbers as one process (stored rounded
    # to 4 decimals, so a value on a rounding boundary may differ in the last one).
    _, _, s1 = load_training_state(one / "last.safetensors")
    _, _, s2 = load_training_state(two / "last.safetensors")
    h1, h2 = s1["progress"]["history"], s2["progress"]["history"]
    assert [h["step"] for h in h1] == [h["step"] for h in h2] == [STEPS_PER_EPOCH[pools], 2 * STEPS_PER_EPOCH[pools]]
    for a, b in zip(h1, h2):
        for key in (k for k in a if k.startswith("val_")):
            assert abs(a[key] - b[key]) <= 1e-4, key
    assert s1["progress"]["tokens"] == s2["progress"]["tokens"]  # every rank's tokens counted, once
    # Final weights are not compared tightly: AdamW turns the rounding noise of a coordinate whose true
    # gradient is zero (the attention key bias, see test_freeze) into steps of ~lr. That is what the loss
    # check above is for: it reads every weight, through both ranks' forward passes.
