"""Multi-task fine-tuning of MPNet: one shared backbone, a head per task, a plain loop.

    python train.py                                   # topic + sentiment on the embedded reviews set
    python train.py --task-a banking77 --task-b sst2 --epochs 1 --max-train 4000
    python train.py --task-b none                     # single-task: Task A only
    python train.py --out runs/x --resume             # continue runs/x (same flags) from its last checkpoint

Writes into --out: best.safetensors (the weights of the best validation epoch), last.safetensors
(the whole resumable state in one file: weights, optimizer, schedule, sampler, RNG; see
checkpoint.py), run.json (config, label names, backbone config), metrics.jsonl (one line per
evaluation), tokenizer.json. The last line printed is one JSON object with the final metrics.

Reliability: SIGINT/SIGTERM finish the current step, save, print the command that resumes and
exit with 130/143 (a second signal exits at once); --save-every N saves every N steps instead of
at each epoch's end; a step with a non-finite loss or gradient norm is skipped, and
--max-bad-steps in a row stop the run.

Budgets and early stopping: --max-steps, --max-tokens (real training tokens, the same on any
machine) and --patience N (stop after N validations in a row without a new best; validation runs
at each epoch's end and, with --eval-every M, every M steps too, so a short epoch validates more
often). The learning-rate schedule ends where the budget does.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

import data
import freeze
import grad_hooks
import lr_groups
import memory
from checkpoint import all_finite, load_training_state, read_progress, save_training_state, save_weights, write_atomic
from cli import device, fraction, int_at_least, nonnegative_float, positive_float
from ddp import World
from feature_cache import FeatureCache, frozen_prefix
from hardware import describe, resolve_dtype
from heads import MultiTaskModel, balanced_class_weights, multitask_loss
from mpnet import MPNet, MPNetConfig, SentenceEncoder


@dataclass
class TrainConfig:
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
    no_cache: bool = False              # don't cache the frozen bottom's outputs (see feature_cache.py)
    device: str = "cpu"
    dtype: str = "auto"                 # auto | fp32 | bf16 (autocast)
    seed: int = 0
    eval_every: int = 0                 # > 0: also validate every N steps (else at each epoch's end only)
    patience: int = 0                   # > 0: stop after N validations in a row without a new best
    log_every: int = 10
    save_every: int = 0                 # > 0: save last.safetensors every N steps, not at each epoch's end
    max_bad_steps: int = 5              # this many non-finite steps in a row stop the run
    out: str = "runs/default"


def peak_rss_mb() -> int | None:
    """Peak resident memory of this process in whole MB (Linux), for the experiment tables."""
    mb = memory.peak_rss_mb()
    return None if mb is None else round(mb)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def uses_bf16(cfg: TrainConfig) -> bool:
    """bf16 autocast: when asked for, or with dtype=auto where the hardware runs bf16 natively (hardware.py)."""
    return resolve_dtype(cfg.dtype, cfg.device) == torch.bfloat16


def precision(cfg: TrainConfig) -> str:
    """What --dtype means on this machine: "bf16" or "fp32" (dtype auto differs from one CPU to the next)."""
    return "bf16" if uses_bf16(cfg) else "fp32"


def split_off(ds: data.LabelledTexts, fraction: float, seed: int) -> tuple[data.LabelledTexts, data.LabelledTexts]:
    """A seeded (train, validation) split. The permutation depends only on seed and size, so two
    tasks read from one file (reviews-topic, reviews-sentiment) split the same way."""
    order = list(range(len(ds)))
    random.Random(seed).shuffle(order)
    n_val = int(len(ds) * fraction)

    def pick(rows: list[int], split: str) -> data.LabelledTexts:
        rows = sorted(rows)
        return data.LabelledTexts(ds.name, split, [ds.texts[i] for i in rows], [ds.labels[i] for i in rows],
                                  ds.label_names, ds.source + f"#{split}")
    return pick(order[n_val:], "train"), pick(order[:n_val], "val")


def per_class_sample(ds: data.LabelledTexts, k: int, seed: int) -> data.LabelledTexts:
    """A few-shot training set: k seeded examples of each label (all of a label's examples where it
    has fewer). The seed picks the examples, so seeds differ in data as well as initialisation."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(ds.labels):
        by_label.setdefault(label, []).append(i)
    rows = sorted(i for label in sorted(by_label) for i in rng.sample(by_label[label], min(k, len(by_label[label]))))
    return data.LabelledTexts(ds.name, ds.split, [ds.texts[i] for i in rows], [ds.labels[i] for i in rows],
                              ds.label_names, ds.source + f"#{k}-per-class")


def task_datasets(cfg: TrainConfig) -> dict[str, str]:
    """{task: dataset name or file}; tasks are 'a' and 'b' (no 'b' with --task-b none)."""
    return {"a": cfg.task_a} | ({} if cfg.task_b == "none" else {"b": cfg.task_b})


