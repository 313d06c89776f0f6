"""Argument types for the command lines: each refuses a bad value with one line saying what is allowed.

argparse calls these while it parses, so a bad flag is reported before anything expensive (the
440 MB model, the data) is loaded:  `train.py: error: argument --batch-size: must be an integer >= 1, got '0'`.
"""
from __future__ import annotations

import argparse
import math


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


def score_range(text: str) -> str:
    """LOW:HIGH, two finite numbers with LOW < HIGH: the range a pair file's scores must lie in."""
    low, sep, high = text.partition(":")
    what = "LOW:HIGH, two numbers with LOW < HIGH (say 0:1 or 0:5)"
    if not sep or _number(float, low, what) >= _number(float, high, what):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return text
