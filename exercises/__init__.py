"""Learn it by rebuilding it: thirteen exercises checked against the real model, and find-the-bug drills.

    python -m exercises                  # the list
    python -m exercises check bucket     # check exercises/yours/bucket.py (made from the stub on first use)
    python -m exercises reset [NAME]     # the stubs back (what you wrote is kept as NAME.py.bak)
    python -m exercises drill 1          # a model with one bug: find it (exercises/README.md)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from exercises import checks


@dataclass(frozen=True)
class Exercise:
    name: str           # the file: exercises/stubs/NAME.py, your copy exercises/yours/NAME.py
    function: str       # the function you write there
    reference: str      # the project's own, which the check compares against
    title: str
    check: Callable[[Callable], str]


# In the design's order: the encoder (mpnet.py), the heads and the pair losses, freezing, layer-wise
# learning rates.
EXERCISES = [
    Exercise("position_ids", "position_ids_from", "mpnet.position_ids_from",
             "position ids from padding", checks.check_position_ids),
    Exercise("bucket", "relative_position_bucket", "mpnet.relative_position_bucket",
             "the relative-position bucket", checks.check_bucket),
    Exercise("mask", "attention_mask", "mpnet.MPNet.attention_mask",
             "the attention mask: relative position bias plus padding", checks.check_mask),
    Exercise("attention", "attend", "mpnet.SelfAttention.attend",
             "attention written out, with the mask", checks.check_attention),
    Exercise("layer", "forward", "mpnet.Layer.forward",
             "one post-LN layer", checks.check_layer),
    Exercise("pooling", "mean_pool", "mpnet.mean_pool",
             "mean pooling", checks.check_pooling),
    Exercise("names", "checkpoint_names", "mpnet.checkpoint_names",
             "the checkpoint name map", checks.check_names),
    Exercise("loss", "multitask_loss", "heads.multitask_loss",
             "the multi-task loss, missing labels ignored", checks.check_loss),
    Exercise("cosent", "cosent_loss", "heads.cosent_loss",
             "CoSENT: the loss of scored pairs", checks.check_cosent),
    Exercise("in_batch", "in_batch_negatives_loss", "heads.in_batch_negatives_loss",
             "in-batch negatives: the loss of positive pairs", checks.check_in_batch),
    Exercise("top_k", "unfreeze_top", "freeze.unfreeze_top",
             "top-k freezing", checks.check_top_k),
    Exercise("gradual", "unfreeze_next", "freeze.GradualUnfreezer.unfreeze_next",
             "the gradual unfreezing schedule", checks.check_gradual),
    Exercise("llrd", "build", "lr_groups.build",
             "layer-wise LR decay as parameter groups", checks.check_llrd),
]
BY_NAME = {e.name: e for e in EXERCISES}


@dataclass(frozen=True)
class Outcome:
    passed: bool
    message: str


def run(exercise: Exercise, fn: Callable) -> Outcome:
    """Check fn as the exercise's function: a pass with the figure it matched, or what is wrong and where."""
    import traceback

    try:
        return Outcome(True, exercise.check(fn))
    except checks.Mistake as e:
        return Outcome(False, str(e))
    except NotImplementedError:
        return Outcome(False, f"{exercise.function} is not written yet (it raises NotImplementedError)")
    except Exception as e:  # the learner's code raised: say where in their file
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == fn.__code__.co_filename]
        where = f" at line {frames[-1].lineno} of your file: {frames[-1].line}" if frames else ""
        return Outcome(False, f"{exercise.function} raised {type(e).__name__}: {e}{where}")