def load_tasks(cfg: TrainConfig) -> tuple[dict, dict, dict]:
    """-> (train, validation, evaluation) datasets, each {task: LabelledTexts}."""
    train, val, final, splits = {}, {}, {}, {}
    for task, name in task_datasets(cfg).items():
        if data.is_user_file(name):
            full, final[task] = load_user_task(cfg, task, name, splits)
        else:
            full = data.load(name, "train", cfg.data_dir)
            final[task] = data.load(name, data.EVAL_SPLIT[name], cfg.data_dir)
        if cfg.max_train and len(full) > cfg.max_train:
            full, _ = split_off(full, 1 - cfg.max_train / len(full), cfg.seed + 1)
        if cfg.per_class:
            full = per_class_sample(full, cfg.per_class, cfg.seed + 2)
        train[task], val[task] = split_off(full, cfg.val_fraction, cfg.seed)
        if cfg.max_val and len(val[task]) > cfg.max_val:
            _, val[task] = split_off(val[task], cfg.max_val / len(val[task]), cfg.seed)
    val = {task: ds for task, ds in val.items() if len(ds)}  # --val-fraction 0: no validation, the last epoch is kept
    return train, val, final


def load_user_task(cfg: TrainConfig, task: str, path: str, splits: dict) -> tuple[data.LabelledTexts, data.LabelledTexts]:
    """Your own file for one task -> (training examples, test examples).

    The test examples come from --test-a/--test-b, else from a seeded stratified split of the file
    (--test-fraction). Two tasks read from one file share one split, so each row is on the same side
    for both, made on Task A's labels. The label set is --labels-a/-b, else the sorted labels of the
    training rows."""
    column, labels_file, test_file = ((cfg.label_column_a, cfg.labels_a, cfg.test_a) if task == "a"
                                      else (cfg.label_column_b, cfg.labels_b, cfg.test_b))
    rows = data.read_user_rows(path, cfg.text_column, column)
    if test_file:
        train_rows, test_rows, test_path = rows, data.read_user_rows(test_file, cfg.text_column, column), test_file
    else:
        if path not in splits:
            splits[path] = data.stratified_split(path, rows, cfg.test_fraction, cfg.seed)
        train_idx, test_idx = splits[path]
        train_rows, test_rows, test_path = [rows[i] for i in train_idx], [rows[i] for i in test_idx], path
    names = data.read_label_names(labels_file) if labels_file else sorted({label for _, _, label in train_rows})
    if len(names) < 2:
        raise ValueError(f"{path}: the training rows have only the label {names[0]!r}; a classifier needs 2 or more")
    return data.user_dataset(path, train_rows, names, "train"), data.user_dataset(test_path, test_rows, names, "test")


TEST_ROWS = "test-{task}.jsonl"  # in the run folder; run.json names it for each task on your own data


def save_test_rows(out: Path, final_sets: dict, cfg: TrainConfig) -> None:
    """Your own data's test rows, saved in the run folder so that eval.py later scores the same rows."""
    for task, name in task_datasets(cfg).items():
        if data.is_user_file(name):
            ds = final_sets[task]
            lines = "".join(json.dumps({"text": t, "label": ds.label_names[y]}) + "\n" for t, y in zip(ds.texts, ds.labels))
            write_atomic(lambda p: p.write_text(lines, encoding="utf-8"), out / TEST_ROWS.format(task=task))


def accuracies(model, tokenizer, tasks: dict[str, data.LabelledTexts], autocast: bool,
               with_loss: bool = False, world: World = World(), caches: dict | None = None) -> dict[str, float]:
    """acc_<task> for each task (and loss_<task>, the mean cross-entropy, with_loss).

    Under torchrun each rank scores every N-th example and the counts are summed over ranks: N
    processes validate N times faster, and every rank gets the same numbers, so all of them take the
    same decisions (best checkpoint, early stopping) without sending any.
    caches: {task: FeatureCache of its texts' embeddings} when the whole backbone is frozen: only the
    heads run (a validation costs milliseconds, not a pass of the backbone)."""
    metrics = {}
    for task, ds in tasks.items():
        rows = list(range(world.rank, len(ds), world.size))
        texts, labels = [ds.texts[i] for i in rows], torch.tensor([ds.labels[i] for i in rows])
        if not texts:
            probs = torch.empty(0, 1)
        elif caches:
            model.eval()
            device = next(model.parameters()).device
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                probs = caches[task].logits(model, rows)[task].float().softmax(-1)
        else:
            probs = model.predict_proba(tokenizer, texts, autocast=autocast)[task]
        correct = float((probs.argmax(-1) == labels).sum()) if texts else 0.0
        nll = float(-probs[torch.arange(len(labels)), labels].clamp(min=1e-12).log().double().sum()) if texts else 0.0
        correct, nll, n = world.sum([correct, nll, len(texts)])
        metrics[f"acc_{task}"] = correct / n
        if with_loss:
            metrics[f"loss_{task}"] = nll / n
    return metrics


def make_optimizer(groups: list[dict]) -> torch.optim.AdamW:
    """AdamW with its fused kernel: one pass over each parameter's weight, gradient and two moments,
    instead of a dozen elementwise ops per tensor. On 2 CPU cores the plain loop over BERT-base's
    parameters costs ~185 ms a step, a quarter of a bf16 step; fused, ~40 ms (README, "Training speed")."""
    return torch.optim.AdamW(groups, fused=True)


