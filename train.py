"""Multi-task fine-tuning of MPNet: one shared backbone, a head per task, a plain loop.

    python train.py                                   # topic + sentiment on the reviews set
    python train.py --task-a banking77 --task-b sst2 --epochs 1 --max-train 4000
    python train.py --task-b none --freeze top-4 --lr-groups llrd:0.9   # freeze.py, lr_groups.py
    python train.py --out runs/x --resume             # continue runs/x (same flags)
    python train.py --plain                           # exactly the code below, no speed path

It reads top to bottom: model and optimizer, a run's state (setup), one step (train_step, the
README's step), validation, the loop (train), the command line. The flags are TrainConfig
(train_config.py), the state Progress and Run (train_state.py). Three seams keep the rest away:
the speed path (speed/training.py), `world` (scale/ddp.py: a no-op without torchrun) and the run
folder (reliability/run_folder.py: checks, checkpoints, signals, the NaN guard).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import data
import freeze
import lr_groups
import metrics
import recipes
from heads import MultiTaskModel, balanced_class_weights, multitask_loss
from mpnet import SentenceEncoder
from reliability import run_folder
from reliability.run_folder import SignalGuard
from scale.ddp import World, loss_normalizers
from speed.hardware import describe
from speed.memory import peak_rss_mb
from speed.training import install as install_speed_path
from train_config import TrainConfig, parse_args, precision
from train_state import Meter, Progress, Run


# ----------------------------------------------------------------------------- model and optimizer
def build(cfg: TrainConfig, train_sets: dict):
    """The pretrained encoder with one fresh head per task, and its tokenizer."""
    encoder = SentenceEncoder.from_pretrained()
    encoder.model.set_attention_dropout(cfg.attention_dropout)
    num_labels = {task: len(ds.label_names) for task, ds in train_sets.items()
                  if isinstance(ds, data.LabelledTexts)}
    pairs = {task: ds.loss for task, ds in train_sets.items() if isinstance(ds, data.SentencePairs)}
    model = MultiTaskModel(encoder.model, num_labels, normalize=cfg.normalize, pairs=pairs)
    return model, encoder.tokenizer


def make_optimizer(groups: list[dict]) -> torch.optim.AdamW:
    """AdamW with its fused kernel: one pass over each parameter's weight, gradient and two
    moments, instead of a dozen elementwise operations per tensor."""
    return torch.optim.AdamW(groups, fused=True)


def planned_steps(cfg: TrainConfig, pools: list[data.Pool], sampler: data.MultiTaskSampler) -> int:
    """Optimizer steps the schedule spans: the epochs, cut by --max-steps and by --max-tokens (over
    the expected real tokens of a batch: each pool's mean length, weighted by its draw rate)."""
    steps = cfg.epochs * len(sampler)
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    if cfg.max_tokens:
        mean_len = [sum(map(len, pool.ids)) / len(pool) for pool in pools]
        per_batch = cfg.batch_size * sum(p * n for p, n in zip(sampler.probs, mean_len))
        steps = min(steps, math.ceil(cfg.max_tokens / per_batch))
    return steps


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str = "linear"):
    """Linear warmup from 0, then linear decay to 0 at the last step (BERT's recipe), or constant:
    heads on a frozen backbone are a convex problem that early stopping ends, with no planned last
    step to decay towards."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


# ----------------------------------------------------------------------------- a run's state, built
def setup(cfg: TrainConfig, model: MultiTaskModel, tokenizer, train_sets: dict, resume: bool,
          world: World = World(), val_sets: dict | None = None, announce: bool = True) -> Run:
    """Sampler, freezing, optimizer groups, schedule; on resume, as saved; then the speed path.
    announce: say what trains, at what learning rates (a line each; --verbose: the tables)."""
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    device = world.device(cfg.device)
    model.to(device)
    pools = data.make_pools(train_sets, tokenizer)
    sizes = [len(p) for p in pools]
    sampler = data.MultiTaskSampler(sizes, cfg.batch_size, cfg.temperature, cfg.seed)
    total_steps = planned_steps(cfg, pools, sampler)
    unfreezer = freeze.apply(model, cfg.freeze, epoch_steps=len(sampler), planned_steps=total_steps)
    if unfreezer:
        print(unfreezer.plan(total_steps), file=sys.stderr)
    groups = lr_groups.build(model, cfg.lr_groups, base_lr=cfg.lr, head_lr=cfg.head_lr,
                             weight_decay=cfg.weight_decay)
    optimizer = make_optimizer(groups)
    if announce:  # the rates before warmup scales them
        print(freeze.summary(model) if cfg.verbose else freeze.brief(model), file=sys.stderr)
        print(lr_groups.table(groups) if cfg.verbose else lr_groups.brief(groups), file=sys.stderr)
    schedule = lr_lambda(total_steps, int(cfg.warmup * total_steps), cfg.schedule)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    class_weights = None
    if cfg.class_weights:
        class_weights = {t: balanced_class_weights(ds.labels, len(ds.label_names))
                         for t, ds in train_sets.items() if isinstance(ds, data.LabelledTexts)}
    run = Run(cfg=cfg, model=model, forward=model, tokenizer=tokenizer, pools=pools,
              sampler=sampler, optimizer=optimizer, scheduler=scheduler,
              clip_grad_norm=torch.nn.utils.clip_grad_norm_, unfreezer=unfreezer,
              class_weights=class_weights, total_steps=total_steps, progress=Progress(),
              device=device, bf16=precision(cfg) == "bf16", out=Path(cfg.out), world=world,
              base=run_folder.base_of(Path(cfg.out)))  # then only what trains is saved
    if resume:
        run_folder.restore(run)
    if not cfg.plain:
        install_speed_path(run, val_sets or {})
    run.forward = world.wrap(model)  # under torchrun, DDP; else the model itself
    return run


# ----------------------------------------------------------------------------- one step
@dataclass
class Batch:
    """One step's examples, as this process trains on them (all of them without torchrun)."""
    input_ids: torch.Tensor               # (B, L) token ids, right-padded (pairs: 2B rows)
    attention_mask: torch.Tensor          # (B, L) 1 for a real token
    labels: dict[str, torch.Tensor]       # {task: (B,)}, -100: no label here; pairs: the score
    normalizers: dict[str, float] | None  # under torchrun, each task's loss divisor (scale/ddp.py)
    tokens: int                           # real tokens in the whole step, every process's share


