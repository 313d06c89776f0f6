"""train.py's flags: TrainConfig, one field a flag, and the command line made from its fields.

    cfg, resume, recipe_line = parse_args(["--task-a", "banking77", "--freeze", "top-4"])

A field's metadata holds what its flag accepts: an argument type from reliability/flags.py, which
refuses a bad value in one line before anything loads, or a list of choices. parse_args reads them,
so this file is the one flag table. Then the scenario's recipe (recipes.py) fills the flags that
were not typed, and check_specs checks the flags whose values are small languages.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import data
import freeze
import lr_groups
import recipes
from mpnet import MPNetConfig
from reliability import run_folder
from reliability.flags import (device, fraction, int_at_least, nonnegative_float, positive_float,
                               score_range)
from speed.hardware import precision_of


def flag(default, parse: Callable[[str], object] | None = None, choices: list[str] | None = None):
    """A TrainConfig field whose flag is parsed by `parse`, or limited to `choices`."""
    return field(default=default, metadata={"parse": parse, "choices": choices})


@dataclass
class TrainConfig:
    """train.py's flags: each field is one (--task-a, --head-lr, ...), and its default the flag's
    default unless the scenario's recipe (recipes.py) fills it. run.json records them all."""
    task_a: str = "reviews-topic"       # a built-in dataset, or your own .csv/.tsv/.jsonl file
    task_b: str = "reviews-sentiment"   # the same; "none": train Task A alone
    data_dir: str | None = None
    text_column: str = "text"           # your own files: the column holding the text ...
    label_column_a: str = "label"       # ... and each task's label column (one file may hold both)
    label_column_b: str = "label"
    labels_a: str | None = None         # a file of Task A's labels, one a line (default: those seen)
    labels_b: str | None = None
    test_a: str | None = None           # a test file for Task A (default: a split of its file)
    test_b: str | None = None
    # a pair file's scores lie in this range (sentence-transformers' convention: 0 to 1)
    score_range: str = flag("0:1", parse=score_range)
    # the split's test share; its rows are saved in --out as test-a.jsonl
    test_fraction: float = flag(0.2, parse=fraction)
    epochs: int = flag(3, parse=int_at_least(1))
    batch_size: int = flag(16, parse=int_at_least(1))
    max_steps: int = flag(0, parse=int_at_least(0))    # > 0: stop after this many optimizer steps
    max_train: int = flag(0, parse=int_at_least(0))    # > 0: at most this many training rows a task
    per_class: int = flag(0, parse=int_at_least(0))    # > 0: few-shot, K seeded rows of each label
    max_tokens: int = flag(0, parse=int_at_least(0))   # > 0: stop after this many real tokens
    val_fraction: float = flag(0.1, parse=fraction)    # held out from train to pick the best epoch
    max_val: int = flag(0, parse=int_at_least(0))      # > 0: validate on at most this many a task
    lr: float = flag(3e-5, parse=positive_float)       # backbone
    head_lr: float = flag(1e-3, parse=positive_float)
    weight_decay: float = flag(0.01, parse=nonnegative_float)
    warmup: float = flag(0.1, parse=fraction)          # fraction of all steps
    # after warmup: linear (decay to 0 at the last step) | constant
    schedule: str = flag("linear", choices=["linear", "constant"])
    clip: float = flag(1.0, parse=positive_float)
    # on the attention probabilities (the checkpoint's 0.1); 0: no masks to draw
    attention_dropout: float = flag(0.1, parse=fraction)
    temperature: float = flag(2.0, parse=positive_float)  # multi-task sampling: data.MultiTaskSampler
    class_weights: bool = False         # balanced class weights in each task's loss
    normalize: bool = False             # heads read the L2-normalised embedding
    freeze: str = "none"                # none | all | backbone | head:a | top-K | gradual[:STEPS]
    lr_groups: str = "flat"             # flat | tiers | llrd:DECAY | ulmfit, see lr_groups.py
    no_cache: bool = False              # don't cache the frozen bottom (speed/feature_cache.py)
    device: str = flag("cpu", parse=device)
    dtype: str = flag("auto", choices=["auto", "fp32", "bf16"])  # bf16: autocast
    seed: int = flag(0, parse=int_at_least(0))
    eval_every: int = flag(0, parse=int_at_least(0))   # > 0: also validate every N steps
    patience: int = flag(0, parse=int_at_least(0))     # > 0: stop after N validations with no best
    log_every: int = flag(10, parse=int_at_least(1))
    save_every: int = flag(0, parse=int_at_least(0))   # > 0: save last.safetensors every N steps
    max_bad_steps: int = flag(5, parse=int_at_least(1))  # this many non-finite steps in a row stop
    plain: bool = False                 # exactly the code in train.py: no speed path
    verbose: bool = False               # print the full freezing and learning-rate tables
    refit: bool = False                 # after early stopping: fresh heads on train + validation
    # auto: the command line fills the flags not typed from recipes.py; none: it does not
    recipe: str = flag("auto", choices=["auto", "none"])
    out: str = "runs/default"           # not typed, and runs/default holds a run: runs/default-N
    overwrite: bool = False             # a fresh run may replace the trained model in --out