def planned_steps(cfg: TrainConfig, tokenizer, pools: list, sampler: data.MultiTaskSampler) -> int:
    """Optimizer steps the learning-rate schedule spans: the epochs, cut by --max-steps, and by
    --max-tokens converted to steps with the expected real tokens of a batch (the mean length of
    each pool, weighted by how often the sampler draws it)."""
    steps = cfg.epochs * len(sampler)
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    if cfg.max_tokens:
        mean_len = [sum(map(len, tokenizer.encode(pool.texts))) / len(pool) for pool in pools]
        per_batch = cfg.batch_size * sum(p * n for p, n in zip(sampler.probs, mean_len))
        steps = min(steps, math.ceil(cfg.max_tokens / per_batch))
    return steps


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str = "linear"):
    """Linear warmup from 0, then linear decay to 0 at the last step, or constant.

    Constant suits heads on a frozen backbone: a linear head is a convex problem that early stopping
    ends (--patience), so there is no planned last step to decay towards; fine-tuning the whole network
    is better served by decay (BERT's recipe)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


# ----------------------------------------------------------------------------- stopping cleanly
class Interrupted(Exception):
    """Raised after a SIGINT/SIGTERM once the current step is done and the checkpoint is saved."""

    def __init__(self, signum: int, step: int, path: Path):
        super().__init__(f"{signal.Signals(signum).name} at step {step}; saved {path}")
        self.signum, self.step, self.path = signum, step, path


class Diverged(Exception):
    """Too many non-finite steps in a row, or non-finite weights: the run cannot usefully go on."""


class SignalGuard:
    """While training: the first SIGINT or SIGTERM asks the loop to stop after the current step
    (a half-done optimizer step is never saved); a second one exits at once, without saving.
    A scheduler or `docker stop` sends SIGTERM, then SIGKILL after a grace period: the grace
    period must cover one step plus one checkpoint write."""

    def __enter__(self) -> "SignalGuard":
        self.signum, self.previous = None, {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        except ValueError:  # not the main thread: signals stay with whoever owns them
            pass
        return self

    def handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            print(f"second {name}: exiting now, without saving", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        print(f"{name}: finishing this step, then saving a checkpoint (send it again to exit at once)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- the loop
@dataclass
class Run:
    """What one training run holds. Everything the loop changes lives here; save_last() stores it."""
    cfg: TrainConfig
    model: MultiTaskModel
    tokenizer: object
    pools: list
    sampler: data.MultiTaskSampler
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    unfreezer: freeze.GradualUnfreezer | None
    caches: list | None
    class_weights: dict | None
    total_steps: int
    progress: dict
    device: torch.device
    use_bf16: bool
    out: Path
    val_caches: dict | None             # with the whole backbone frozen: the validation texts' embeddings
    world: World                        # rank and process count under torchrun (ddp.py); 0 of 1 otherwise
    forward: torch.nn.Module            # the model, or its DDP wrapper: what training steps call
    grad_norm: grad_hooks.GradNorm | None  # the gradient norm summed during backward (grad_hooks.py); not under DDP


def setup(cfg: TrainConfig, model: MultiTaskModel, tokenizer, train_sets: dict, resume: bool,
          world: World = World(), val_sets: dict | None = None) -> Run:
    """Sampler, freezing, optimizer groups and schedule; on resume, all of them as last saved."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = world.device(cfg.device)
    model.to(device)
    pools = data.make_pools(train_sets)
    sampler = data.MultiTaskSampler([len(p) for p in pools], cfg.batch_size, cfg.temperature, cfg.seed)
    total_steps = planned_steps(cfg, tokenizer, pools, sampler)
    unfreezer = freeze.apply(model, cfg.freeze)
    # Single process: the word table's gradient in a kept buffer, and the clipping norm summed during
    # backward (grad_hooks.py). Both need the final set of trainable parameters, so after freezing.
    grad_norm = grad_hooks.install(model, model.backbone.embeddings) if world.size == 1 else None
    groups = lr_groups.build(model, cfg.lr_groups, base_lr=cfg.lr, head_lr=cfg.head_lr, weight_decay=cfg.weight_decay)
    optimizer = make_optimizer(groups)
    print(freeze.summary(model) + "\n" + lr_groups.table(groups), file=sys.stderr)  # before warmup scales the lrs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, int(cfg.warmup * total_steps),
                                                                            cfg.schedule))
    class_weights = ({t: balanced_class_weights(ds.labels, len(ds.label_names)) for t, ds in train_sets.items()}
                     if cfg.class_weights else None)
    progress = {"epoch": 0, "step": 0, "tokens": 0, "best": [-1e30, -1.0], "best_metrics": {}, "stale": 0,
                "unfrozen": 0, "skipped": 0, "bad_in_row": 0, "history": [], "losses": [], "done": False}
    if resume:
        weights, optimizer_state, state = load_training_state(out / "last.safetensors")
        model.load_state_dict({k: v.to(device) for k, v in weights.items()})
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        rngs = state["torch_rng"]  # one per rank; a resume with more processes re-uses rank 0's for the new ones
        torch.set_rng_state(rngs[world.rank] if world.rank < len(rngs) else rngs[0])
        progress = {"tokens": 0, "stale": 0} | state["progress"]  # (checkpoints from before --max-tokens/--patience)
        if unfreezer:
            unfreezer.catch_up(progress["unfrozen"])
        print(f"resumed {out} at epoch {progress['epoch'] + 1}, step {progress['step']}", file=sys.stderr)
    use_bf16 = uses_bf16(cfg)
    caches = None
    trainable = any(p.requires_grad for p in model.parameters())
    # Under torchrun every rank caches every pool (its slices of later steps may hit any row).
    # Cache only when a frozen encoder layer is skipped: with just the embeddings frozen (top-12), the
    # cache would hold a (tokens, 768) copy of every training set to save a table lookup.
    if trainable and not cfg.no_cache and unfreezer is None and frozen_prefix(model) > 1:
        caches = [FeatureCache(model, tokenizer, pool.texts, autocast=use_bf16) for pool in pools]
    val_caches = None
    if caches and caches[0].pooled and val_sets:
        val_caches = {t: FeatureCache(model, tokenizer, ds.texts, autocast=use_bf16) for t, ds in val_sets.items()}
    if caches:
        progress["cache_s"] = round(sum(c.seconds for c in caches + list((val_caches or {}).values())), 1)
        print(f"feature cache: {sum(c.nbytes() for c in caches) / 1e6:.0f} MB of frozen-bottom outputs "
              f"in {progress['cache_s']} s", file=sys.stderr)
    return Run(cfg, model, tokenizer, pools, sampler, optimizer, scheduler, unfreezer, caches, class_weights,
               total_steps, progress, device, use_bf16, out, val_caches, world, world.wrap(model), grad_norm)