def make_batch(run: Run, pool_idx: int, rows: list[int]) -> Batch:
    """The sampler's rows of one pool, padded and on the device: this process's share of them."""
    pool = run.pools[pool_idx]
    padded = data.collate(run.tokenizer, pool, run.world.slice(rows))
    return Batch(input_ids=padded["input_ids"].to(run.device),
                 attention_mask=padded["attention_mask"].to(run.device), labels=padded["labels"],
                 normalizers=loss_normalizers(run.world, pool, rows, run.class_weights),
                 tokens=sum(len(pool.ids[i]) for i in pool.sentences(rows)))


def train_step(run: Run, batch: Batch) -> dict[str, float]:
    """One optimizer step on one batch -> each task's mean loss."""
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.bf16):
        logits = run.forward(batch.input_ids, batch.attention_mask)  # {task: (B, classes)}
    loss, per_task = multitask_loss(logits, batch.labels, pairs=run.model.pairs,  # pair losses
                                    class_weights=run.class_weights,
                                    normalizers=batch.normalizers)  # missing labels (-100) ignored
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = run.clip_grad_norm(run.model.parameters(), run.cfg.clip)  # clip_grad_norm_
    if run_folder.update_is_finite(run, loss, norm):  # the NaN guard: else no update
        run.optimizer.step()  # fused AdamW, a learning rate per group
    run.scheduler.step()  # linear warmup, then linear decay
    return per_task


