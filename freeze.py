"""Freezing scenarios: which parts of a MultiTaskModel train.

    # spec: none | all | backbone | head:NAME | top-K | gradual[:N]
    unfreezer = freeze.apply(model, spec, epoch_steps, planned_steps)
    print(freeze.summary(model))

A frozen parameter has requires_grad=False: autograd records nothing for a part whose
parameters are all frozen (when its input needs no gradient either), and the optimizer
skips it (its .grad stays None), so it stays bit-identical. `train_mode()` also puts
fully frozen parts in eval mode, so they run without dropout.
"""
from __future__ import annotations

from torch import nn

from heads import MultiTaskModel


def backbone_groups(model: MultiTaskModel) -> list[tuple[str, list[nn.Parameter]]]:
    """The backbone's parameters in unfreezing units, bottom to top: embeddings (with the
    relative position bias, which every layer reads), then each encoder layer."""
    backbone = model.backbone
    groups = [("embeddings", list(backbone.embeddings.parameters()) + [backbone.relative_bias])]
    groups += [(f"layer.{i}", list(layer.parameters())) for i, layer in enumerate(backbone.layers)]
    return groups


def set_trainable(params, trainable: bool) -> None:
    for p in params:
        p.requires_grad_(trainable)


def freeze_all(model: MultiTaskModel) -> None:
    """Nothing trains, heads included: the model is a fixed feature extractor (use: inference, baselines)."""
    set_trainable(model.parameters(), False)


def freeze_backbone(model: MultiTaskModel) -> None:
    """Only the heads train (use: little labelled data or compute; the pretrained embedding already fits)."""
    set_trainable(model.backbone.parameters(), False)
    set_trainable(model.heads.parameters(), True)


def freeze_head(model: MultiTaskModel, task: str) -> None:
    """One head is kept as it is while the backbone and the other heads adapt (use: adding or
    improving one task without disturbing a head that already works)."""
    if task not in model.heads:
        raise ValueError(f"no head named {task!r}; heads: {', '.join(model.heads)}")
    set_trainable(model.parameters(), True)
    set_trainable(model.heads[task].parameters(), False)


def unfreeze_top(model: MultiTaskModel, k: int) -> None:
    """Heads and the top k encoder layers train (use: adapt the task-specific upper layers,
    keep the general lower ones; far cheaper than full fine-tuning)."""
    groups = backbone_groups(model)
    if not 0 <= k < len(groups):
        raise ValueError(f"top-{k}: k must be between 0 and {len(groups) - 1} (the encoder's layers)")
    freeze_backbone(model)
    for _, params in groups[len(groups) - k:]:
        set_trainable(params, True)


class GradualUnfreezer:
    """ULMFiT's gradual unfreezing: start with only the heads training, then unfreeze one more
    layer group from the top every `every_steps` steps, down to the embeddings.
    (use: small data, where unfreezing everything at once would wash out pretrained features)."""

    def __init__(self, model: MultiTaskModel, every_steps: int):
        self.groups = backbone_groups(model)
        self.every_steps = every_steps
        self.unfrozen = 0
        freeze_backbone(model)

    def unfreeze_next(self) -> str | None:
        """Unfreeze the next group down; returns its name (None when all are unfrozen)."""
        if self.unfrozen == len(self.groups):
            return None
        self.unfrozen += 1
        name, params = self.groups[len(self.groups) - self.unfrozen]
        set_trainable(params, True)
        return name

    def catch_up(self, count: int) -> None:
        """After a resume: unfreeze as many groups as the interrupted run had."""
        while self.unfrozen < count and self.unfreeze_next():
            pass


def check_spec(spec: str, num_layers: int, tasks: list[str]) -> None:
    """Raise ValueError with what is allowed unless spec names a scenario for this model (no model needed)."""
    if spec in ("none", "all", "backbone", "gradual") or (spec.startswith("gradual:") and spec[8:].isdigit()
                                                           and int(spec[8:]) > 0):
        return
    if spec.startswith("head:"):
        if spec[5:] not in tasks:
            raise ValueError(f"--freeze {spec}: no head named {spec[5:]!r}; heads: {', '.join(tasks)}")
        return
    if spec.startswith("top-") and spec[4:].isdigit():
        if not 0 <= int(spec[4:]) <= num_layers:
            raise ValueError(f"--freeze {spec}: K must be between 0 and {num_layers} (the encoder's layers)")
        return
    raise ValueError(f"--freeze: unknown spec {spec!r}; use none, all, backbone, head:NAME, top-K (K <= {num_layers}), "
                     f"gradual or gradual:STEPS (STEPS > 0)")