def unfreeze_next(run: Run) -> str | None:
    """Gradual unfreezing's next group; under DDP, a new wrapper, since DDP syncs only the parameters
    that were trainable when it was built."""
    name = run.unfreezer.unfreeze_next()
    if name and run.world.size > 1:
        run.forward = run.world.wrap(run.model)
    return name


def loss_normalizers(run: Run, pool_idx: int, rows: list[int]) -> dict[str, float] | None:
    """DDP: each task's labelled examples in the whole step (class-weighted), divided by the number of
    processes, so that DDP's average of the ranks' gradients is the whole batch's mean (ddp.py)."""
    if run.world.size == 1:
        return None
    totals = {}
    for task, labels in run.pools[pool_idx].labels.items():
        seen = [labels[i] for i in rows if labels[i] != data.IGNORE]
        weights = run.class_weights[task][seen].tolist() if run.class_weights else [1.0] * len(seen)
        totals[task] = max(sum(weights), 1e-12) / run.world.size
    return totals


def clip_in_optimizer_step(run: Run) -> torch.Tensor:
    """Clip the gradients to total norm cfg.clip in the coming optimizer step; -> their total norm.

    clip_grad_norm_ would scale every gradient in place first: one more read and write of 109M
    numbers a step (about 30 ms on a 2-core AVX2-only EPYC). The fused AdamW kernel can divide each
    gradient by a `grad_scale` as it reads it (the hook torch.amp.GradScaler unscales through), so
    the clipping rides along in the pass AdamW makes anyway. The result is clip_grad_norm_'s to
    rounding: g / ((norm + 1e-6) / clip) here, g * (clip / (norm + 1e-6)) there. In a single
    process the norm itself was summed during backward (grad_hooks.GradNorm).
    """
    if run.grad_norm is not None:
        norm = run.grad_norm.total()
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in run.model.parameters() if p.grad is not None])
    run.optimizer.grad_scale = ((norm + 1e-6) / run.cfg.clip).clamp(min=1.0)
    return norm


def train_step(run: Run, pool_idx: int, rows: list[int]) -> tuple[int, dict[str, float]]:
    """One optimizer step on one batch -> (real tokens, per-task losses).

    A non-finite loss or gradient norm skips the update (the batch is spent and the schedule
    advances, as a skipped mixed-precision step does); max_bad_steps such steps in a row raise Diverged.
    """
    here = run.world.slice(rows)  # this process's share of the step (all of it without torchrun)
    batch = data.collate(run.tokenizer, run.pools[pool_idx], here)
    ids, mask = batch["input_ids"].to(run.device), batch["attention_mask"].to(run.device)
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.use_bf16):
        logits = run.caches[pool_idx].logits(run.forward, here) if run.caches else run.forward(ids, mask)
    loss, per_task = multitask_loss(logits, batch["labels"], class_weights=run.class_weights,
                                    normalizers=loss_normalizers(run, pool_idx, rows))
    run.optimizer.zero_grad(set_to_none=True)
    # Sums over ranks (none without torchrun), so that every rank takes the same decision: the step's
    # tokens, and whether any rank's loss is non-finite.
    tokens, bad = run.world.sum([float(mask.sum()), float(not torch.isfinite(loss))])
    finite = bad == 0
    if finite:
        loss.backward()
        finite = bool(torch.isfinite(clip_in_optimizer_step(run)))
    progress = run.progress
    if finite:
        run.optimizer.step()
        progress["bad_in_row"] = 0
    else:
        run.optimizer.zero_grad(set_to_none=True)
        progress["skipped"] += 1
        progress["bad_in_row"] += 1
        print(f"step {progress['step'] + 1}: non-finite loss or gradient norm, update skipped "
              f"({progress['bad_in_row']} in a row, {progress['skipped']} in all)", file=sys.stderr, flush=True)
    run.scheduler.step()
    progress["step"] += 1
    if progress["bad_in_row"] >= run.cfg.max_bad_steps:
        last = read_progress(run.out / "last.safetensors")
        lrs = ", ".join(f"{lr:.2e}" for lr in sorted(set(run.scheduler.get_last_lr())))
        raise Diverged(f"stopped at step {progress['step']}: {progress['bad_in_row']} steps in a row had a non-finite "
                       f"loss or gradient norm (learning rates now {lrs}). Last good checkpoint: "
                       + (f"{run.out / 'last.safetensors'} (step {last['step']})" if last else "none was saved")
                       + ". Lower --lr or check the data.")
    if run.unfreezer and run.unfreezer.every_steps and progress["step"] % run.unfreezer.every_steps == 0:
        unfreeze_next(run)
    return int(tokens), per_task