# ----------------------------------------------------------------------------- validation
def accuracies(model: MultiTaskModel, tokenizer, tasks: dict[str, data.LabelledTexts],
               autocast: bool, with_loss: bool = False, world: World = World()) -> dict[str, float]:
    """acc_<task> for each task (and loss_<task>, the mean cross-entropy, with_loss); a pair task's
    measures instead (pair_scores). Under torchrun each rank scores every N-th example; the sums
    over ranks give every rank the same numbers."""
    measured = {}
    for task, ds in tasks.items():
        if isinstance(ds, data.SentencePairs):
            measured |= pair_scores(model, tokenizer, task, ds, autocast, with_loss)
            continue
        rows = list(range(world.rank, len(ds), world.size))
        texts, labels = [ds.texts[i] for i in rows], torch.tensor([ds.labels[i] for i in rows])
        correct = nll = 0.0
        if texts:
            probs = model.predict_proba(tokenizer, texts, autocast=autocast)[task]
            correct = float((probs.argmax(-1) == labels).sum())
            picked = probs[torch.arange(len(labels)), labels]
            nll = float(-picked.clamp(min=1e-12).log().double().sum())
        correct, nll, n = world.sum([correct, nll, len(texts)])
        measured[f"acc_{task}"] = correct / n
        if with_loss:
            measured[f"loss_{task}"] = nll / n
    return measured


def pair_scores(model: MultiTaskModel, tokenizer, task: str, ds: data.SentencePairs,
                autocast: bool, with_loss: bool) -> dict[str, float]:
    """Scored pairs: spearman_ and pearson_<task> of cosine against the gold scores; positive pairs:
    acc1_ and mrr10_<task>, each first sentence searching all the second ones (metrics.py). With
    with_loss, loss_<task> is 1 - Spearman (or 1 - MRR@10): the best epoch is the best-ranked one.
    Every rank scores all the pairs (a few thousand sentences)."""
    emb = model.encode(tokenizer, ds.texts, autocast=autocast).numpy()
    first, second = emb[:len(ds)], emb[len(ds):]
    if ds.loss == "cosent":
        cos = metrics.cosines(first, second)
        scores = {"spearman": metrics.spearman(cos, ds.scores),
                  "pearson": metrics.pearson(cos, ds.scores)}
    else:
        scores = metrics.retrieval(first, second)
    out = {f"{name}_{task}": value for name, value in scores.items()}
    if with_loss:
        out[f"loss_{task}"] = 1 - scores["spearman" if ds.loss == "cosent" else "mrr10"]
    return out


def evaluate_and_save(run: Run, epoch: int, val_sets: dict, train_s: float, meter: Meter,
                      end_of_epoch: bool = True) -> None:
    """Validation, then the best and last checkpoints: at each epoch's end, every --eval-every."""
    progress, began = run.progress, time.time()
    if end_of_epoch:
        progress.epoch = epoch + 1
        if progress.validated_this_step():  # no second validation of the same weights
            save_at_epoch_end(run)
            return
    measured = accuracies(run.model, run.tokenizer, val_sets, autocast=run.bf16, with_loss=True,
                          world=run.world)
    record = {"epoch": epoch + 1, "step": progress.step, "tokens": progress.tokens,
              "elapsed_s": round(time.time() - meter.started, 1), "train_s": round(train_s, 1),
              "cache_s": progress.cache_s, "skipped": progress.skipped,
              **{f"val_{k}": round(v, 4) for k, v in measured.items()}}
    progress.history.append(record)
    when = f"epoch {epoch + 1} done" if end_of_epoch else f"validation at step {progress.step}"
    if measured:  # without validation data the last epoch is kept (see train())
        loss = float(np.mean([v for k, v in measured.items() if k.startswith("loss_")]))
        acc = float(np.mean([v for k, v in measured.items() if k.startswith("acc_")] or [0.0]))
        if progress.is_better(loss, acc):
            progress.best_loss, progress.best_acc, progress.stale = loss, acc, 0
            run_folder.save_best(run, record)
            verdict = ", the best so far"
        else:
            progress.stale += 1
            verdict = f", {progress.stale} without a better one" if run.cfg.patience else ""
        scores = " ".join(f"{k}={v}" for k, v in record.items() if k.startswith("val_"))
        if not (end_of_epoch and meter.quiet(epoch, run.cfg.epochs)) or finished(run):
            print(f"{when}: {scores}{verdict} (at {record['elapsed_s']} s)", file=sys.stderr,
                  flush=True)
    meter.validation_s += time.time() - began
    meter.validations += 1
    if end_of_epoch:
        save_at_epoch_end(run)
    else:
        run_folder.save_last(run)


