"""The run folder (--out): what train.py checks before it starts, how it saves and resumes a run,
and what stops it cleanly.

    with locked(out):                                                    # one train.py per folder
        saved = check_before_start(out, resume, config, defaults, precision) # before anything loads
        check_resume_matches(saved, run_info(cfg, backbone, train_sets), out)  # --resume: same data
        start_fresh(out, run_info(...), tokenizer_file)                      # run.json, tokenizer.json
        restore(run)                                                         # --resume: last.safetensors
        with SignalGuard() as signals: ...                                   # SIGINT/SIGTERM/SIGHUP ...
            stop_if_signalled(run, signals)                                  # ... save, then stop
        save_best(run, record); save_last(run)                               # best and last checkpoints
        update_is_finite(run, loss, norm)                                    # the NaN guard: a non-finite step
    raise diverged(...)                                                  # the NaN guard's last word

It depends on nothing of the loop: the checks take plain values (dicts, paths, numbers), and saving
takes the run's state (train_state.Run). A run folder holds: run.json (config, label names, backbone
config, precision), tokenizer.json, best.safetensors (the best validation's weights), last.safetensors
(the whole resumable state in one atomic file: checkpoint.py), metrics.jsonl and losses.jsonl, and
test-a.jsonl / test-b.jsonl for a run on your own data (the rows eval.py scores later).
"""
from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import sys
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

import data
import recipes
from mpnet import MPNetConfig, checkpoint_names
from reliability import base_weights
from reliability.lock import InUse, holding
from reliability.checkpoint import (all_finite, disk_full, load_training_state, read_json_object,
                                    read_progress, save_training_state, save_weights, scratch_left_by,
                                    sync_folder, write_atomic)
from speed.hardware import describe, precision_of
from train_state import Progress, Run
from weights.fetch import weights_dir

# Flags that may change between a run and its resume: they do not change what is computed.
MAY_DIFFER_ON_RESUME = {"out", "data_dir", "device", "log_every", "save_every", "max_bad_steps", "overwrite",
                        "verbose"}
TEST_ROWS = "test-{task}.jsonl"  # your own data's test rows; run.json names the file for each task
# The files a run writes into its folder: the ones it may replace, and whose scratch it may remove.
OWNED = ("run.json", "tokenizer.json", "best.safetensors", "last.safetensors", "metrics.jsonl",
         "losses.jsonl", "state.pt", TEST_ROWS.format(task="a"), TEST_ROWS.format(task="b"))
REFIT = "refit"  # --refit's own run, inside the run folder (train.refit)


class Interrupted(Exception):
    """Raised after a SIGINT, SIGTERM or SIGHUP once the current step is done and the checkpoint is saved."""

    def __init__(self, signum: int, step: int, path: Path):
        super().__init__(f"{signal.Signals(signum).name} at step {step}; saved {path}")
        self.signum, self.step, self.path = signum, step, path


class Diverged(Exception):
    """Too many non-finite steps in a row, or non-finite weights: the run cannot usefully go on."""


def diverged(out: Path, step: int, bad_in_row: int, lrs: list[float]) -> Diverged:
    """The NaN guard's error: where it stopped, the learning rates, and the last good checkpoint."""
    last = read_progress(out / "last.safetensors")
    rates = ", ".join(f"{lr:.2e}" for lr in sorted(set(lrs)))
    return Diverged(f"stopped at step {step}: {bad_in_row} steps in a row had a non-finite loss or gradient norm "
                    f"(learning rates now {rates}). Last good checkpoint: "
                    + (f"{out / 'last.safetensors'} (step {last['step']})" if last else "none was saved")
                    + ". Lower --lr or check the data.")


FolderInUse = InUse  # another process holds the run folder's lock (reliability/lock.py)


@contextmanager
def locked(out: Path, enabled: bool = True) -> Iterator[None]:
    """An exclusive lock on the run folder while the run lasts (out/.lock, reliability/lock.py): a
    second train.py on the same --out, say a requeued job while the first is still in its grace
    period, is refused before it reads or writes anything there. enabled=False: a torchrun rank
    other than 0, whose rank 0 holds the lock."""
    if not enabled:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with holding(out / ".lock", out, owner="train.py", flag="--out"):
        yield


