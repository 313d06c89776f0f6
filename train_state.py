"""The state of a training run, as typed dataclasses: what train.py builds and the loop changes.

    TrainConfig   the flags, one field each (train.py's command line is made from these fields)
    Progress      where a run is: steps, the best validation, early stopping's count; saved in every
                  checkpoint, so that --resume continues from exactly there
    Run           everything one run holds: the model, optimizer, schedule, sampler, progress

They sit below the loop, so that the run folder's saving and restoring (reliability/run_folder.py)
can take a Run without importing train.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

import data
import freeze
from heads import MultiTaskModel
from scale.ddp import World
from speed.hardware import resolve_dtype


@dataclass
class TrainConfig:
    """train.py's flags: each field is one (--task-a, --head-lr, ...), and its default the flag's default
    unless the scenario's recipe (freeze.recipe) fills it. run.json records them all."""
    task_a: str = "reviews-topic"       # a built-in dataset, or your own .csv/.tsv/.jsonl file
    task_b: str = "reviews-sentiment"   # the same; "none": train Task A alone
    data_dir: str | None = None
    text_column: str = "text"           # your own files: the column holding the text ...
    label_column_a: str = "label"       # ... and each task's label column (one file may hold both)
    label_column_b: str = "label"
    labels_a: str | None = None         # a file with Task A's label set, one a line (default: the labels seen)
    labels_b: str | None = None
    test_a: str | None = None           # a test file for Task A (default: a stratified split of its file)
    test_b: str | None = None
    test_fraction: float = 0.2          # the split's test share; its rows are saved in --out as test-a.jsonl
    epochs: int = 3
    batch_size: int = 16
    max_steps: int = 0                  # > 0: stop after this many optimizer steps (a time budget)
    max_train: int = 0                  # > 0: use at most this many training examples per task
    per_class: int = 0                  # > 0: few-shot, this many seeded examples of each label per task
    max_tokens: int = 0                 # > 0: stop after this many real (unpadded) training tokens
    val_fraction: float = 0.1           # held out from train to pick the best epoch
    max_val: int = 0                    # > 0: validate on at most this many of them per task (cheaper --eval-every)
    lr: float = 3e-5                    # backbone
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1                 # fraction of all steps
    schedule: str = "linear"            # after warmup: linear (decay to 0 at the last step) | constant
    clip: float = 1.0
    attention_dropout: float = 0.1      # on the attention probabilities (the checkpoint's 0.1); 0: no masks to draw
    temperature: float = 2.0            # multi-task sampling, see data.MultiTaskSampler
    class_weights: bool = False         # balanced class weights in each task's loss
    normalize: bool = False             # heads read the L2-normalised embedding
    freeze: str = "none"                # none | all | backbone | head:a | top-K | gradual[:STEPS], see freeze.py
    lr_groups: str = "flat"             # flat | tiers | llrd:DECAY | ulmfit, see lr_groups.py
    no_cache: bool = False              # don't cache the frozen bottom's outputs (see speed/feature_cache.py)
    device: str = "cpu"
    dtype: str = "auto"                 # auto | fp32 | bf16 (autocast)
    seed: int = 0
    eval_every: int = 0                 # > 0: also validate every N steps (else at each epoch's end only)
    patience: int = 0                   # > 0: stop after N validations in a row without a new best
    log_every: int = 10
    save_every: int = 0                 # > 0: save last.safetensors every N steps, not at each epoch's end
    max_bad_steps: int = 5              # this many non-finite steps in a row stop the run
    plain: bool = False                 # exactly the code you read in train.py: no speed path (speed/training.py)
    refit: bool = False                 # after early stopping: fresh heads on train + validation (train.refit)
    recipe: str = "auto"                # auto: the command line fills unset flags from freeze.recipe; none: these
    out: str = "runs/default"           # not typed, and runs/default holds a run: the next free runs/default-N
    overwrite: bool = False             # a fresh run may replace the trained model in --out


def precision(cfg: TrainConfig) -> str:
    """What --dtype means on this machine: "bf16" (autocast) or "fp32". auto: bf16 where the CPU runs
    it natively, else fp32 (speed/hardware.py); so auto differs from one CPU to the next."""
    return "bf16" if resolve_dtype(cfg.dtype, cfg.device) == torch.bfloat16 else "fp32"


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