def save_at_epoch_end(run: Run) -> None:
    """last.safetensors at each epoch's end; with --save-every N, only every N steps (in the loop).
    The run's end saves once, after the loop, whichever way it ends."""
    if not run.cfg.save_every and not finished(run):
        run_folder.save_last(run)


def finished(run: Run) -> bool:
    """The step budget, the token budget, or early stopping (--patience validations, no best)."""
    cfg, progress = run.cfg, run.progress
    if progress.step >= run.total_steps:
        return True
    if cfg.max_tokens and progress.tokens >= cfg.max_tokens:
        return True
    return bool(cfg.patience) and progress.stale >= cfg.patience


# ----------------------------------------------------------------------------- the loop
def train_epoch(run: Run, epoch: int, val_sets: dict, signals: SignalGuard, meter: Meter) -> float:
    """Steps until the sampler's epoch or the budget ends, logging, saving and validating on the
    way. Returns the seconds it took."""
    cfg, progress = run.cfg, run.progress
    epoch_start = time.time()
    for pool_idx, rows in run.sampler:
        batch = make_batch(run, pool_idx, rows)
        per_task = train_step(run, batch)
        progress.step += 1
        progress.tokens += batch.tokens
        meter.add(batch.tokens, per_task)
        step = progress.step
        if run.unfreezer and step % run.unfreezer.every_steps == 0:
            unfreeze_next(run)
        if (step % cfg.log_every == 0 and not meter.per_epoch) or step == run.total_steps:
            meter.log_line(run, epoch)
        if cfg.save_every and step % cfg.save_every == 0:
            run_folder.save_last(run)
        if cfg.eval_every and step % cfg.eval_every == 0 and val_sets:
            evaluate_and_save(run, epoch, val_sets, time.time() - epoch_start, meter,
                              end_of_epoch=False)
            freeze.train_mode(run.model)
        if finished(run):
            break
        run_folder.stop_if_signalled(run, signals)
    if meter.per_epoch and progress.step != run.total_steps and not meter.quiet(epoch, cfg.epochs):
        meter.log_line(run, epoch)  # heads only: a line an epoch, not a step
    return time.time() - epoch_start


def unfreeze_next(run: Run) -> None:
    """Gradual unfreezing's next group; under DDP a new wrapper, since DDP syncs only the
    parameters that were trainable when it was built."""
    name = run.unfreezer.unfreeze_next()
    if name is None:
        return
    print(f"step {run.progress.step}: gradual unfreezing, {name} now trains", file=sys.stderr)
    if run.world.size > 1:
        run.forward = run.world.wrap(run.model)


def train(cfg: TrainConfig, model: MultiTaskModel, tokenizer, train_sets: dict, val_sets: dict,
          resume: bool = False, world: World = World(), announce: bool = True) -> dict:
    """The loop. Returns the best validation metrics; writes checkpoints into cfg.out (rank 0)."""
    run = setup(cfg, model, tokenizer, train_sets, resume, world, val_sets, announce)
    progress = run.progress
    trainable = any(p.requires_grad for p in model.parameters())
    last_epoch = cfg.epochs
    if not trainable:
        print("nothing is trainable (freeze=all): one evaluation, no training", file=sys.stderr)
        last_epoch = progress.epoch + 1
    frozen_backbone = not any(p.requires_grad for p in model.backbone.parameters())
    heads_only = frozen_backbone and run.unfreezer is None  # nothing will thaw
    meter = Meter(started=time.time(), start_step=progress.step, per_epoch=heads_only,
                  val_rows=sum(len(ds) for ds in val_sets.values()))
    with SignalGuard() as signals:
        for epoch in range(progress.epoch, last_epoch):
            if finished(run) and progress.validated_this_step():
                break  # resumed after the last step had already been validated
            freeze.train_mode(model)
            train_s = 0.0
            if trainable and not finished(run):
                train_s = train_epoch(run, epoch, val_sets, signals, meter)
            evaluate_and_save(run, epoch, val_sets, train_s, meter)
            if finished(run):
                break
            run_folder.stop_if_signalled(run, signals)
        if not val_sets:  # no validation data: the model at the end is the one to keep
            run_folder.save_best(run, progress.history[-1])
        progress.done = True
        run_folder.save_last(run)
    return progress.best_metrics