def ensure_finite(run: Run) -> None:
    """Non-finite weights are never saved: stop instead, pointing at the last good checkpoint."""
    if not all_finite(run.model.state_dict()):
        raise Diverged(f"the weights became non-finite by step {run.progress['step']}; not saved. "
                       f"Last good checkpoint: {run.out / 'last.safetensors'}. Lower --lr.")


def save_last(run: Run) -> None:
    """The resumable state as one atomic file, then metrics.jsonl and losses.jsonl rewritten from the
    saved history, so they always agree with it."""
    ensure_finite(run)
    run.progress["unfrozen"] = run.unfreezer.unfrozen if run.unfreezer else 0
    rng_states = run.world.gather(torch.get_rng_state())  # every rank takes part; rank 0 alone writes
    if not run.world.main:
        return
    save_training_state(run.out / "last.safetensors", run.model, run.optimizer, run.scheduler, run.sampler,
                        run.progress, rng_states)
    for name, records in (("metrics.jsonl", run.progress["history"]), ("losses.jsonl", run.progress["losses"])):
        lines = "".join(json.dumps(record) + "\n" for record in records)
        write_atomic(lambda p: p.write_text(lines), run.out / name)


def evaluate_and_save(run: Run, epoch: int, val_sets: dict, train_s: float, started: float,
                      end_of_epoch: bool = True) -> None:
    """Validation, then the best and last checkpoints: at each epoch's end (which also unfreezes
    gradual unfreezing's next group) and every --eval-every steps."""
    progress = run.progress
    if end_of_epoch:
        progress["epoch"] = epoch + 1
        if run.unfreezer and not run.unfreezer.every_steps and (name := unfreeze_next(run)):
            print(f"gradual unfreezing: {name} now trains", file=sys.stderr)
        if progress["history"] and progress["history"][-1]["step"] == progress["step"]:
            return save_at_epoch_end(run)  # this step was just validated (--eval-every, early stop)
    metrics = (accuracies(run.model, run.tokenizer, val_sets, run.use_bf16, True, run.world, run.val_caches)
               if val_sets else {})
    # The best epoch has the lowest mean validation loss (as Hugging Face Trainer's default), ties
    # broken by accuracy. Cross-entropy moves smoothly with the model; accuracy on a few hundred
    # validation examples moves in steps of one example (0.5 points for 200) and mostly measures noise.
    # Without validation data, the last epoch (see train()).
    score = [-float(np.mean([v for k, v in metrics.items() if k.startswith("loss_")])),
             float(np.mean([v for k, v in metrics.items() if k.startswith("acc_")]))] if metrics else None
    record = {"epoch": epoch + 1, "step": progress["step"], "tokens": progress["tokens"], "elapsed_s": round(time.time() - started, 1),
              "train_s": round(train_s, 1), "cache_s": progress.get("cache_s", 0), "skipped": progress["skipped"],
              **{f"val_{k}": round(v, 4) for k, v in metrics.items()}}
    progress["history"].append(record)
    when = f"epoch {epoch + 1} done" if end_of_epoch else f"validation at step {progress['step']}"
    print(f"{when}: {record}", file=sys.stderr, flush=True)
    if metrics and score > progress["best"]:  # lists compare element by element: -loss, then accuracy
        progress["best"], progress["stale"] = score, 0
        save_best(run, record)
    elif metrics:
        progress["stale"] += 1
    if end_of_epoch:
        save_at_epoch_end(run)
    else:
        save_last(run)


def save_at_epoch_end(run: Run) -> None:
    """last.safetensors at each epoch's end; with --save-every N, only every N steps (in the loop).
    A few-shot epoch is a step or two, and a save is a 1.3 GB write. The run's end saves once,
    after the loop, whichever way it ends."""
    if not run.cfg.save_every and not finished(run):
        save_last(run)


def finished(run: Run) -> bool:
    """The step budget, the token budget, or early stopping (--patience validations without a new best)."""
    cfg, progress = run.cfg, run.progress
    return (progress["step"] >= run.total_steps or 0 < cfg.max_tokens <= progress["tokens"]
            or 0 < cfg.patience <= progress["stale"])


def save_best(run: Run, record: dict) -> None:
    """best.safetensors: the weights alone, for eval.py and predict.py."""
    ensure_finite(run)
    run.progress["best_metrics"] = record
    if run.world.main:
        save_weights(run.out / "best.safetensors", run.model.state_dict(), {"epoch": str(record["epoch"])})