def apply(model: MultiTaskModel, spec: str, epoch_steps: int = 1, planned_steps: int = 0) -> GradualUnfreezer | None:
    """Apply a freezing scenario by name; returns the unfreezer for 'gradual', else None.

    Plain 'gradual' unfreezes one more group every epoch, as ULMFiT did, or every twentieth of the
    planned steps if that comes sooner: BERT's 3 epochs would otherwise train only the top two layers,
    while a twentieth has all 13 groups training for the run's last third. In a few-shot run an epoch is
    a step or three, so everything trains early, which measured better there. 'gradual:N' unfreezes
    every N steps. (Measured: docs/strategies.md.)"""
    check_spec(spec, len(model.backbone.layers), list(model.heads))
    set_trainable(model.parameters(), True)
    if spec == "all":
        freeze_all(model)
    elif spec == "backbone":
        freeze_backbone(model)
    elif spec.startswith("head:"):
        freeze_head(model, spec[5:])
    elif spec.startswith("top-"):
        unfreeze_top(model, int(spec[4:]))
    elif spec == "gradual":
        return GradualUnfreezer(model, every_steps=max(1, min(epoch_steps, planned_steps // 20)))
    elif spec.startswith("gradual:"):
        return GradualUnfreezer(model, every_steps=int(spec[8:]))
    return None


# ----------------------------------------------------------------------------- each scenario's recipe
# Defaults that suit a scenario, measured in this project (docs/strategies.md); train.py's command line
# applies each one the user did not set. Full fine-tuning keeps TrainConfig's own defaults (BERT's recipe:
# 3 epochs, warmup then linear decay, the 10% validation split picks the best epoch).

# Only the heads train, on cached embeddings: a linear head is a convex problem and an epoch costs about a
# second, so train to convergence. Early stopping on validation loss decides the end, hence nothing to
# decay towards (constant LR, no warmup); then, as scikit-learn's *CV estimators do, fresh heads are fit on
# train + validation, since the validation rows are worth more as training rows (train.refit: twice the best
# epoch count, the LR decaying to 0).
# A checkpoint writes the whole model (0.4 GB) and an epoch of heads takes about a second, so save every
# 5,000 steps (~9 Banking77 epochs) instead of at each epoch's end.
HEADS_ONLY = dict(epochs=200, patience=10, schedule="constant", warmup=0.0, head_lr=3e-3, refit=True, save_every=5000)

# K examples per class leave nothing to hold out: train a fixed budget and keep the last step (SetFit's
# practice). The few-shot study (docs/fewshot.md) ran 400 steps of 16 at K <= 16 and 800 at K = 32, whatever
# the number of classes, with the heads at 1e-2; heads alone got 10x the steps at a constant 3e-3. So the
# budget is in steps: --max-steps binds (--epochs is set out of its way), and the one checkpoint is written
# at the end (--save-every = the budget) rather than after each epoch of one or two steps.
FEW_SHOT = dict(val_fraction=0.0, head_lr=1e-2, epochs=100_000)
FEW_SHOT_HEADS_ONLY = dict(val_fraction=0.0, schedule="constant", warmup=0.0, head_lr=3e-3, epochs=100_000)


def few_shot_steps(per_class: int) -> int:
    return 400 if per_class <= 16 else 800


def recipe(spec: str, per_class: int = 0) -> tuple[str, dict]:
    """The scenario's name and its defaults ({TrainConfig field: value}); {} keeps TrainConfig's own."""
    if spec == "backbone" and per_class:
        steps = 10 * few_shot_steps(per_class)
        return "heads only, few-shot", FEW_SHOT_HEADS_ONLY | dict(max_steps=steps, save_every=steps)
    if spec == "backbone":
        return "heads only on cached embeddings", HEADS_ONLY
    if per_class and spec != "all":
        steps = few_shot_steps(per_class)
        return "few-shot fine-tuning", FEW_SHOT | dict(max_steps=steps, save_every=steps)
    return "fine-tuning", {}


def train_mode(model: MultiTaskModel) -> None:
    """model.train(), except that parts with no trainable parameter run in eval mode (no dropout)."""
    model.train()
    parts = [model.backbone.embeddings, *model.backbone.layers, *model.heads.values()]
    for part in parts:
        if not any(p.requires_grad for p in part.parameters()):
            part.eval()


def summary(model: MultiTaskModel) -> str:
    """A table of trainable and frozen parameters per group."""
    rows = backbone_groups(model)
    rows += [(f"head.{task}", list(head.parameters())) for task, head in model.heads.items()]
    lines = [f"{'group':14} {'trainable':>12} {'frozen':>12}"]
    total_t = total_f = 0
    for name, params in rows:
        t = sum(p.numel() for p in params if p.requires_grad)
        f = sum(p.numel() for p in params if not p.requires_grad)
        total_t, total_f = total_t + t, total_f + f
        lines.append(f"{name:14} {t:12,} {f:12,}")
    lines.append(f"{'total':14} {total_t:12,} {total_f:12,}")
    return "\n".join(lines)