def refit(cfg: TrainConfig, model: MultiTaskModel, tokenizer, train_sets: dict, val_sets: dict,
          best: dict, initial_heads: dict, world: World = World()) -> dict:
    """--refit: early stopping picked the epoch count; now fresh heads (the same initial weights)
    train on train + validation (recipes.refit_config) and become best.safetensors, as
    scikit-learn's *CV estimators end. Its run folder is out/refit/, where a stopped one resumes."""
    out = Path(cfg.out)
    refit_cfg = recipes.refit_config(cfg, best["epoch"], out=str(out / run_folder.REFIT))
    everything = recipes.train_plus_validation(train_sets, val_sets)
    rows = sum(len(ds) for ds in everything.values())
    print(f"refit: fresh heads on all {rows} rows (train + validation) for {refit_cfg.epochs} "
          f"epochs, twice the best validation's count, the rate decaying linearly to 0",
          file=sys.stderr)
    model.heads.load_state_dict(initial_heads)
    resume = (Path(refit_cfg.out) / "last.safetensors").is_file()  # a refit began and was stopped
    refit_best = train(refit_cfg, model, tokenizer, everything, {}, resume=resume, world=world,
                       announce=False)
    if world.main:
        run_folder.keep_refit(out)
    world.barrier()
    train_s = best.get("train_s", 0) + refit_best.get("train_s", 0)
    return best | {"refit_rows": rows, "train_s": train_s}


# ----------------------------------------------------------------------------- the command line
def main(argv: list[str] | None = None) -> None:
    """Check the flags and the run folder, load the data and the model, train (and refit), then
    score the test sets with the best weights; the last line printed is one JSON object."""
    cfg, resume, recipe_line = parse_args(argv, description=__doc__)
    world = World.from_env(cfg.device)
    world.quiet_unless_main()
    with run_folder.locked_or_exit(Path(cfg.out), enabled=world.main):  # one train.py a folder
        train_sets, val_sets, final_sets = run_folder.prepare(cfg, resume, recipe_line)
        model, tokenizer = build(cfg, train_sets)
        initial_heads = {k: v.clone() for k, v in model.heads.state_dict().items()}  # for --refit
        if world.size > 1:
            torch.manual_seed(cfg.seed + world.rank)  # the same heads everywhere, its own dropout
        world.barrier()  # every rank has checked the folder before rank 0 changes it
        if not resume and world.main:
            run_folder.start(cfg, model.backbone, train_sets, final_sets)  # run.json, ...
        start = time.time()
        with run_folder.stop_cleanly(cfg, recipes.scenario_defaults(cfg)):  # signals, the NaN guard
            best = train(cfg, model, tokenizer, train_sets, val_sets, resume=resume, world=world)
            if cfg.refit and val_sets:
                best = refit(cfg, model, tokenizer, train_sets, val_sets, best, initial_heads,
                             world)
        world.barrier()  # rank 0 has written best.safetensors
        run_folder.load_best(model, Path(cfg.out))  # best.safetensors
        final = accuracies(model, tokenizer, final_sets, precision(cfg) == "bf16", world=world)
        peak = peak_rss_mb()
        seconds = time.time() - start
        result = {"out": cfg.out, "cpu": describe(), "train_s": round(seconds, 1),
                  "best_epoch": best.get("epoch"), "refit_rows": best.get("refit_rows"),
                  "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                  "peak_rss_mb": None if peak is None else round(peak),
                  "cache_s": best.get("cache_s", 0), "epoch_train_s": best.get("train_s")}
        for key, value in final.items():  # e.g. acc_a_banking77_test, spearman_b_stsb_test
            ds = final_sets[key.split("_")[-1]]
            result[f"{key}_{data.short_name(ds.name)}_{ds.split}"] = round(100 * value, 2)
        if world.main:  # in words on stderr, then the JSON line on stdout
            print(run_folder.summary(Path(cfg.out), final, final_sets, seconds, best.get("epoch")),
                  file=sys.stderr)
        print(json.dumps(result))
    world.close()


if __name__ == "__main__":
    main()