def log_line(run: Run, epoch: int, window: dict[str, list[float]], tokens: int, started: float, start_step: int) -> None:
    """Print the mean loss per task since the last log line, and keep it for losses.jsonl (plots.py curves)."""
    step, elapsed = run.progress["step"], time.time() - started
    eta = elapsed / max(1, step - start_step) * (run.total_steps - step)
    means = {f"loss_{t}": round(sum(v) / len(v), 4) for t, v in window.items() if v}
    lr = run.scheduler.get_last_lr()[0]
    run.progress["losses"].append({"step": step, "lr": lr, **means})
    print(f"epoch {epoch + 1} step {step}/{run.total_steps} {' '.join(f'{k}={v:.3f}' for k, v in means.items())} "
          f"lr={lr:.2e} {tokens / max(elapsed, 1e-9):.0f} tok/s eta {eta / 60:.1f} min", file=sys.stderr, flush=True)


def train(cfg: TrainConfig, model: MultiTaskModel, tokenizer, train_sets: dict, val_sets: dict,
          resume: bool = False, world: World = World()) -> dict:
    """The loop. Returns the best validation metrics; writes checkpoints into cfg.out (rank 0)."""
    run = setup(cfg, model, tokenizer, train_sets, resume, world, val_sets)
    progress = run.progress
    trainable = any(p.requires_grad for p in model.parameters())
    if not trainable:
        print("nothing is trainable (freeze=all): one evaluation, no training", file=sys.stderr)
    started, tokens, start_step, window = time.time(), 0, progress["step"], {}
    with SignalGuard() as signals:
        for epoch in range(progress["epoch"], cfg.epochs if trainable else progress["epoch"] + 1):
            history = progress["history"]
            if finished(run) and history and history[-1]["step"] == progress["step"]:
                break  # resumed after the last step had already been evaluated
            freeze.train_mode(model)
            epoch_start = time.time()
            for pool_idx, rows in (run.sampler if trainable and not finished(run) else []):
                n, per_task = train_step(run, pool_idx, rows)
                tokens += n
                progress["tokens"] += n
                for task, value in per_task.items():
                    if math.isfinite(value):
                        window.setdefault(task, []).append(value)
                step = progress["step"]
                if step % cfg.log_every == 0 or step == run.total_steps:
                    log_line(run, epoch, window, tokens, started, start_step)
                    window = {}
                # torchrun sends the signal to every rank, not at the same instant: all stop if any got it
                stop = run.world.sum([float(signals.signum is not None)])[0] > 0
                if stop or (cfg.save_every and step % cfg.save_every == 0):
                    save_last(run)
                if stop:
                    raise Interrupted(signals.signum or signal.SIGTERM, step, run.out / "last.safetensors")
                if cfg.eval_every and step % cfg.eval_every == 0 and val_sets:
                    evaluate_and_save(run, epoch, val_sets, time.time() - epoch_start, started, end_of_epoch=False)
                    freeze.train_mode(model)
                if finished(run):
                    break
            evaluate_and_save(run, epoch, val_sets, time.time() - epoch_start, started)
            if finished(run):
                break
        if not val_sets:  # no validation data: the model at the end is the one to keep, written once
            save_best(run, progress["history"][-1])
        progress["done"] = True
        save_last(run)
    return progress["best_metrics"]


# ----------------------------------------------------------------------------- set-up and command line
def build(cfg: TrainConfig, train_sets: dict):
    """The pretrained encoder with one fresh head per task."""
    encoder = SentenceEncoder.from_pretrained()
    set_attention_dropout(encoder.model, cfg)
    num_labels = {task: len(ds.label_names) for task, ds in train_sets.items()}
    model = MultiTaskModel(encoder.model, num_labels, normalize=cfg.normalize)
    return model, encoder.tokenizer


def backbone_config(checkpoint: MPNetConfig, cfg: TrainConfig) -> MPNetConfig:
    """The checkpoint's config with what the flags change in it, which run.json records: the dropout
    on the attention probabilities. That is a fresh (B, heads, L, L) mask in every layer at every
    step, which PyTorch's CPU generator drew one number at a time on the AMD EPYC measured here;
    --attention-dropout 0 skips those masks: a few percent faster, for one regulariser less (README:
    "Training speed" for the speed, "Few labels, several seeds" for the accuracy)."""
    return replace(checkpoint, attention_probs_dropout_prob=cfg.attention_dropout)


def set_attention_dropout(backbone: MPNet, cfg: TrainConfig) -> None:
    """The model side of backbone_config: every layer's attention takes the flag's dropout."""
    backbone.cfg = backbone_config(backbone.cfg, cfg)
    for layer in backbone.layers:
        layer.attn.dropout_p = backbone.cfg.attention_probs_dropout_prob


def run_info(cfg: TrainConfig, backbone: MPNetConfig, train_sets: dict) -> dict:
    tasks = {t: {"dataset": ds.name, "label_names": ds.label_names} for t, ds in train_sets.items()}
    for t, name in task_datasets(cfg).items():
        if data.is_user_file(name):
            tasks[t]["test_rows"] = TEST_ROWS.format(task=t)  # see save_test_rows
    return {"config": asdict(cfg), "backbone": asdict(backbone), "tasks": tasks, "precision": precision(cfg)}


