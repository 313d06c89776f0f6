"""Argument types for the command lines: each refuses a bad value with one line saying what is allowed.

argparse calls these while it parses, so a bad flag is reported before anything expensive (the
440 MB model, the data) is loaded:  `train.py: error: argument --batch-size: must be an integer >= 1, got '0'`.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path


def _number(kind, text: str, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def int_at_least(low: int):
    def parse(text: str) -> int:
        value = _number(int, text, f"an integer >= {low}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value
    return parse


def positive_float(text: str) -> float:
    value = _number(float, text, "a number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    value = _number(float, text, "a number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    value = _number(float, text, "a number in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def device(text: str) -> str:
    """cpu, cuda or cuda:N, and only a GPU that exists."""
    import torch

    if text == "cpu":
        return text
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r} asked for, but no CUDA GPU is visible; use cpu")
        if ":" in text and int(text[5:]) >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: only {torch.cuda.device_count()} GPU(s) visible")
        return text
    raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")


# ----------------------------------------------------------------------------- train.py's flags
TRAIN_FLAG_TYPES = {"epochs": int_at_least(1), "batch_size": int_at_least(1), "max_steps": int_at_least(0),
              "max_train": int_at_least(0), "per_class": int_at_least(0), "max_tokens": int_at_least(0),
              "max_val": int_at_least(0), "eval_every": int_at_least(0), "patience": int_at_least(0),
              "val_fraction": fraction, "test_fraction": fraction, "lr": positive_float, "head_lr": positive_float,
              "weight_decay": nonnegative_float, "warmup": fraction, "clip": positive_float,
              "attention_dropout": fraction, "temperature": positive_float, "seed": int_at_least(0),
              "log_every": int_at_least(1), "save_every": int_at_least(0), "max_bad_steps": int_at_least(1),
              "device": device}
TRAIN_CHOICES = {"dtype": ["auto", "fp32", "bf16"], "schedule": ["linear", "constant"], "recipe": ["auto", "none"]}


def check_train_specs(cfg) -> None:
    """train.py's flags whose values are small languages: dataset names, files, --freeze, --lr-groups.
    Raises ValueError saying what is allowed; loads nothing."""
    import data
    import freeze
    import lr_groups
    from mpnet import MPNetConfig

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
    freeze.check_spec(cfg.freeze, MPNetConfig().num_hidden_layers, list(data.task_datasets(cfg)))
    if cfg.refit and cfg.freeze != "backbone":  # it restarts the heads alone: a trained backbone would stay trained
        raise ValueError(f"--refit fits fresh heads on a frozen backbone, so it needs --freeze backbone, not {cfg.freeze}")
    lr_groups.check_spec(cfg.lr_groups)
