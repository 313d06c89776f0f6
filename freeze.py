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

from dataclasses import dataclass

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
    """Nothing trains, heads included: a fixed feature extractor (use: inference, baselines)."""
    set_trainable(model.parameters(), False)


def freeze_backbone(model: MultiTaskModel) -> None:
    """Only the heads train (use: little labelled data or compute, where the embedding fits)."""
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
        raise ValueError(f"top-{k}: k must be between 0 and {len(groups) - 1} "
                         f"(the encoder's layers)")
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

    def plan(self, total_steps: int) -> str:
        return (f"gradual unfreezing: the heads first, then one more of the {len(self.groups)} "
                f"groups every {self.every_steps} steps (of {total_steps} planned)")

    def catch_up(self, count: int) -> None:
        """After a resume: unfreeze as many groups as the interrupted run had."""
        while self.unfrozen < count and self.unfreeze_next():
            pass


@dataclass(frozen=True)
class Spec:
    """A parsed --freeze spec: none | all | backbone | head:NAME | top-K | gradual[:STEPS]."""
    name: str                 # none, all, backbone, head, top or gradual
    head: str | None = None   # head:NAME: the head that stays as it is
    k: int = 0                # top-K: how many of the top layers train
    every: int = 0            # gradual:STEPS: one more group every STEPS steps (0: apply() picks)


def parse(spec: str, num_layers: int) -> Spec:
    """The spec as a Spec, or ValueError saying what is allowed (no model needed)."""
    if spec in ("none", "all", "backbone", "gradual"):
        return Spec(spec)
    name, colon, arg = spec.partition(":")
    if name == "head" and colon and arg:
        return Spec("head", head=arg)
    if name == "gradual" and arg.isdigit() and int(arg) > 0:
        return Spec("gradual", every=int(arg))
    name, dash, k = spec.partition("-")
    if name == "top" and k.isdigit():
        if not 0 <= int(k) <= num_layers:
            raise ValueError(f"--freeze {spec}: K must be between 0 and {num_layers} "
                             f"(the encoder's layers)")
        return Spec("top", k=int(k))
    raise ValueError(f"--freeze: unknown spec {spec!r}; use none, all, backbone, head:NAME, "
                     f"top-K (K <= {num_layers}), gradual or gradual:STEPS (STEPS > 0)")


def apply(model: MultiTaskModel, spec: str, epoch_steps: int = 1,
          planned_steps: int = 0) -> GradualUnfreezer | None:
    """Apply a freezing scenario by name; returns the unfreezer for 'gradual', else None.

    Plain 'gradual' unfreezes one more group every epoch, as ULMFiT did, or every twentieth of the
    planned steps if that comes sooner: BERT's 3 epochs would otherwise train only the top two
    layers, while a twentieth has all 13 groups training for the run's last third. In a few-shot
    run an epoch is a step or three, so everything trains early, which measured better there.
    'gradual:N' unfreezes every N steps. (Measured: docs/strategies.md.)"""
    parsed = parse(spec, len(model.backbone.layers))
    if parsed.head is not None and parsed.head not in model.heads:
        raise ValueError(f"--freeze {spec}: no head named {parsed.head!r}; "
                         f"heads: {', '.join(model.heads)}")
    set_trainable(model.parameters(), True)
    if parsed.name == "all":
        freeze_all(model)
    elif parsed.name == "backbone":
        freeze_backbone(model)
    elif parsed.name == "head":
        freeze_head(model, parsed.head)
    elif parsed.name == "top":
        unfreeze_top(model, parsed.k)
    elif parsed.name == "gradual":
        every = parsed.every or max(1, min(epoch_steps, planned_steps // 20))
        return GradualUnfreezer(model, every_steps=every)
    return None


def train_mode(model: MultiTaskModel) -> None:
    """model.train(), except that parts with no trainable parameter run in eval mode: no dropout."""
    model.train()
    parts = [model.backbone.embeddings, *model.backbone.layers, *model.heads.values()]
    for part in parts:
        if not any(p.requires_grad for p in part.parameters()):
            part.eval()


def parts(model: MultiTaskModel) -> list[tuple[str, list[nn.Parameter]]]:
    """The backbone's unfreezing units, then each head: the rows of summary() and brief()."""
    heads = [(f"head.{task}", list(head.parameters())) for task, head in model.heads.items()]
    return backbone_groups(model) + heads


def brief(model: MultiTaskModel) -> str:
    """One line: what trains and what is frozen, by group (summary() is the table)."""
    rows = parts(model)
    trains = [name for name, params in rows if any(p.requires_grad for p in params)]
    frozen = [name for name, params in rows if not any(p.requires_grad for p in params)]
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return (f"trains: {n:,} of {total:,} parameters: {runs_of(trains) or 'nothing'}"
            + (f"; frozen: {runs_of(frozen)}" if frozen else ""))


def runs_of(names: list[str]) -> str:
    """layer.0, layer.1, ..., layer.11 -> layer.0-11: group names, consecutive layers joined."""
    out, layers = [], []
    for name in names + [""]:
        if name.startswith("layer."):
            layers.append(int(name.split(".")[1]))
            continue
        if layers:
            out.append(f"layer.{layers[0]}" + (f"-{layers[-1]}" if len(layers) > 1 else ""))
            layers = []
        if name:
            out.append(name)
    return ", ".join(out)


def summary(model: MultiTaskModel) -> str:
    """A table of trainable and frozen parameters per group."""
    rows = parts(model)
    lines = [f"{'group':14} {'trainable':>12} {'frozen':>12}"]
    total_t = total_f = 0
    for name, params in rows:
        t = sum(p.numel() for p in params if p.requires_grad)
        f = sum(p.numel() for p in params if not p.requires_grad)
        total_t, total_f = total_t + t, total_f + f
        lines.append(f"{name:14} {t:12,} {f:12,}")
    lines.append(f"{'total':14} {total_t:12,} {total_f:12,}")
    return "\n".join(lines)
