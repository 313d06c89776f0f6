"""Multi-task fine-tuning of MPNet: one shared backbone, a head per task, a plain loop.

    python train.py                                   # topic + sentiment on the embedded reviews set
    python train.py --task-a banking77 --task-b sst2 --epochs 1 --max-train 4000
    python train.py --task-b none                     # single-task: Task A only
    python train.py --out runs/x --resume             # continue runs/x from its last checkpoint

Writes into --out: best.safetensors and last.safetensors (model weights), run.json (config,
label names, backbone config), state.pt (optimizer, schedule, sampler and RNG state, for
--resume), metrics.jsonl (one line per evaluation), tokenizer.json. The last line printed is
one JSON object with the final metrics.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import data
import freeze
import lr_groups
from feature_cache import FeatureCache, frozen_prefix
from heads import MultiTaskModel, balanced_class_weights, multitask_loss
from mpnet import SentenceEncoder, length_sorted_batches


@dataclass
class TrainConfig:
    task_a: str = "reviews-topic"
    task_b: str = "reviews-sentiment"   # "none": train Task A alone
    data_dir: str | None = None
    epochs: int = 3
    batch_size: int = 16
    max_steps: int = 0                  # > 0: stop after this many optimizer steps (a time budget)
    max_train: int = 0                  # > 0: use at most this many training examples per task
    val_fraction: float = 0.1           # held out from train to pick the best epoch
    lr: float = 3e-5                    # backbone
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1                 # fraction of all steps
    clip: float = 1.0
    temperature: float = 2.0            # multi-task sampling, see data.MultiTaskSampler
    class_weights: bool = False         # balanced class weights in each task's loss
    normalize: bool = False             # heads read the L2-normalised embedding
    freeze: str = "none"                # none | all | backbone | head:a | top-K | gradual[:STEPS], see freeze.py
    lr_groups: str = "flat"             # flat | tiers | llrd:DECAY | ulmfit, see lr_groups.py
    no_cache: bool = False              # don't cache the frozen bottom's outputs (see feature_cache.py)
    device: str = "cpu"
    dtype: str = "auto"                 # auto | fp32 | bf16 (autocast)
    seed: int = 0
    log_every: int = 10
    out: str = "runs/default"


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process (Linux), for the experiment tables."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return round(int(line.split()[1]) / 1024)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def bf16_supported(device: str) -> bool:
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    try:  # native bf16 matmul on x86 needs AVX-512 BF16 or AMX; elsewhere autocast would only slow down
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def uses_bf16(cfg: TrainConfig) -> bool:
    """bf16 autocast: when asked for, or with dtype=auto where the hardware runs bf16 natively."""
    return cfg.dtype == "bf16" or (cfg.dtype == "auto" and bf16_supported(cfg.device))


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


def load_tasks(cfg: TrainConfig) -> tuple[dict, dict, dict]:
    """-> (train, validation, evaluation) datasets, each {task: LabelledTexts}; tasks are 'a' and 'b'."""
    names = {"a": cfg.task_a} | ({} if cfg.task_b == "none" else {"b": cfg.task_b})
    train, val, final = {}, {}, {}
    for task, name in names.items():
        full = data.load(name, "train", cfg.data_dir)
        if cfg.max_train and len(full) > cfg.max_train:
            full, _ = split_off(full, 1 - cfg.max_train / len(full), cfg.seed + 1)
        train[task], val[task] = split_off(full, cfg.val_fraction, cfg.seed)
        final[task] = data.load(name, data.EVAL_SPLIT[name], cfg.data_dir)
    return train, val, final


@torch.no_grad()
def predict(model: MultiTaskModel, tokenizer, texts: list[str], task: str, batch_size: int = 64,
            autocast: bool = False) -> torch.Tensor:
    """Class probabilities (N, classes) for one task, in input order."""
    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer.encode(texts)
    probs = torch.empty(len(ids), model.heads[task][-1].out_features)
    for rows in length_sorted_batches(ids, batch_size):
        batch = tokenizer.pad([ids[i] for i in rows])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            emb = model.embed(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            logits = model.heads[task](emb)
        probs[rows] = logits.float().softmax(-1).cpu()
    return probs


def accuracies(model, tokenizer, tasks: dict[str, data.LabelledTexts], autocast: bool) -> dict[str, float]:
    return {f"acc_{task}": float((predict(model, tokenizer, ds.texts, task, autocast=autocast).argmax(-1)
                                  == torch.tensor(ds.labels)).float().mean()) for task, ds in tasks.items()}


def lr_lambda(total_steps: int, warmup_steps: int):
    """Linear warmup from 0, then linear decay to 0 at the last step."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def save_atomic(write, path: Path) -> None:
    """Write to a temporary name, then rename: a crash never leaves a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(out: Path, name: str, model, optimizer, scheduler, sampler, progress: dict) -> None:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_atomic(lambda p: save_file(state, p), out / f"{name}.safetensors")
    if name == "last":
        save_atomic(lambda p: torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                          "sampler": sampler.state_dict(), "torch_rng": torch.get_rng_state(),
                                          "progress": progress}, p), out / "state.pt")


def train(cfg: TrainConfig, model: MultiTaskModel, tokenizer, train_sets: dict, val_sets: dict,
          resume: bool = False) -> dict:
    """The loop. Returns the best validation metrics; writes checkpoints into cfg.out."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    use_bf16 = uses_bf16(cfg)
    model.to(device)

    pools = data.make_pools(train_sets)
    sampler = data.MultiTaskSampler([len(p) for p in pools], cfg.batch_size, cfg.temperature, cfg.seed)
    total_steps = cfg.epochs * len(sampler)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    unfreezer = freeze.apply(model, cfg.freeze)
    groups = lr_groups.build(model, cfg.lr_groups, base_lr=cfg.lr, head_lr=cfg.head_lr, weight_decay=cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups)
    print(freeze.summary(model) + "\n" + lr_groups.table(groups), file=sys.stderr)  # before warmup scales the lrs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, int(cfg.warmup * total_steps)))
    class_weights = ({t: balanced_class_weights(ds.labels, len(ds.label_names)) for t, ds in train_sets.items()}
                     if cfg.class_weights else None)

    progress = {"epoch": 0, "step": 0, "best": -1.0, "best_metrics": {}, "unfrozen": 0}
    if resume:
        model.load_state_dict(load_file(out / "last.safetensors", device=str(device)))
        state = torch.load(out / "state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        progress = state["progress"]
        if unfreezer:
            unfreezer.catch_up(progress["unfrozen"])
        print(f"resumed {out} at epoch {progress['epoch']}, step {progress['step']}", file=sys.stderr)

    trainable = any(p.requires_grad for p in model.parameters())
    if not trainable:
        print("nothing is trainable (freeze=all): one evaluation, no training", file=sys.stderr)
    caches = None
    if trainable and not cfg.no_cache and unfreezer is None and frozen_prefix(model) > 0:
        caches = [FeatureCache(model, tokenizer, pool.texts, autocast=use_bf16) for pool in pools]
        progress["cache_s"] = round(sum(c.seconds for c in caches), 1)
        print(f"feature cache: {sum(c.nbytes() for c in caches) / 1e6:.0f} MB of frozen-bottom outputs "
              f"in {progress['cache_s']} s", file=sys.stderr)
    start, tokens = time.time(), 0
    start_step = progress["step"]
    for epoch in range(progress["epoch"], cfg.epochs if trainable else progress["epoch"] + 1):
        if progress["step"] >= total_steps and trainable:
            break
        freeze.train_mode(model)
        epoch_start = time.time()
        for pool_idx, rows in sampler:
            if not trainable:
                break
            batch = data.collate(tokenizer, pools[pool_idx], rows)
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = caches[pool_idx].logits(model, rows) if caches else model(ids, mask)
            loss, per_task = multitask_loss(logits, batch["labels"], class_weights=class_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            scheduler.step()
            progress["step"] += 1
            tokens += int(mask.sum())
            step = progress["step"]
            if unfreezer and unfreezer.every_steps and step % unfreezer.every_steps == 0:
                unfreezer.unfreeze_next()
            if step % cfg.log_every == 0 or step == total_steps:
                elapsed = time.time() - start
                eta = elapsed / (step - start_step) * (total_steps - step)
                losses = " ".join(f"loss_{t}={v:.3f}" for t, v in per_task.items() if not math.isnan(v))
                print(f"epoch {epoch + 1} step {step}/{total_steps} {losses} lr={scheduler.get_last_lr()[0]:.2e} "
                      f"{tokens / elapsed:.0f} tok/s eta {eta / 60:.1f} min", file=sys.stderr, flush=True)
            if step >= total_steps:
                break
        progress["epoch"] = epoch + 1
        train_s = time.time() - epoch_start
        if unfreezer and not unfreezer.every_steps and (name := unfreezer.unfreeze_next()):
            print(f"gradual unfreezing: {name} now trains", file=sys.stderr)
        progress["unfrozen"] = unfreezer.unfrozen if unfreezer else 0
        metrics = accuracies(model, tokenizer, val_sets, use_bf16) if val_sets else {}
        score = float(np.mean(list(metrics.values()))) if metrics else float(progress["step"])
        record = {"epoch": epoch + 1, "step": progress["step"], "elapsed_s": round(time.time() - start, 1),
                  "train_s": round(train_s, 1), "cache_s": progress.get("cache_s", 0),
                  **{f"val_{k}": round(v, 4) for k, v in metrics.items()}}
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"epoch {epoch + 1} done: {record}", file=sys.stderr, flush=True)
        if score > progress["best"]:
            progress["best"], progress["best_metrics"] = score, record
            save_checkpoint(out, "best", model, optimizer, scheduler, sampler, progress)
        save_checkpoint(out, "last", model, optimizer, scheduler, sampler, progress)
    return progress["best_metrics"]


def build(cfg: TrainConfig, train_sets: dict):
    """The pretrained encoder with one fresh head per task."""
    encoder = SentenceEncoder.from_pretrained()
    num_labels = {task: len(ds.label_names) for task, ds in train_sets.items()}
    model = MultiTaskModel(encoder.model, num_labels, normalize=cfg.normalize)
    return model, encoder.tokenizer


def write_run_info(cfg: TrainConfig, model: MultiTaskModel, train_sets: dict) -> None:
    from weights.fetch import weights_dir

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"config": asdict(cfg), "backbone": asdict(model.backbone.cfg),
            "tasks": {t: {"dataset": ds.name, "label_names": ds.label_names} for t, ds in train_sets.items()}}
    save_atomic(lambda p: p.write_text(json.dumps(info, indent=2)), out / "run.json")
    shutil.copyfile(weights_dir() / "tokenizer.json", out / "tokenizer.json")


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainConfig):
        kind = {"int": int, "float": float, "bool": None}.get(str(f.type), str)
        flag = "--" + f.name.replace("_", "-")
        if kind is None:
            parser.add_argument(flag, action="store_true", default=f.default)
        else:
            parser.add_argument(flag, type=kind, default=f.default, help=f"default: {f.default}")
    parser.add_argument("--resume", action="store_true", help="continue from --out's last checkpoint")
    args = vars(parser.parse_args(argv))
    resume = args.pop("resume")
    return TrainConfig(**args), resume


