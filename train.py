"""Multi-task fine-tuning of MPNet: one shared backbone, a head per task, a plain loop.

    python train.py                                   # topic + sentiment on the embedded reviews set
    python train.py --task-a banking77 --task-b sst2 --epochs 1 --max-train 4000
    python train.py --task-b none --freeze top-4 --lr-groups llrd:0.9   # one task; freeze.py, lr_groups.py
    python train.py --out runs/x --resume             # continue runs/x (same flags) from its last checkpoint
    python train.py --plain                           # exactly the code below, without the speed path
    python train.py --task-b none --freeze backbone   # heads only: its own recipe (freeze.recipe), printed first

The file reads top to bottom: the model and optimizer, a run's state built (setup), one step
(train_step: a screen of plain PyTorch), validation, the loop (train), the command line. The flags
and the state the loop changes are typed dataclasses in train_state.py: TrainConfig, Progress, Run.
Three seams, one call each, keep the rest out of the way: speed_up() (speed/training.py, off with
--plain), `world` (scale/ddp.py: every call a no-op without torchrun), and run_folder
(reliability/run_folder.py: the checks before a run, saving and resuming, signals, the NaN guard's
message).

Writes into --out: best.safetensors (the best validation's weights), last.safetensors (the whole
resumable state, reliability/checkpoint.py), run.json, metrics.jsonl, losses.jsonl, tokenizer.json.
The last line printed is one JSON object with the final metrics.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

import data
import freeze
import lr_groups
from heads import MultiTaskModel, balanced_class_weights, multitask_loss
from mpnet import MPNet, MPNetConfig, SentenceEncoder
from reliability import run_folder
from reliability.flags import TRAIN_CHOICES, TRAIN_FLAG_TYPES, check_train_specs
from reliability.run_folder import Diverged, Interrupted, SignalGuard
from scale.ddp import World, loss_normalizers
from speed.hardware import describe
from speed.memory import peak_rss_mb
from train_state import Progress, Run, TrainConfig, precision
from weights.fetch import weights_dir


# ----------------------------------------------------------------------------- the model and optimizer
def build(cfg: TrainConfig, train_sets: dict):
    """The pretrained encoder with one fresh head per task, and its tokenizer."""
    encoder = SentenceEncoder.from_pretrained()
    encoder.model.set_attention_dropout(cfg.attention_dropout)  # 0: no masks to draw (docs/fewshot.md)
    num_labels = {task: len(ds.label_names) for task, ds in train_sets.items()}
    model = MultiTaskModel(encoder.model, num_labels, normalize=cfg.normalize)
    return model, encoder.tokenizer


def run_info(cfg: TrainConfig, backbone: MPNetConfig, train_sets: dict) -> dict:
    """run.json: what eval.py and predict.py need to rebuild the model, and what a resume must match
    (data_sha256: the data files); "recipe" names the scenario whose defaults the command line used."""
    tasks = {t: {"dataset": ds.name, "label_names": ds.label_names} for t, ds in train_sets.items()}
    for t, name in data.task_datasets(cfg).items():
        if data.is_user_file(name):
            tasks[t]["test_rows"] = run_folder.TEST_ROWS.format(task=t)
    extra = [cfg.test_a, cfg.test_b, cfg.labels_a, cfg.labels_b]
    return {"config": asdict(cfg), "backbone": asdict(backbone), "tasks": tasks, "precision": precision(cfg),
            "recipe": freeze.recipe(cfg.freeze, cfg.per_class)[0] if cfg.recipe == "auto" else "none",
            "data_sha256": data.fingerprints(list(train_sets.values()), extra)}


def make_optimizer(groups: list[dict]) -> torch.optim.AdamW:
    """AdamW with its fused kernel: one pass over each parameter's weight, gradient and two moments,
    instead of a dozen elementwise ops per tensor (on 2 CPU cores ~40 ms a step instead of ~185)."""
    return torch.optim.AdamW(groups, fused=True)


def planned_steps(cfg: TrainConfig, pools: list[data.Pool], sampler: data.MultiTaskSampler) -> int:
    """Optimizer steps the learning-rate schedule spans: the epochs, cut by --max-steps, and by
    --max-tokens converted to steps with the expected real tokens of a batch (the mean length of
    each pool, weighted by how often the sampler draws it)."""
    steps = cfg.epochs * len(sampler)
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    if cfg.max_tokens:
        mean_len = [sum(map(len, pool.ids)) / len(pool) for pool in pools]
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


# ----------------------------------------------------------------------------- a run's state (train_state.Run), built
def setup(cfg: TrainConfig, model: MultiTaskModel, tokenizer, train_sets: dict, resume: bool,
          world: World = World(), val_sets: dict | None = None) -> Run:
    """Sampler, freezing, optimizer groups and schedule; on resume, all as last saved; then the speed path."""
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    device = world.device(cfg.device)
    model.to(device)
    pools = data.make_pools(train_sets, tokenizer)
    sampler = data.MultiTaskSampler([len(p) for p in pools], cfg.batch_size, cfg.temperature, cfg.seed)
    total_steps = planned_steps(cfg, pools, sampler)
    unfreezer = freeze.apply(model, cfg.freeze, epoch_steps=len(sampler), planned_steps=total_steps)
    if unfreezer:
        print(f"gradual unfreezing: the heads first, then one more of the {len(unfreezer.groups)} groups every "
              f"{unfreezer.every_steps} steps (of {total_steps} planned)", file=sys.stderr)
    groups = lr_groups.build(model, cfg.lr_groups, base_lr=cfg.lr, head_lr=cfg.head_lr, weight_decay=cfg.weight_decay)
    optimizer = make_optimizer(groups)
    print(freeze.summary(model) + "\n" + lr_groups.table(groups), file=sys.stderr)  # before warmup scales the lrs
    schedule = lr_lambda(total_steps, int(cfg.warmup * total_steps), cfg.schedule)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    class_weights = ({t: balanced_class_weights(ds.labels, len(ds.label_names)) for t, ds in train_sets.items()}
                     if cfg.class_weights else None)
    run = Run(cfg=cfg, model=model, forward=model, tokenizer=tokenizer, pools=pools, sampler=sampler,
              optimizer=optimizer, scheduler=scheduler, clip_grad_norm=torch.nn.utils.clip_grad_norm_,
              unfreezer=unfreezer, class_weights=class_weights, total_steps=total_steps, progress=Progress(),
              device=device, bf16=precision(cfg) == "bf16", out=Path(cfg.out), world=world)
    if resume:
        run_folder.restore(run)
    if not cfg.plain:
        install_speed_path(run, val_sets or {})
    run.forward = world.wrap(model)  # under torchrun, DDP; else the model itself
    return run


def install_speed_path(run: Run, val_sets: dict) -> None:
    """speed/training.py's speed_up: the same arithmetic, faster (off with --plain). It caches the frozen
    bottom's outputs when there is one to skip and nothing will thaw (every rank caches every pool)."""
    from speed.training import speed_up

    trainable = any(p.requires_grad for p in run.model.parameters())
    cache = trainable and not run.cfg.no_cache and run.unfreezer is None
    speed = speed_up(run.model, run.optimizer, run.tokenizer,
                     train_texts=[t for p in run.pools for t in p.texts] if cache else None,
                     val_texts=[t for ds in val_sets.values() for t in ds.texts], autocast=run.bf16,
                     ddp=run.world.size > 1)
    run.clip_grad_norm = speed.clip_grad_norm
    if speed.cache_s:  # a cache was filled in this process (on resume too): its time
        run.progress.cache_s = speed.cache_s