class SignalGuard:
    """While training: the first SIGINT, SIGTERM or SIGHUP asks the loop to stop after the current step
    (a half-done optimizer step is never saved); a second one exits at once, without saving.
    A scheduler or `docker stop` sends SIGTERM, then SIGKILL after a grace period: the grace
    period must cover one step plus one checkpoint write."""

    def __enter__(self) -> "SignalGuard":
        self.signum, self.previous = None, {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the ssh session dropped
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


def stop_if_signalled(run: Run, signals: SignalGuard) -> None:
    """After a step, or a validation, that a signal arrived during: save, then stop. torchrun sends a
    signal to every rank, not at the same instant: all stop if any got it."""
    if run.world.sum([float(signals.signum is not None)])[0] > 0:
        save_last(run)
        raise Interrupted(signals.signum or signal.SIGTERM, run.progress.step, run.out / "last.safetensors")


def check_finite(model, step: int, out: Path) -> None:
    """Non-finite weights are never saved: stop instead, pointing at the last good checkpoint. Only the
    trainable parameters are scanned: a frozen one never changes (a 110M-parameter scan a validation
    would be most of an epoch of heads on cached features)."""
    if not all_finite({name: p for name, p in model.named_parameters() if p.requires_grad}):
        raise Diverged(f"the weights became non-finite by step {step}; not saved. "
                       f"Last good checkpoint: {out / 'last.safetensors'}. Lower --lr.")


def check_before_start(out: Path, resume: bool, config: dict, defaults: dict, precision: str) -> dict | None:
    """Before anything loads: --resume needs a checkpoint and run.json with the same flags; a fresh
    run replaces neither an unfinished run nor a trained model (best.safetensors) unless the flags say
    --overwrite. Returns run.json's content on resume.

    config, defaults: the run's flags and their defaults (dataclasses.asdict of train.TrainConfig);
    precision: what --dtype means on this CPU, "fp32" or "bf16"."""
    last, info_path = out / "last.safetensors", out / "run.json"
    if not resume and not info_path.is_file() and not config.get("overwrite"):  # not a run folder:
        foreign = [name for name in OWNED if (out / name).exists()]
        if foreign:
            raise ValueError(f"{out} holds {', '.join(foreign)} but no run.json, so no train.py run wrote "
                             f"them, and a fresh run there would replace them; move them, or pick another --out")
    if not resume:
        progress = read_progress(last) if last.is_file() else None
        if progress and not progress.get("done"):
            raise ValueError(f"{out} holds an unfinished run (stopped at step {progress['step']}); continue it with "
                             f"--resume, or delete {out} or pick another --out to start over")
        if (out / "best.safetensors").is_file() and not config.get("overwrite"):
            raise ValueError(f"{out} holds a trained model (best.safetensors, {(out / 'best.safetensors').stat().st_size / 1e6:.0f} "
                             f"MB), which a fresh run there would replace; --overwrite replaces it, or pick another --out")
        return None
    if not last.is_file() or not info_path.is_file():
        missing = " and ".join(str(p.name) for p in (last, info_path) if not p.is_file())
        raise ValueError(f"--resume: {out} has no {missing}, so there is nothing to resume; "
                         f"run without --resume to start a fresh run there")
    info = read_json_object(info_path)
    # A run keeps the precision it started in (run.json's "precision"; older runs did not record it).
    # --dtype auto gives bf16 on one CPU and fp32 on another, so a run started with auto may resume
    # with the --dtype that names its own precision, and must where auto would now give the other.
    started_in = info.get("precision")
    if started_in and precision != started_in:
        raise ValueError(f"--resume: {out} trains in {started_in} (run.json), and --dtype {config['dtype']} gives "
                         f"{precision} on this CPU ({describe()}). A run keeps one precision: resume "
                         f"with --dtype {started_in}")
    # A flag missing from run.json did not exist when the run started: it ran with the default.
    saved = defaults | info["config"]
    diffs = [f"--{k.replace('_', '-')} {config[k]!r} (run.json: {saved.get(k)!r})" for k in config
             if k not in MAY_DIFFER_ON_RESUME and saved.get(k) != config[k] and not (k == "dtype" and started_in)]
    if diffs:
        raise ValueError(f"--resume: the flags differ from {info_path}: {'; '.join(diffs)}. Resume with the run's "
                         f"own flags, or start a fresh run with another --out")
    progress = read_progress(last)
    if progress is None:
        raise ValueError(f"--resume: {last} is not a train.py checkpoint; nothing was loaded")
    if progress.get("done") and not refit_pending(out, info["config"]):
        raise ValueError(f"--resume: {out} finished at step {progress['step']}; there is nothing left to train")
    return info


def summary(out: Path, final: dict[str, float], final_sets: dict, seconds: float, best_epoch) -> str:
    """The run's end in words: each task's test score by its dataset, where the model is and how
    much room it takes, and the commands that use it next."""
    lines = [f"finished in {seconds / 60:.1f} min; on the test rows, with the weights of the best "
             f"validation (epoch {best_epoch}):"]
    for key, value in final.items():  # acc_a, spearman_b, ...
        measure, task = key.rsplit("_", 1)
        ds = final_sets[task]
        name = {"acc": "accuracy", "spearman": "Spearman", "pearson": "Pearson", "acc1": "top-1 retrieval",
                "mrr10": "MRR@10"}.get(measure, measure)
        lines.append(f"  task {task} ({data.short_name(ds.name)}, {len(ds)} {ds.split} rows): {name} {100 * value:.2f}")
    size = folder_bytes(out)
    kind = "the whole model"
    if base_of(out):
        from safetensors import safe_open

        with safe_open(out / "best.safetensors", framework="pt") as f:
            saved = sum(k.startswith(base_weights.PREFIX) for k in f.keys())
        if saved < len(checkpoint_names(MPNetConfig(**read_json_object(out / "run.json")["backbone"]))):
            kind = "only what trained; the frozen rest is the base weights, pinned by sha256 in run.json"
    lines.append(f"the model is in {out} ({size / 1e6:,.1f} MB: {kind})")
    heads = [t for t, ds in final_sets.items() if isinstance(ds, data.LabelledTexts)]
    lines.append("next:")
    if heads:
        lines.append(f"  python predict.py --checkpoint {shlex.quote(str(out))} \"a sentence to classify\"")
        lines.append(f"  python eval.py --checkpoint {shlex.quote(str(out))}")
    lines.append(f"  python -m tools.export {shlex.quote(str(out))} exported/   # a sentence-transformers folder")
    return "\n".join(lines)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def announce_next_free(first: Path, chosen: Path) -> None:
    """When `python train.py` moves on to runs/default-N, say so, and how much room the earlier runs take."""
    if chosen == first:
        return
    earlier = [first] + [p for p in sorted(first.parent.glob(f"{first.name}-*")) if p != chosen and p.is_dir()
                         and p.name[len(first.name) + 1:].isdigit()]
    size = sum(folder_bytes(p) for p in earlier)
    print(f"{first} holds an earlier run, so this one goes to {chosen}; the {len(earlier)} earlier "
          f"{first.name}* folders hold {size / 1e9:.2f} GB (delete the ones you no longer need, or "
          f"pass --out)", file=sys.stderr)


def next_free(out: Path) -> Path:
    """out itself if it holds no run, else the first of out-2, out-3, ... that holds none: running the
    default job twice keeps the first one's model (as Lightning's version_N folders do)."""
    candidate, n = out, 1
    while (candidate / "run.json").is_file() or (candidate / "best.safetensors").is_file():
        n += 1
        candidate = out.with_name(f"{out.name}-{n}")
    return candidate


def refit_pending(out: Path, config: dict) -> bool:
    """A run with --refit whose search finished but whose refit did not reach out/best.safetensors: its
    own run in out/refit/ is unfinished, or finished with its best.safetensors not yet moved out."""
    if not config.get("refit") or not config.get("val_fraction"):
        return False
    last = out / REFIT / "last.safetensors"
    progress = read_progress(last) if last.is_file() else None
    return not (progress and progress.get("done")) or (out / REFIT / "best.safetensors").is_file()


def keep_refit(out: Path) -> None:
    """The refit's best.safetensors becomes the run's: a rename, not a second 0.4 GB write; until it
    happens, refit_pending() says so, and a resume finishes it."""
    os.replace(out / REFIT / "best.safetensors", out / "best.safetensors")
    sync_folder(out)


def run_info(cfg, backbone, train_sets: dict) -> dict:
    """run.json: what eval.py and predict.py need to rebuild the model (the config, the backbone's
    config, each task's label names), and what a resume must match (data_sha256: the data files).
    "recipe" names the scenario whose defaults the command line used (recipes.py).
    cfg: the run's train_config.TrainConfig; backbone: its MPNetConfig."""
    tasks = {t: {"dataset": ds.name, "label_names": ds.label_names} if isinstance(ds, data.LabelledTexts)
             else {"dataset": ds.name, "pair_loss": ds.loss} for t, ds in train_sets.items()}
    for t, name in data.task_datasets(cfg).items():
        if data.is_user_file(name):
            tasks[t]["test_rows"] = TEST_ROWS.format(task=t)
    extra = [cfg.test_a, cfg.test_b, cfg.labels_a, cfg.labels_b]
    return {"config": asdict(cfg), "backbone": asdict(backbone), "tasks": tasks,
            "precision": precision_of(cfg.dtype, cfg.device),
            "recipe": recipes.recipe(cfg).name if cfg.recipe == "auto" else "none",
            "data_sha256": data.fingerprints(list(train_sets.values()), extra)}


@contextmanager
def locked_or_exit(out: Path, enabled: bool = True) -> Iterator[None]:
    """locked(), with a folder in use, or a full disk, reported in one line (exit 1)."""
    try:
        with locked(out, enabled):
            yield
    except FolderInUse as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        if (line := disk_full(e, "run the same command with --resume (or without, if no "
                                  "checkpoint was saved yet)")) is None:
            raise
        sys.exit(line)


def prepare(cfg, resume: bool, recipe_line: str = "") -> tuple[dict, dict, dict]:
    """Before the model loads: the flags against the folder (check_before_start), the seeds, the
    data (data.load_tasks), on --resume the data against run.json, and the run's first lines.
    -> (train, validation, test) sets. A problem exits in one line. cfg: a TrainConfig."""
    try:
        saved = check_flags(cfg, resume, defaults=type(cfg)())
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        train_sets, val_sets, final_sets = data.load_tasks(cfg)
        if resume:
            check_data(cfg, saved, train_sets)  # what the checkpoint was made from
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    sizes = ", ".join(f"{t}={ds.name}: {len(ds)} train / {len(val_sets.get(t, ()))} val / "
                      f"{len(final_sets[t])} {final_sets[t].split}" for t, ds in train_sets.items())
    print(f"tasks: {sizes}", file=sys.stderr)
    if recipe_line:
        print(recipe_line, file=sys.stderr)
    mode = "bf16 autocast" if precision_of(cfg.dtype, cfg.device) == "bf16" else "fp32"
    plain = "; --plain: no speed path" if cfg.plain else ""
    print(f"CPU: {describe()}; {mode} on {cfg.device}{plain}", file=sys.stderr)
    return train_sets, val_sets, final_sets


@contextmanager
def stop_cleanly(cfg, defaults: dict) -> Iterator[None]:
    """Around training: a signal's stop prints the command that resumes the run and exits with
    128 + the signal's number; the NaN guard's stop exits in one line. defaults: what the command
    line gives each flag not typed (recipes.scenario_defaults), which the command leaves out."""
    try:
        yield
    except Interrupted as e:
        command = resume_command(asdict(cfg), defaults)
        print(f"{e}\nresume with:\n  {command}", file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    except Diverged as e:
        sys.exit(f"error: {e}")


def check_flags(cfg, resume: bool, defaults) -> dict | None:
    """check_before_start for a TrainConfig (and its class's defaults); run.json's content on resume."""
    return check_before_start(Path(cfg.out), resume, asdict(cfg), asdict(defaults),
                              precision_of(cfg.dtype, cfg.device))


def check_data(cfg, saved: dict, train_sets: dict) -> None:
    """--resume: the run.json this run would write matches the saved one (check_resume_matches); the
    backbone's config is the fetched checkpoint's, with the flags' attention dropout."""
    backbone = replace(MPNetConfig.of_weights(), attention_probs_dropout_prob=cfg.attention_dropout)
    check_resume_matches(saved, run_info(cfg, backbone, train_sets), Path(cfg.out))


def start(cfg, backbone, train_sets: dict, final_sets: dict) -> None:
    """A fresh run's folder (start_fresh): run.json, the tokenizer, and the test rows of the tasks
    on your own data files. run.json pins the weights the backbone (an MPNet) came from, if it
    came from the weights folder: then the run saves only what trains (base_weights.py)."""
    test_rows = {t: final_sets[t] for t, name in data.task_datasets(cfg).items() if data.is_user_file(name)}
    info = run_info(cfg, backbone.cfg, train_sets)
    base = base_weights.reference(backbone)
    if base is not None:
        info["base_weights"] = base
    start_fresh(Path(cfg.out), info, weights_dir() / "tokenizer.json", test_rows)


def base_of(out: Path) -> dict | None:
    """run.json's base_weights, or None: no run.json (a test's loop), or a run that saves everything.
    A --refit's own run (out/refit) has its run's."""
    path = out / "run.json"
    if not path.is_file() and out.name == REFIT:
        path = out.parent / "run.json"
    return read_json_object(path).get("base_weights") if path.is_file() else None


def load_best(model, out: Path) -> None:
    """best.safetensors into the model, its frozen rest (if it saved only what trained) from the base."""
    from safetensors.torch import load_file

    weights = base_weights.complete(load_file(out / "best.safetensors"), base_of(out), model.backbone.cfg,
                                    str(out / "best.safetensors"))
    model.load_state_dict(weights)


def check_resume_matches(info: dict, now: dict, out: Path) -> None:
    """What sets the parameter shapes (tasks, label names, backbone config) must be what the run saved.
    now: the run.json this run would write."""
    diffs = [f"{key}: {now[key]} (run.json: {info.get(key)})" for key in ("tasks", "backbone") if info.get(key) != now[key]]
    if diffs:
        raise ValueError(f"--resume: the data or model differ from {out}/run.json: {'; '.join(diffs)}")
    # Each data file against the digest saved for it: the same path, or, when a --data-dir moved,
    # the same file name. Runs from before run.json recorded data_sha256 are not checked.
    saved = info.get("data_sha256")
    if saved is None:
        return
    by_name = {}
    for path, digest in saved.items():
        by_name.setdefault(Path(path).name, []).append(digest)
    for path, digest in now["data_sha256"].items():
        expected = [saved[path]] if path in saved else by_name.get(Path(path).name, list(saved.values()))
        if digest not in expected:
            raise ValueError(f"--resume: {path} is not the file the run started with (its sha256 differs "
                             f"from {out}/run.json's); the saved sampler positions would point at other "
                             f"rows. Restore the file, or start a fresh run with another --out")


def remove_scratch(folder: Path) -> None:
    """What a kill -9 during one of the run's own writes left (checkpoint.write_atomic), and nothing
    else: a fresh run and a resume, holding the folder's lock, remove it."""
    if not folder.is_dir():
        return
    for name in OWNED:
        for debris in scratch_left_by(folder / name):
            if debris.is_dir():
                shutil.rmtree(debris)
            else:
                debris.unlink()


def start_fresh(out: Path, info: dict, tokenizer_file: Path, test_rows: dict | None = None) -> None:
    """A fresh run: remove a finished run's outputs (check_before_start refuses unfinished ones), so that
    no file of the old run can be mistaken for the new one's; then write run.json, the tokenizer, and
    test_rows ({task: LabelledTexts}: your own data's test rows, which eval.py later scores)."""
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, out / REFIT):
        for name in ("best.safetensors", "last.safetensors", "metrics.jsonl", "losses.jsonl", "state.pt"):
            (folder / name).unlink(missing_ok=True)
        remove_scratch(folder)
    write_atomic(lambda p: p.write_text(json.dumps(info, indent=2)), out / "run.json")
    write_atomic(lambda p: shutil.copyfile(tokenizer_file, p), out / "tokenizer.json")
    for task, ds in (test_rows or {}).items():
        if isinstance(ds, data.SentencePairs):  # the file's own columns, so that read_pairs reads it back
            names = data.SCORED_PAIR if ds.loss == "cosent" else data.POSITIVE_PAIR
            lines = "".join(json.dumps(dict(zip(names, row))) + "\n" for row in zip(ds.first, ds.second, ds.scores))
        else:
            lines = "".join(json.dumps({"text": t, "label": ds.label_names[y]}) + "\n"
                            for t, y in zip(ds.texts, ds.labels))
        write_atomic(lambda p: p.write_text(lines, encoding="utf-8"), out / TEST_ROWS.format(task=task))


def resume_command(config: dict, defaults: dict) -> str:
    """The command line that continues this run: every flag that differs from its default (defaults: what
    the same command line would give without it, the scenario's recipe included), then --resume."""
    words = ["python", "train.py"]
    for name, value in config.items():
        flag = name.replace("_", "-")
        if name == "out" or value == defaults[name]:
            continue
        if isinstance(value, bool):
            words.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            words += [f"--{flag}", str(value)]
    return shlex.join(words + ["--out", config["out"], "--resume"])


def save_jsonl(out: Path, name: str, records: list[dict]) -> None:
    lines = "".join(json.dumps(record) + "\n" for record in records)
    write_atomic(lambda p: p.write_text(lines), out / name)


# ----------------------------------------------------------------------------- the run's state on disk
def restore(run: Run) -> None:
    """--resume: the weights, optimizer, schedule, sampler, random state and progress of last.safetensors."""
    if run.world.main:
        remove_scratch(run.out)
    base_weights.check_unchanged(run.base, run.out)  # the frozen rest in memory is the run's base
    weights, optimizer_state, state = load_training_state(run.out / "last.safetensors")
    loaded = run.model.load_state_dict({k: v.to(run.device) for k, v in weights.items()}, strict=False)
    if loaded.unexpected_keys or (loaded.missing_keys and run.base is None):
        raise ValueError(f"--resume: {run.out}/last.safetensors does not fit this model (first difference: "
                         f"{(loaded.unexpected_keys + loaded.missing_keys)[0]})")
    run.optimizer.load_state_dict(optimizer_state)
    run.scheduler.load_state_dict(state["scheduler"])
    run.sampler.load_state_dict(state["sampler"])
    rngs, rank = state["torch_rng"], run.world.rank  # one per rank; more processes now re-use rank 0's
    torch.set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    run.progress = Progress.from_dict(state["progress"])
    if run.unfreezer:
        run.unfreezer.catch_up(run.progress.unfrozen)
    print(f"resumed {run.out} at epoch {run.progress.epoch + 1}, step {run.progress.step}", file=sys.stderr)


def save_last(run: Run) -> None:
    """The resumable state as one atomic file, then metrics.jsonl and losses.jsonl rewritten from the
    saved history, so they always agree with it."""
    check_finite(run.model, run.progress.step, run.out)
    run.progress.unfrozen = run.unfreezer.unfrozen if run.unfreezer else 0
    rng_states = run.world.gather(torch.get_rng_state())  # every rank takes part; rank 0 alone writes
    if not run.world.main:
        return
    if run.unsaved_best is not None:  # best first: last.safetensors's record of the best must exist on disk
        write_best(run, run.unsaved_best)
    save_training_state(run.out / "last.safetensors", run.model, run.optimizer, run.scheduler, run.sampler,
                        asdict(run.progress), rng_states, weights=base_weights.trained_part(run.model, run.base))
    save_jsonl(run.out, "metrics.jsonl", run.progress.history)
    save_jsonl(run.out, "losses.jsonl", run.progress.losses)


def save_best(run: Run, record: dict) -> None:
    """best.safetensors: the weights alone, for eval.py and predict.py. With --save-every, kept in
    memory and written with the next save_last(): a new best may come every few seconds (heads on
    cached features), and a resume goes back to last.safetensors, whose record of the best is then
    the one on disk."""
    check_finite(run.model, run.progress.step, run.out)
    run.progress.best_metrics = record
    if not run.world.main:
        return
    weights = base_weights.trained_part(run.model, run.base)  # all of it, unless the backbone is (partly) frozen
    if run.cfg.save_every:
        run.unsaved_best = {k: v.detach().clone() for k, v in weights.items()}
    else:
        write_best(run, weights)


def write_best(run: Run, weights: dict) -> None:
    metadata = {"epoch": str(run.progress.best_metrics["epoch"])}
    if run.base is not None:
        metadata["base_sha256"] = run.base["sha256"]
    save_weights(run.out / "best.safetensors", weights, metadata)
    run.unsaved_best = None


def update_is_finite(run: Run, loss: torch.Tensor, norm: torch.Tensor) -> bool:
    """The NaN guard, between clipping and the optimizer step: True if the loss and the gradient norm
    are finite on every process (one all-reduce under torchrun, so that all decide alike). Else the
    step makes no update (its batch is spent and the schedule advances, as a skipped mixed-precision
    step does), and --max-bad-steps such steps in a row stop the run."""
    progress, step = run.progress, run.progress.step + 1  # the step being taken
    bad = run.world.sum([float(not (torch.isfinite(loss) and torch.isfinite(norm)))])[0]
    if not bad:
        progress.bad_in_row = 0
        return True
    run.optimizer.zero_grad(set_to_none=True)
    progress.skipped += 1
    progress.bad_in_row += 1
    print(f"step {step}: non-finite loss or gradient norm, update skipped "
          f"({progress.bad_in_row} in a row, {progress.skipped} in all)", file=sys.stderr, flush=True)
    if progress.bad_in_row >= run.cfg.max_bad_steps:
        raise diverged(run.out, step, progress.bad_in_row, run.scheduler.get_last_lr())
    return False