def main(argv: list[str] | None = None) -> None:
    cfg, resume = parse_args(argv)
    seed_everything(cfg.seed)
    try:
        train_sets, val_sets, final_sets = load_tasks(cfg)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    sizes = ", ".join(f"{t}={ds.name}: {len(ds)} train / {len(val_sets[t])} val / {len(final_sets[t])} "
                      f"{final_sets[t].split}" for t, ds in train_sets.items())
    print(f"tasks: {sizes}", file=sys.stderr)
    model, tokenizer = build(cfg, train_sets)
    write_run_info(cfg, model, train_sets)
    start = time.time()
    best = train(cfg, model, tokenizer, train_sets, val_sets, resume=resume)
    model.load_state_dict(load_file(Path(cfg.out) / "best.safetensors"))
    final = accuracies(model, tokenizer, final_sets, uses_bf16(cfg))
    result = {"out": cfg.out, "train_s": round(time.time() - start, 1), "best_epoch": best.get("epoch"),
              "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "peak_rss_mb": peak_rss_mb(), "cache_s": best.get("cache_s", 0), "epoch_train_s": best.get("train_s"),
              **{f"{k}_{final_sets[k[-1]].name}_{final_sets[k[-1]].split}": round(100 * v, 2) for k, v in final.items()}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