# ----------------------------------------------------------------------------- one step
def train_step(run: Run, pool_idx: int, rows: list[int]) -> tuple[int, dict[str, float]]:
    """One optimizer step on one batch -> (real tokens, per-task losses)."""
    here = run.world.slice(rows)  # this process's share of the step (all of it without torchrun)
    batch = data.collate(run.tokenizer, run.pools[pool_idx], here)
    ids, mask = batch["input_ids"].to(run.device), batch["attention_mask"].to(run.device)
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.bf16):
        logits = run.forward(ids, mask)
    normalizers = loss_normalizers(run.world, run.pools[pool_idx], rows, run.class_weights)  # None without torchrun
    loss, per_task = multitask_loss(logits, batch["labels"], class_weights=run.class_weights, normalizers=normalizers)

    # Summed over processes (as is without torchrun), so that all take the same decision.
    tokens, bad = run.world.sum([float(mask.sum()), float(not torch.isfinite(loss))])
    run.optimizer.zero_grad(set_to_none=True)
    finite = bad == 0
    if finite:
        loss.backward()
        norm = run.clip_grad_norm(run.model.parameters(), run.cfg.clip)
        finite = bool(torch.isfinite(norm))
    if finite:
        run.optimizer.step()
        run.progress.bad_in_row = 0
    run.scheduler.step()
    run.progress.step += 1

    if not finite:
        run_folder.skip_update(run)  # the NaN guard: no update; --max-bad-steps in a row stop the run
    if run.unfreezer and run.progress.step % run.unfreezer.every_steps == 0 and (name := unfreeze_next(run)):
        print(f"step {run.progress.step}: gradual unfreezing, {name} now trains", file=sys.stderr)
    return int(tokens), per_task


