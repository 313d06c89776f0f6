"""int8 for a fine-tuned run, kept only where it agrees with fp32 (predict.py --dtype auto).

    model, precision, why = int8_check.choose(folder, model, tokenizer, info, dtype="auto", reload=...)

The encoder's int8 path (quant.py) was calibrated and measured on the pretrained model (STS-B). A
fine-tuned backbone has other weights, and a head can sit close to a decision boundary, so before
a run's backbone is served in int8 it is checked on that run's own test rows: the rows it saved (your
own data), or the built-in dataset's split that train.py reports (the test split; SST-2's dev set).
int8 is kept if it gives the same label as fp32 on at least 99.5% of the rows and each task's accuracy
moves by at most 0.3 points. Otherwise, on a CPU that runs bf16 natively, bf16 autocast takes the same
check (it rounds far less: experiments/predict_int8.md), and serves the run if it passes; else fp32.
The reason is printed. Each verdict is cached in the run folder (int8-check.json, bf16-check.json),
keyed by the sha256 of best.safetensors, so a check runs once per trained model.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

AGREEMENT = 0.995     # the same label as fp32 on at least this share of the test rows
ACCURACY_DROP = 0.3   # points of accuracy a task may lose
CHECK_FILE = "int8-check.json"
BF16_CHECK_FILE = "bf16-check.json"


@dataclass
class Verdict:
    best_sha256: str
    rows: int
    agreement: float                            # share of (row, task) labels it and fp32 agree on
    accuracy: dict[str, tuple[float, float]]    # task -> (fp32, it) accuracy in %
    passed: bool
    precision: str = "int8"                     # what was checked against fp32: int8, or bf16 (autocast)

    def summary(self) -> str:
        tasks = ", ".join(f"{t} {a:.2f} -> {b:.2f}" for t, (a, b) in self.accuracy.items())
        return (f"{self.precision} agrees with fp32 on {100 * self.agreement:.2f}% of {self.rows:,} test rows (needs "
                f"{100 * AGREEMENT:.1f}%); accuracy fp32 -> {self.precision}: {tasks} (may drop {ACCURACY_DROP} points)")


def judge(best_sha256: str, fp32: dict[str, np.ndarray], int8: dict[str, np.ndarray],
          truth: dict[str, np.ndarray], precision: str = "int8") -> Verdict:
    """The verdict from each task's fp32 labels, the other precision's (int8: named so) and the true labels."""
    same = sum(int((fp32[t] == int8[t]).sum()) for t in truth)
    total = sum(len(truth[t]) for t in truth)
    accuracy = {t: (100 * float((fp32[t] == truth[t]).mean()), 100 * float((int8[t] == truth[t]).mean())) for t in truth}
    passed = same / total >= AGREEMENT and all(a - b <= ACCURACY_DROP for a, b in accuracy.values())
    return Verdict(best_sha256, total, same / total, accuracy, passed, precision)


def test_sets(folder: Path, info: dict) -> dict:
    """{task: LabelledTexts} to check on: the saved test rows, else the split of the built-in dataset that
    train.py reports the run on (data.EVAL_SPLIT: SST-2's dev set, since GLUE's test labels are hidden)."""
    import data

    sets = {}
    for task, spec in info["tasks"].items():
        if "pair_loss" in spec:  # no head: its agreement is the embedding's, which the heads' check covers
            continue
        if "test_rows" in spec:
            rows = data.read_user_rows(folder / spec["test_rows"], "text", "label")
            sets[task] = data.user_dataset(folder / spec["test_rows"], rows, spec["label_names"], "test")
        else:
            ds = data.load(spec["dataset"], data.EVAL_SPLIT[spec["dataset"]])
            if ds.label_names != spec["label_names"]:
                raise ValueError(f"{spec['dataset']}'s {ds.split} labels differ from the head's")
            sets[task] = ds
    return sets


def labels(model, tokenizer, sets: dict, autocast: bool = False) -> dict[str, np.ndarray]:
    return {task: model.predict_proba(tokenizer, ds.texts, autocast=autocast)[task].argmax(dim=1).numpy()
            for task, ds in sets.items()}


def is_int8(model) -> bool:
    from speed.quant import Int8Linear

    return any(isinstance(m, Int8Linear) for m in model.modules())


def quantize_backbone(model, tokenizer):
    """quant.quantize on the run's backbone, in place (the heads stay fp32). Returns the model."""
    from mpnet import SentenceEncoder
    from speed.quant import quantize

    quantize(SentenceEncoder(model.backbone, tokenizer))
    return model