def write_run_info(cfg: TrainConfig, model: MultiTaskModel, train_sets: dict) -> None:
    from weights.fetch import weights_dir

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    info = run_info(cfg, model.backbone.cfg, train_sets)
    write_atomic(lambda p: p.write_text(json.dumps(info, indent=2)), out / "run.json")
    shutil.copyfile(weights_dir() / "tokenizer.json", out / "tokenizer.json")


# Flags that may change between a run and its resume: they do not change what is computed.
MAY_DIFFER_ON_RESUME = {"out", "data_dir", "device", "log_every", "save_every", "max_bad_steps"}
FLAG_TYPES = {"epochs": int_at_least(1), "batch_size": int_at_least(1), "max_steps": int_at_least(0),
              "max_train": int_at_least(0), "per_class": int_at_least(0), "max_tokens": int_at_least(0),
              "max_val": int_at_least(0), "eval_every": int_at_least(0),
              "patience": int_at_least(0), "val_fraction": fraction, "test_fraction": fraction, "lr": positive_float,
              "head_lr": positive_float, "weight_decay": nonnegative_float, "warmup": fraction,
              "clip": positive_float, "attention_dropout": fraction, "temperature": positive_float, "seed": int_at_least(0),
              "log_every": int_at_least(1), "save_every": int_at_least(0), "max_bad_steps": int_at_least(1),
              "device": device}
CHOICES = {"dtype": ["auto", "fp32", "bf16"], "schedule": ["linear", "constant"]}


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    """Flags from TrainConfig's fields; each value is checked here, before any data or weights load."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", default=f.default)
        else:
            kind = FLAG_TYPES.get(f.name, str)
            parser.add_argument(flag, type=kind, default=f.default, choices=CHOICES.get(f.name),
                                help=f"default: {f.default}")
    parser.add_argument("--resume", action="store_true", help="continue --out's last checkpoint (same flags)")
    args = vars(parser.parse_args(argv))
    resume = args.pop("resume")
    cfg = TrainConfig(**args)
    try:
        check_specs(cfg)
    except ValueError as e:
        parser.error(str(e))
    return cfg, resume


def check_specs(cfg: TrainConfig) -> None:
    """The flags whose values are small languages: dataset names, --freeze, --lr-groups."""
    for flag, name in (("--task-a", cfg.task_a), ("--task-b", cfg.task_b)):
        if data.is_user_file(name):
            if not Path(name).is_file():
                raise ValueError(f"argument {flag}: no file {name}")
        elif name not in data.DATASETS and not (flag == "--task-b" and name == "none"):
            raise ValueError(f"argument {flag}: unknown dataset {name!r}; known: {', '.join(data.DATASETS)}"
                             + (", none" if flag == "--task-b" else "") + f", or a path to your own "
                             f"{'/'.join(data.USER_FORMATS)} file")
    for flag, path in (("--labels-a", cfg.labels_a), ("--labels-b", cfg.labels_b), ("--test-a", cfg.test_a),
                       ("--test-b", cfg.test_b)):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"argument {flag}: no file {path}")
    if (cfg.test_a and not data.is_user_file(cfg.task_a)) or (cfg.test_b and not data.is_user_file(cfg.task_b)):
        raise ValueError("--test-a/--test-b go with your own data files; built-in datasets bring their test split")
    freeze.check_spec(cfg.freeze, MPNetConfig().num_hidden_layers, list(task_datasets(cfg)))
    lr_groups.check_spec(cfg.lr_groups)


def resume_command(cfg: TrainConfig) -> str:
    """The command line that continues this run: every flag that differs from its default, then --resume."""
    default = TrainConfig()
    words = ["python", "train.py"]
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name != "out" and value != getattr(default, f.name):
            words += [f"--{f.name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return shlex.join(words + ["--out", cfg.out, "--resume"])


def check_out_folder(cfg: TrainConfig, resume: bool) -> dict | None:
    """Before anything loads: --resume needs a checkpoint and run.json with the same flags; a fresh
    run must not silently replace an unfinished one. Returns run.json's content on resume."""
    out = Path(cfg.out)
    last, info_path = out / "last.safetensors", out / "run.json"
    if not resume:
        progress = read_progress(last) if last.is_file() else None
        if progress and not progress.get("done"):
            raise ValueError(f"{out} holds an unfinished run (stopped at step {progress['step']}); continue it with "
                             f"--resume, or delete {out} or pick another --out to start over")
        return None
    if not last.is_file() or not info_path.is_file():
        missing = " and ".join(str(p.name) for p in (last, info_path) if not p.is_file())
        raise ValueError(f"--resume: {out} has no {missing}, so there is nothing to resume; "
                         f"run without --resume to start a fresh run there")
    info = json.loads(info_path.read_text())
    # A run keeps the precision it started in (run.json's "precision"; older runs did not record it).
    # --dtype auto gives bf16 on one CPU and fp32 on another, so a run started with auto may resume
    # with the --dtype that names its own precision, and must where auto would now give the other.
    started_in = info.get("precision")
    if started_in and precision(cfg) != started_in:
        raise ValueError(f"--resume: {out} trains in {started_in} (run.json), and --dtype {cfg.dtype} gives "
                         f"{precision(cfg)} on this CPU ({describe()}). A run keeps one precision: resume "
                         f"with --dtype {started_in}")
    # A flag missing from run.json did not exist when the run started: it ran with the default.
    saved, now = asdict(TrainConfig()) | info["config"], asdict(cfg)
    diffs = [f"--{k.replace('_', '-')} {now[k]!r} (run.json: {saved.get(k)!r})" for k in now
             if k not in MAY_DIFFER_ON_RESUME and saved.get(k) != now[k] and not (k == "dtype" and started_in)]
    if diffs:
        raise ValueError(f"--resume: the flags differ from {info_path}: {'; '.join(diffs)}. Resume with the run's "
                         f"own flags, or start a fresh run with another --out")
    progress = read_progress(last)
    if progress is None:
        raise ValueError(f"--resume: {last} is not a train.py checkpoint; nothing was loaded")
    if progress.get("done"):
        raise ValueError(f"--resume: {out} finished at step {progress['step']}; there is nothing left to train")
    return info