def unfreeze_next(run: Run) -> str | None:
    """Gradual unfreezing's next group; under DDP, a new wrapper, since DDP syncs only the parameters
    that were trainable when it was built."""
    name = run.unfreezer.unfreeze_next()
    if name and run.world.size > 1:
        run.forward = run.world.wrap(run.model)
    return name


# ----------------------------------------------------------------------------- validation
def accuracies(model: MultiTaskModel, tokenizer, tasks: dict[str, data.LabelledTexts], autocast: bool,
               with_loss: bool = False, world: World = World()) -> dict[str, float]:
    """acc_<task> for each task (and loss_<task>, the mean cross-entropy, with_loss).

    Under torchrun each rank scores every N-th example and the counts are summed over ranks: N
    processes validate N times faster, and every rank gets the same numbers, so all of them take the
    same decisions (best checkpoint, early stopping) without sending any."""
    metrics = {}
    for task, ds in tasks.items():
        rows = list(range(world.rank, len(ds), world.size))
        texts, labels = [ds.texts[i] for i in rows], torch.tensor([ds.labels[i] for i in rows])
        correct = nll = 0.0
        if texts:
            probs = model.predict_proba(tokenizer, texts, autocast=autocast)[task]
            correct = float((probs.argmax(-1) == labels).sum())
            nll = float(-probs[torch.arange(len(labels)), labels].clamp(min=1e-12).log().double().sum())
        correct, nll, n = world.sum([correct, nll, len(texts)])
        metrics[f"acc_{task}"] = correct / n
        if with_loss:
            metrics[f"loss_{task}"] = nll / n
    return metrics


def evaluate_and_save(run: Run, epoch: int, val_sets: dict, train_s: float, started: float,
                      end_of_epoch: bool = True) -> None:
    """Validation, then the best and last checkpoints: at each epoch's end and every --eval-every steps."""
    progress = run.progress
    if end_of_epoch:
        progress.epoch = epoch + 1
        if progress.validated_this_step():  # no second validation of the same weights
            save_at_epoch_end(run)
            return
    metrics = accuracies(run.model, run.tokenizer, val_sets, run.bf16, with_loss=True, world=run.world) if val_sets else {}
    record = {"epoch": epoch + 1, "step": progress.step, "tokens": progress.tokens,
              "elapsed_s": round(time.time() - started, 1), "train_s": round(train_s, 1), "cache_s": progress.cache_s,
              "skipped": progress.skipped, **{f"val_{k}": round(v, 4) for k, v in metrics.items()}}
    progress.history.append(record)
    when = f"epoch {epoch + 1} done" if end_of_epoch else f"validation at step {progress.step}"
    print(f"{when}: {record}", file=sys.stderr, flush=True)
    if metrics:  # without validation data the last epoch is kept (see train())
        loss = float(np.mean([v for k, v in metrics.items() if k.startswith("loss_")]))
        acc = float(np.mean([v for k, v in metrics.items() if k.startswith("acc_")]))
        if progress.is_better(loss, acc):
            progress.best_loss, progress.best_acc, progress.stale = loss, acc, 0
            run_folder.save_best(run, record)
        else:
            progress.stale += 1
    if end_of_epoch:
        save_at_epoch_end(run)
    else:
        run_folder.save_last(run)