def precision(cfg: TrainConfig) -> str:
    """What --dtype means on this machine: "bf16" (autocast) or "fp32". auto: bf16 where the CPU runs
    it natively, else fp32 (speed/hardware.py); so auto differs from one CPU to the next."""
    return precision_of(cfg.dtype, cfg.device)


def parse_args(argv: list[str] | None = None, description: str | None = None
               ) -> tuple[TrainConfig, bool, str]:
    """Flags from TrainConfig's fields, each checked here, before any data or weights load; then the
    scenario's recipe in the flags not given. -> (config, --resume, the recipe's line)."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainConfig):  # a flag not typed stays absent (SUPPRESS): the recipe may fill it
        name = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        else:
            parser.add_argument(name, type=f.metadata.get("parse") or str, default=argparse.SUPPRESS,
                                choices=f.metadata.get("choices"), help=f"default: {f.default}")
    parser.add_argument("--resume", action="store_true", help="continue --out's last checkpoint (same flags)")
    given = vars(parser.parse_args(argv))
    resume = given.pop("resume")
    cfg, recipe_line = recipes.with_recipe(TrainConfig(**given), given=set(given))
    if "out" not in given and not resume:  # keep the model of an earlier `python train.py`
        first = Path(cfg.out)
        cfg = replace(cfg, out=str(run_folder.next_free(first)))
        run_folder.announce_next_free(first, Path(cfg.out))
    try:
        check_specs(cfg)
    except ValueError as e:
        parser.error(str(e))
    return cfg, resume, recipe_line


def check_specs(cfg: TrainConfig) -> None:
    """The flags whose values are small languages: dataset names, files, --freeze, --lr-groups.
    Raises ValueError saying what is allowed; loads nothing."""
    for name, value in (("--task-a", cfg.task_a), ("--task-b", cfg.task_b)):
        if data.is_user_file(value):
            if not Path(value).is_file():
                raise ValueError(f"argument {name}: no file {value}")
        elif value not in data.DATASETS | data.PAIR_DATASETS and not (name == "--task-b" and value == "none"):
            raise ValueError(f"argument {name}: unknown dataset {value!r}; known: "
                             f"{', '.join(data.DATASETS | data.PAIR_DATASETS)}"
                             + (", none" if name == "--task-b" else "")
                             + f", or a path to your own {'/'.join(data.USER_FORMATS)} file")
    for name, path in (("--labels-a", cfg.labels_a), ("--labels-b", cfg.labels_b),
                       ("--test-a", cfg.test_a), ("--test-b", cfg.test_b)):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"argument {name}: no file {path}")
    if (cfg.test_a and not data.is_user_file(cfg.task_a)) or (cfg.test_b and not data.is_user_file(cfg.task_b)):
        raise ValueError("--test-a/--test-b go with your own data files; built-in datasets bring "
                         "their test split")
    spec, heads = freeze.parse(cfg.freeze, MPNetConfig().num_hidden_layers), data.task_datasets(cfg)
    if spec.head is not None and spec.head not in heads:
        raise ValueError(f"--freeze {cfg.freeze}: no head named {spec.head!r}; heads: {', '.join(heads)}")
    pairs = [task for task, name in heads.items() if data.is_pair_task(name, cfg.text_column)]
    if pairs and spec.name in ("all", "backbone"):  # a pair task's only parameters are the backbone's
        raise ValueError(f"--freeze {cfg.freeze}: task {pairs[0]} is a pair task, which trains the "
                         f"embedding itself; it needs the backbone to train (try top-K or none)")
    if spec.head in pairs:
        raise ValueError(f"--freeze {cfg.freeze}: task {spec.head} is a pair task and has no head")
    if cfg.refit and spec.name != "backbone":  # it restarts the heads alone: the backbone stays
        raise ValueError(f"--refit fits fresh heads on a frozen backbone, so it needs --freeze "
                         f"backbone, not {cfg.freeze}")
    lr_groups.parse(cfg.lr_groups)