def clear_finished_run(out: Path) -> None:
    """A fresh run into a folder that holds a finished one: remove its outputs first, so that no
    file of the old run can be mistaken for the new one's (check_out_folder refuses unfinished ones)."""
    for name in ("best.safetensors", "last.safetensors", "metrics.jsonl", "losses.jsonl", "best.safetensors.tmp",
                 "last.safetensors.tmp", "metrics.jsonl.tmp", "losses.jsonl.tmp", "state.pt"):
        (out / name).unlink(missing_ok=True)


def check_resume_matches(info: dict, cfg: TrainConfig, backbone: MPNetConfig, train_sets: dict) -> None:
    """What sets the parameter shapes (tasks, label names, backbone config) must be what the run saved."""
    now = run_info(cfg, backbone, train_sets)
    diffs = [f"{key}: {now[key]} (run.json: {info.get(key)})" for key in ("tasks", "backbone") if info.get(key) != now[key]]
    if diffs:
        raise ValueError(f"--resume: the data or model differ from {cfg.out}/run.json: {'; '.join(diffs)}")


def quiet_unless_main(world: World) -> None:
    """Under torchrun only rank 0 prints (its lines hold the numbers of all ranks); the others'
    tracebacks still reach the terminal."""
    if world.main:
        return
    import traceback

    terminal = sys.stderr
    sys.stdout = sys.stderr = open(os.devnull, "w")
    sys.excepthook = lambda kind, value, tb: traceback.print_exception(kind, value, tb, file=terminal)


def main(argv: list[str] | None = None) -> None:
    cfg, resume = parse_args(argv)
    world = World.from_env(cfg.device)
    quiet_unless_main(world)
    if cfg.batch_size < world.size:
        sys.exit(f"error: --batch-size {cfg.batch_size} is the global batch and must be at least the number of "
                 f"processes ({world.size}), so that each one gets an example")
    try:
        info = check_out_folder(cfg, resume)
        seed_everything(cfg.seed)
        train_sets, val_sets, final_sets = load_tasks(cfg)
        if info is not None:
            from weights.fetch import weights_dir

            config_path = weights_dir() / "config.json"
            checkpoint = MPNetConfig.from_json(config_path) if config_path.is_file() else MPNetConfig()
            check_resume_matches(info, cfg, backbone_config(checkpoint, cfg), train_sets)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    sizes = ", ".join(f"{t}={ds.name}: {len(ds)} train / {len(val_sets.get(t, ()))} val / {len(final_sets[t])} "
                      f"{final_sets[t].split}" for t, ds in train_sets.items())
    print(f"tasks: {sizes}", file=sys.stderr)
    print(f"CPU: {describe()}; {'bf16 autocast' if uses_bf16(cfg) else 'fp32'} on {cfg.device}", file=sys.stderr)
    model, tokenizer = build(cfg, train_sets)
    if world.size > 1:
        torch.manual_seed(cfg.seed + world.rank)  # the same initial heads everywhere, then each rank its own dropout
    world.barrier()  # every rank has checked the folder before rank 0 changes it
    if not resume and world.main:
        clear_finished_run(Path(cfg.out))
        write_run_info(cfg, model, train_sets)
        save_test_rows(Path(cfg.out), final_sets, cfg)
    start = time.time()
    try:
        best = train(cfg, model, tokenizer, train_sets, val_sets, resume=resume, world=world)
    except Interrupted as e:
        print(f"{e}\nresume with:\n  {resume_command(cfg)}", file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    except Diverged as e:
        sys.exit(f"error: {e}")
    world.barrier()  # rank 0 has written best.safetensors
    model.load_state_dict(load_file(Path(cfg.out) / "best.safetensors"))
    final = accuracies(model, tokenizer, final_sets, uses_bf16(cfg), world=world)
    result = {"out": cfg.out, "cpu": describe(), "train_s": round(time.time() - start, 1), "best_epoch": best.get("epoch"),
              "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "peak_rss_mb": peak_rss_mb(), "cache_s": best.get("cache_s", 0), "epoch_train_s": best.get("train_s"),
              **{f"{k}_{final_sets[k[-1]].name}_{final_sets[k[-1]].split}": round(100 * v, 2) for k, v in final.items()}}
    print(json.dumps(result))
    world.close()


if __name__ == "__main__":
    main()
