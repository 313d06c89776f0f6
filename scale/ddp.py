"""Data-parallel training under torchrun: which process am I, and the few collectives train.py needs.

    torchrun --nproc_per_node=2 train.py ...          # 2 processes on this machine (gloo on CPU)
    torchrun --nproc_per_node=4 train.py --device cuda ...    # 4 GPUs (nccl), one per process

Started without torchrun, World() is rank 0 of 1 and every method is a no-op: train.py runs exactly
as a single process.

How one step is split (the global batch stays --batch-size, whatever the number of processes N):

    sampler (same seed on every rank) ──> pool p, rows r0 .. r15         every rank draws the same step
    rank 0: rows r0..r7    rank 1: rows r8..r15                          each takes its own slice
    loss_k = (sum of its examples' losses) / (labelled examples in all 16 / N)
    DDP backward: gradients averaged over ranks = gradient of the mean loss over all 16 examples

So the update is the one a single process computes on the whole batch, up to float rounding (the
sums are split differently), as long as dropout is off: each rank draws its own dropout masks.
"""
from __future__ import annotations

import gc
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device: str) -> "World":
        """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) -> the process group: gloo on CPU, nccl on
        CUDA with one GPU per process, picked by LOCAL_RANK."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            return cls()
        world = cls(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
        if device.startswith("cuda"):
            torch.cuda.set_device(world.local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        return world

    def quiet_unless_main(self) -> None:
        """Under torchrun only rank 0 prints (its lines hold the numbers of all ranks); the others'
        tracebacks still reach the terminal."""
        if self.main:
            return
        import traceback

        terminal = sys.stderr
        sys.stdout = sys.stderr = open(os.devnull, "w")
        sys.excepthook = lambda kind, value, tb: traceback.print_exception(kind, value, tb, file=terminal)

    @property
    def comm_device(self) -> torch.device:
        """Where collectives' tensors must live: nccl moves only GPU tensors, gloo CPU ones."""
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    def device(self, device: str) -> torch.device:
        return torch.device(f"cuda:{self.local_rank}") if device.startswith("cuda") and self.size > 1 else torch.device(device)

    def slice(self, rows: list[int]) -> list[int]:
        """This rank's contiguous share of one step's rows (shares differ by at most one row)."""
        base, extra = divmod(len(rows), self.size)
        start = self.rank * base + min(self.rank, extra)
        return rows[start:start + base + (self.rank < extra)]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (one all-reduce for several numbers)."""
        if self.size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of a CPU tensor of the same shape, in rank order (on every rank)."""
        if self.size == 1:
            return [tensor]
        here = tensor.to(self.comm_device)
        out = [torch.empty_like(here) for _ in range(self.size)]
        dist.all_gather(out, here)
        return [t.cpu() for t in out]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP around the model's trainable parameters (rebuilt by train.py when gradual unfreezing adds some).

        find_unused_parameters: a batch comes from one pool, and a head whose task has no label in it
        takes no part in the loss; DDP must be told, or it waits forever for that head's gradient."""
        if self.size == 1 or not any(p.requires_grad for p in model.parameters()):
            return model
        on_gpu = next(model.parameters()).is_cuda
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.local_rank] if on_gpu else None,
                                                         find_unused_parameters=True)

    def close(self) -> None:
        """Every rank tears down together, and the DDP wrappers go first: a wrapper left for the garbage
        collector (a Run in a reference cycle) was freed after the group, at interpreter exit, and its
        reducer's pending gloo work then aborted the process ("terminate called without an active
        exception", SIGABRT) in about 1 run in 6 of tests/ddp_worker.py under load."""
        if self.size > 1 and dist.is_initialized():
            gc.collect()
            dist.barrier()
            dist.destroy_process_group()


def loss_normalizers(world: World, pool, rows: list[int], class_weights: dict | None) -> dict[str, float] | None:
    """Each task's labelled examples in the whole step (class-weighted), divided by the number of
    processes, so that DDP's average of the ranks' gradients is the whole batch's mean (see above).
    None in a single process: each task's loss is then its plain mean."""
    if world.size == 1:
        return None
    from heads import IGNORE

    totals = {}
    for task, labels in pool.labels.items():
        seen = [labels[i] for i in rows if labels[i] != IGNORE]
        weights = class_weights[task][seen].tolist() if class_weights else [1.0] * len(seen)
        totals[task] = max(sum(weights), 1e-12) / world.size
    return totals