def cached(path: Path, best_sha256: str) -> Verdict | None:
    """The verdict saved at path for this best.safetensors, else None. A file that is not one this
    check wrote, or whose `passed` its own numbers do not give, is set aside with one line."""
    if not path.is_file():
        return None
    try:
        verdict = Verdict(**json.loads(path.read_text()))
        drops = [a - b for a, b in verdict.accuracy.values()]
        consistent = verdict.passed is (verdict.agreement >= AGREEMENT and all(d <= ACCURACY_DROP for d in drops))
    except (ValueError, TypeError, AttributeError, RecursionError):  # (JSONDecodeError is a ValueError)
        consistent = False
    if not consistent:
        print(f"{path}: not a verdict this check wrote (its numbers do not give its 'passed'); checking again",
              file=sys.stderr)
        return None
    return verdict if verdict.best_sha256 == best_sha256 else None


def keep(verdict: Verdict, path: Path) -> None:
    """Cache the verdict in the run folder; a folder you cannot write (read-only) only costs a check
    next time."""
    from reliability.checkpoint import write_atomic

    try:
        write_atomic(lambda p: p.write_text(json.dumps(asdict(verdict), indent=1)), path)
    except OSError as e:
        print(f"cannot keep the verdict in {path} ({e.strerror}); it is checked again next time", file=sys.stderr)


def choose(folder: str | Path, model, tokenizer, info: dict, dtype: str, reload: Callable[[], object]):
    """(model, precision, why): the run's model and how to serve it, "fp32", "int8" or "bf16" (autocast).
    dtype "fp32", "int8" (as asked, not checked) or "auto": int8 where it is fast and agrees with fp32 on the
    run's test rows, else bf16 where it is native and agrees, else fp32. reload() gives the run's fp32 model
    again (quantisation works in place)."""
    from speed.hardware import encoder_precision, native_bf16
    from weights.fetch import sha256_of

    folder = Path(folder)
    precision, why = encoder_precision(dtype)
    if precision != "int8":
        return model, "fp32", f"fp32 ({why})"
    if dtype == "int8":
        return quantize_backbone(model, tokenizer), "int8", "int8, as asked (not checked against fp32)"
    best = sha256_of(folder / "best.safetensors")
    int8, bf16 = cached(folder / CHECK_FILE, best), cached(folder / BF16_CHECK_FILE, best)
    try_bf16 = native_bf16()
    int8_model = None  # the model a fresh check quantised: served as it is if int8 passes
    if int8 is None or (not int8.passed and try_bf16 and bf16 is None):
        try:
            sets = test_sets(folder, info)
        except (ValueError, FileNotFoundError) as e:
            return model, "fp32", f"fp32: no test rows to check int8 against ({e})"
        truth = {t: np.array(ds.labels) for t, ds in sets.items()}
        fp32 = labels(model, tokenizer, sets)
        if int8 is None:
            int8_model = quantize_backbone(reload(), tokenizer)
            int8 = judge(best, fp32, labels(int8_model, tokenizer, sets), truth)
            keep(int8, folder / CHECK_FILE)
        if not int8.passed and try_bf16 and bf16 is None:
            bf16 = judge(best, fp32, labels(model, tokenizer, sets, autocast=True), truth, precision="bf16")
            keep(bf16, folder / BF16_CHECK_FILE)
    if int8.passed:
        if int8_model is None:  # the cached verdict: quantise now
            int8_model = quantize_backbone(model, tokenizer)
        return int8_model, "int8", f"int8: {int8.summary()}"
    if try_bf16 and bf16.passed:
        return model, "bf16", f"bf16 autocast, int8 did not pass: {int8.summary()}; {bf16.summary()}"
    nor_bf16 = f"; nor did bf16: {bf16.summary()}" if try_bf16 else ""
    return model, "fp32", f"fp32, int8 did not pass: {int8.summary()}{nor_bf16}"
