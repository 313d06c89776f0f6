"""The state of a training run, as typed dataclasses: what train.py builds and the loop changes.

    Progress      where a run is: steps, the best validation, early stopping's count; saved in every
                  checkpoint, so that --resume continues from exactly there
    Run           everything one run holds: the model, optimizer, schedule, sampler, progress

The flags are TrainConfig, in train_config.py. These sit below the loop, so that the run folder's
saving and restoring (reliability/run_folder.py) can take a Run without importing train.py.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the annotations' types; nothing here calls them
    import data
    import freeze
    from heads import MultiTaskModel
    from scale.ddp import World
    from train_config import TrainConfig


@dataclass
class Progress:
    """Where a run is. Saved in every checkpoint, so that a resume continues from exactly here."""
    epoch: int = 0                  # epochs completed
    step: int = 0                   # optimizer steps taken (skipped ones included)
    tokens: int = 0                 # real training tokens seen
    best_loss: float = math.inf     # the best validation so far: the lowest mean loss,
    best_acc: float = -1.0          # ties broken by the mean accuracy
    best_metrics: dict = field(default_factory=dict)  # its record
    stale: int = 0                  # validations since the last new best (--patience)
    unfrozen: int = 0               # gradual unfreezing: groups thawed so far
    skipped: int = 0                # steps whose update was skipped (non-finite loss or gradient)
    bad_in_row: int = 0
    cache_s: float = 0.0            # seconds spent filling the feature cache
    history: list = field(default_factory=list)  # one record per validation (metrics.jsonl)
    losses: list = field(default_factory=list)   # one record per log line (losses.jsonl)
    done: bool = False

    def validated_this_step(self) -> bool:
        """The latest validation saw the current weights: an --eval-every one on an epoch's last step, or a
        resume of a run whose final step was validated."""
        return bool(self.history) and self.history[-1]["step"] == self.step

    def is_better(self, loss: float, acc: float) -> bool:
        """The best epoch has the lowest mean validation loss (as Hugging Face Trainer's default), ties
        broken by accuracy. Cross-entropy moves smoothly with the model; accuracy on a few hundred
        validation examples moves in steps of one example and mostly measures noise."""
        return loss < self.best_loss or (loss == self.best_loss and acc > self.best_acc)

    @classmethod
    def from_dict(cls, saved: dict) -> "Progress":
        """A checkpoint's progress; checkpoints before this class kept the best as [-loss, acc]."""
        if "best" in saved:
            saved = saved | {"best_loss": -saved["best"][0], "best_acc": saved["best"][1]}
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


@dataclass
class Run:
    """What one training run holds. Everything the loop changes lives here; run_folder.save_last() stores it."""
    cfg: TrainConfig
    model: MultiTaskModel
    forward: torch.nn.Module        # what a step calls: the model, or its DDP wrapper under torchrun
    tokenizer: object
    pools: list                     # the examples batches are drawn from (data.Pool)
    sampler: data.MultiTaskSampler
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    clip_grad_norm: object          # torch.nn.utils.clip_grad_norm_, or the speed path's (same contract)
    unfreezer: freeze.GradualUnfreezer | None
    class_weights: dict | None
    total_steps: int
    progress: Progress
    device: torch.device
    bf16: bool                      # bf16 autocast
    out: Path
    world: World                    # rank and process count under torchrun; 0 of 1 otherwise
    unsaved_best: dict | None = None  # with --save-every: the best weights, written with the next save_last()
    base: dict | None = None        # run.json's base_weights: then only what trains is saved (base_weights.py)


@dataclass
class Meter:
    """Logging's running counts: since this process started, and since the last log line."""
    started: float
    start_step: int
    val_rows: int = 0                           # examples one validation scores (its cost, before one ran)
    per_epoch: bool = False                     # heads only, nothing to thaw: log epochs, not steps
    tokens: int = 0                             # real tokens trained on by this process (all ranks)
    window: dict = field(default_factory=dict)  # per task: the losses since the last log line
    validation_s: float = 0.0                   # seconds spent validating (and saving the best)
    validations: int = 0

    def add(self, tokens: int, per_task: dict[str, float]) -> None:
        """One step's real tokens and each task's loss (NaN: the task had no label in the batch)."""
        self.tokens += tokens
        for task, value in per_task.items():
            if math.isfinite(value):
                self.window.setdefault(task, []).append(value)

    def log_line(self, run: Run, epoch: int) -> None:
        """Print the mean loss per task since the last log line, the learning rates of what trains
        (the backbone's top one, the heads' where they differ) and the time left; keep them for
        losses.jsonl."""
        step, elapsed = run.progress.step, time.time() - self.started
        means = {f"loss_{t}": round(sum(v) / len(v), 4) for t, v in self.window.items() if v}
        groups = run.optimizer.param_groups
        trains = [g for g in groups if any(p.requires_grad for p in g["params"])]
        backbone = [g["lr"] for g in trains if not g.get("name", "").startswith("head.")]
        heads = [g["lr"] for g in trains if g.get("name", "").startswith("head.")]
        lrs = {"lr": max(backbone or heads or [0.0])}
        if backbone and heads and max(heads) != lrs["lr"]:
            lrs["head_lr"] = max(heads)
        run.progress.losses.append({"step": step, **lrs, **means})
        self.window = {}
        shown = " ".join(f"{k}={v:.3f}" for k, v in means.items())
        shown += "".join(f" {k}={v:.2e}" for k, v in lrs.items())
        bound = "<= " if run.cfg.patience else ""  # early stopping may end the run sooner
        eta_min = self.eta(run, epoch) / 60
        print(f"epoch {epoch + 1} step {step}/{run.total_steps} {shown} "
              f"{self.tokens / max(elapsed, 1e-9):.0f} tok/s eta {bound}{eta_min:.1f} min",
              file=sys.stderr, flush=True)

    def quiet(self, epoch: int, epochs: int) -> bool:
        """Heads only (per_epoch): an epoch takes a moment and a run may have hundreds, so only
        the first three epochs and every tenth of the run are logged (the callers log the last)."""
        return self.per_epoch and epoch >= 3 and (epoch + 1) % max(1, epochs // 10) != 0

    def eta(self, run: Run, epoch: int) -> float:
        """Seconds left: the steps left at this run's time per step (validation excluded), plus the
        validations left at their measured time (before the first, estimated: a third of a training
        step's time per example, as a forward pass without the backward)."""
        steps = max(1, run.progress.step - self.start_step)
        step_s = max(0.0, time.time() - self.started - self.validation_s) / steps
        left = run.total_steps - run.progress.step
        epoch_steps = max(1, len(run.sampler))
        validations = math.ceil(run.total_steps / epoch_steps) - epoch  # this epoch's end included
        if run.cfg.eval_every:
            validations += left // run.cfg.eval_every
        if self.validations:
            per_validation = self.validation_s / self.validations
        else:
            per_validation = self.val_rows * step_s / (3 * run.cfg.batch_size)
        return left * step_s + max(0, validations) * per_validation