def save_at_epoch_end(run: Run) -> None:
    """last.safetensors at each epoch's end; with --save-every N, only every N steps (in the loop).
    A few-shot epoch is a step or two, a heads-only epoch about a second, and a save is a 0.4-1.3 GB
    write. The run's end saves once, after the loop, whichever way it ends."""
    if not run.cfg.save_every and not finished(run):
        run_folder.save_last(run)


def finished(run: Run) -> bool:
    """The step budget, the token budget, or early stopping (--patience validations without a new best)."""
    cfg, progress = run.cfg, run.progress
    if progress.step >= run.total_steps:
        return True
    if cfg.max_tokens and progress.tokens >= cfg.max_tokens:
        return True
    return bool(cfg.patience) and progress.stale >= cfg.patience


@dataclass
class Meter:
    """Logging's running counts: since this process started, and since the last log line."""
    started: float
    start_step: int
    tokens: int = 0                 # real tokens trained on by this process (all ranks)
    window: dict = field(default_factory=dict)  # per task: the losses since the last log line


def log_line(run: Run, epoch: int, meter: Meter) -> None:
    """Print the mean loss per task since the last log line, and keep it for losses.jsonl (tools/plots.py)."""
    step, elapsed = run.progress.step, time.time() - meter.started
    eta = elapsed / max(1, step - meter.start_step) * (run.total_steps - step)
    means = {f"loss_{t}": round(sum(v) / len(v), 4) for t, v in meter.window.items() if v}
    lr = run.scheduler.get_last_lr()[0]
    run.progress.losses.append({"step": step, "lr": lr, **means})
    meter.window = {}
    print(f"epoch {epoch + 1} step {step}/{run.total_steps} {' '.join(f'{k}={v:.3f}' for k, v in means.items())} "
          f"lr={lr:.2e} {meter.tokens / max(elapsed, 1e-9):.0f} tok/s eta {eta / 60:.1f} min", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the loop
def train_epoch(run: Run, epoch: int, val_sets: dict, signals: SignalGuard, meter: Meter) -> float:
    """Steps until the sampler's epoch or the budget ends, logging, saving and validating on the way.
    Returns the seconds it took."""
    cfg, progress = run.cfg, run.progress
    epoch_start = time.time()
    for pool_idx, rows in run.sampler:
        tokens, per_task = train_step(run, pool_idx, rows)
        meter.tokens += tokens
        progress.tokens += tokens
        for task, value in per_task.items():
            if math.isfinite(value):
                meter.window.setdefault(task, []).append(value)
        step = progress.step
        if step % cfg.log_every == 0 or step == run.total_steps:
            log_line(run, epoch, meter)
        if cfg.save_every and step % cfg.save_every == 0:
            run_folder.save_last(run)
        if cfg.eval_every and step % cfg.eval_every == 0 and val_sets:
            evaluate_and_save(run, epoch, val_sets, time.time() - epoch_start, meter.started, end_of_epoch=False)
            freeze.train_mode(run.model)
        if finished(run):
            break
        run_folder.stop_if_signalled(run, signals)
    return time.time() - epoch_start


def train(cfg: TrainConfig, model: MultiTaskModel, tokenizer, train_sets: dict, val_sets: dict,
          resume: bool = False, world: World = World()) -> dict:
    """The loop. Returns the best validation metrics; writes checkpoints into cfg.out (rank 0)."""
    run = setup(cfg, model, tokenizer, train_sets, resume, world, val_sets)
    progress = run.progress
    trainable = any(p.requires_grad for p in model.parameters())
    last_epoch = cfg.epochs
    if not trainable:
        print("nothing is trainable (freeze=all): one evaluation, no training", file=sys.stderr)
        last_epoch = progress.epoch + 1
    meter = Meter(started=time.time(), start_step=progress.step)
    with SignalGuard() as signals:
        for epoch in range(progress.epoch, last_epoch):
            if finished(run) and progress.validated_this_step():
                break  # resumed after the last step had already been validated
            freeze.train_mode(model)
            train_s = 0.0
            if trainable and not finished(run):
                train_s = train_epoch(run, epoch, val_sets, signals, meter)
            evaluate_and_save(run, epoch, val_sets, train_s, meter.started)
            if finished(run):
                break
            run_folder.stop_if_signalled(run, signals)
        if not val_sets:  # no validation data: the model at the end is the one to keep, written once
            run_folder.save_best(run, progress.history[-1])
        progress.done = True
        run_folder.save_last(run)
    return progress.best_metrics


def refit(cfg: TrainConfig, model: MultiTaskModel, tokenizer, train_sets: dict, val_sets: dict, best: dict,
          initial_heads: dict, world: World = World()) -> dict:
    """--refit: early stopping picked the number of epochs; now the heads start again from the same
    initial weights and train on train + validation for twice that many (below), with no validation, and
    become best.safetensors (scikit-learn's *CV estimators end the same way). Its own run folder is
    out/refit/, so an interrupted refit resumes there; its best.safetensors is then moved into out/.
    The backbone is frozen (--refit needs --freeze backbone), and the feature cache already holds the
    validation rows.

    The search ran at a constant learning rate, since early stopping decided its end. The refit knows its
    end, so its rate decays linearly to 0 over twice the winning epoch count: the same area under the
    learning-rate curve, so the head travels as far, and it ends settled instead of wherever the last
    batches pushed it (experiments/recipes.md: decaying over the same count trained the small sets too
    little)."""
    out = Path(cfg.out)
    refit_cfg = replace(cfg, epochs=2 * best["epoch"], schedule="linear", patience=0, val_fraction=0.0, refit=False,
                        out=str(out / run_folder.REFIT))
    everything = {}  # each task's training rows, and its validation rows if it has any
    for task, ds in train_sets.items():
        if task in val_sets:
            ds = replace(ds, texts=ds.texts + val_sets[task].texts, labels=ds.labels + val_sets[task].labels)
        everything[task] = ds
    rows = sum(len(ds) for ds in everything.values())
    print(f"refit: fresh heads on all {rows} rows (train + validation) for {refit_cfg.epochs} epochs, twice the "
          f"best validation's count, the learning rate decaying linearly to 0", file=sys.stderr)
    model.heads.load_state_dict(initial_heads)
    resume = (Path(refit_cfg.out) / "last.safetensors").is_file()  # this run's refit began and was stopped
    refit_best = train(refit_cfg, model, tokenizer, everything, {}, resume=resume, world=world)
    if world.main:
        run_folder.keep_refit(out)
    world.barrier()
    return best | {"refit_rows": rows, "train_s": best.get("train_s", 0) + refit_best.get("train_s", 0)}


# ----------------------------------------------------------------------------- the command line
def with_recipe(cfg: TrainConfig, given: set[str]) -> tuple[TrainConfig, str]:
    """The scenario's recipe (freeze.recipe) in every field not in `given` (the flags the user typed,
    which always win) -> (config, one line saying what was chosen and why)."""
    name, defaults = freeze.recipe(cfg.freeze, cfg.per_class)
    chosen = {k: v for k, v in defaults.items() if k not in given}
    if cfg.recipe == "none" or not chosen:
        return cfg, ""
    words = ", ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in chosen.items())
    return replace(cfg, **chosen), f"recipe for {name} (freeze.recipe): {words}"


def scenario_defaults(cfg: TrainConfig) -> dict:
    """Every flag's value when not typed, in cfg's scenario: what a resume command may leave out."""
    _, chosen = freeze.recipe(cfg.freeze, cfg.per_class)
    return asdict(TrainConfig()) | (chosen if cfg.recipe == "auto" else {})


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool, str]:
    """Flags from TrainConfig's fields, each checked here, before any data or weights load; then the
    scenario's recipe in the flags not given. -> (config, --resume, the recipe's line)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainConfig):  # default=SUPPRESS: a flag not typed is absent, so the recipe may fill it
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        else:
            parser.add_argument(flag, type=TRAIN_FLAG_TYPES.get(f.name, str), default=argparse.SUPPRESS,
                                choices=TRAIN_CHOICES.get(f.name), help=f"default: {f.default}")
    parser.add_argument("--resume", action="store_true", help="continue --out's last checkpoint (same flags)")
    given = vars(parser.parse_args(argv))
    resume = given.pop("resume")
    cfg, recipe_line = with_recipe(TrainConfig(**given), given=set(given))
    if "out" not in given and not resume:  # keep the model of an earlier `python train.py`
        cfg = replace(cfg, out=str(run_folder.next_free(Path(cfg.out))))
    try:
        check_train_specs(cfg)
    except ValueError as e:
        parser.error(str(e))
    return cfg, resume, recipe_line


def main(argv: list[str] | None = None) -> None:
    cfg, resume, recipe_line = parse_args(argv)
    world = World.from_env(cfg.device)
    world.quiet_unless_main()
    if cfg.batch_size < world.size:
        sys.exit(f"error: --batch-size {cfg.batch_size} is the global batch and must be at least the number of "
                 f"processes ({world.size}), so that each one gets an example")
    try:
        with run_folder.locked(Path(cfg.out), enabled=world.main):  # one train.py per run folder
            run_and_test(cfg, resume, recipe_line, world)
    except run_folder.FolderInUse as e:
        sys.exit(f"error: {e}")


def run_and_test(cfg: TrainConfig, resume: bool, recipe_line: str, world: World) -> None:
    """Check the run folder, load the data and the model, train (and refit), then score the test sets
    with the best weights; the last line printed is one JSON object."""
    out, flags, defaults = Path(cfg.out), asdict(cfg), asdict(TrainConfig())
    try:
        saved_info = run_folder.check_before_start(out, resume, flags, defaults, precision(cfg))
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        train_sets, val_sets, final_sets = data.load_tasks(cfg)
        if resume:
            backbone = replace(MPNetConfig.of_weights(), attention_probs_dropout_prob=cfg.attention_dropout)
            now = run_info(cfg, backbone, train_sets)
            run_folder.check_resume_matches(saved_info, now, out)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    sizes = ", ".join(f"{t}={ds.name}: {len(ds)} train / {len(val_sets.get(t, ()))} val / {len(final_sets[t])} "
                      f"{final_sets[t].split}" for t, ds in train_sets.items())
    print(f"tasks: {sizes}", file=sys.stderr)
    if recipe_line:
        print(recipe_line, file=sys.stderr)
    print(f"CPU: {describe()}; {'bf16 autocast' if precision(cfg) == 'bf16' else 'fp32'} on {cfg.device}"
          + ("; --plain: no speed path" if cfg.plain else ""), file=sys.stderr)
    model, tokenizer = build(cfg, train_sets)
    initial_heads = {k: v.clone() for k, v in model.heads.state_dict().items()}  # for --refit
    if world.size > 1:
        torch.manual_seed(cfg.seed + world.rank)  # the same initial heads everywhere, then each rank its own dropout
    world.barrier()  # every rank has checked the folder before rank 0 changes it
    if not resume and world.main:
        user_test_rows = {t: final_sets[t] for t, name in data.task_datasets(cfg).items() if data.is_user_file(name)}
        run_folder.start_fresh(out, run_info(cfg, model.backbone.cfg, train_sets), weights_dir() / "tokenizer.json",
                               user_test_rows)
    start = time.time()
    try:
        best = train(cfg, model, tokenizer, train_sets, val_sets, resume=resume, world=world)
        if cfg.refit and val_sets:
            best = refit(cfg, model, tokenizer, train_sets, val_sets, best, initial_heads, world)
    except Interrupted as e:
        print(f"{e}\nresume with:\n  {run_folder.resume_command(flags, scenario_defaults(cfg))}", file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    except Diverged as e:
        sys.exit(f"error: {e}")
    world.barrier()  # rank 0 has written best.safetensors
    model.load_state_dict(load_file(out / "best.safetensors"))
    final = accuracies(model, tokenizer, final_sets, precision(cfg) == "bf16", world=world)
    peak = peak_rss_mb()
    result = {"out": cfg.out, "cpu": describe(), "train_s": round(time.time() - start, 1), "best_epoch": best.get("epoch"),
              "refit_rows": best.get("refit_rows"),
              "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "peak_rss_mb": None if peak is None else round(peak), "cache_s": best.get("cache_s", 0),
              "epoch_train_s": best.get("train_s")}
    for task, ds in final_sets.items():  # e.g. acc_a_banking77_test
        result[f"acc_{task}_{ds.name}_{ds.split}"] = round(100 * final[f"acc_{task}"], 2)
    print(json.dumps(result))
    world.close()


if __name__ == "__main__":
    main()
