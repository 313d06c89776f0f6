"""Optimizer parameter groups: a learning rate per depth, and no weight decay where it does harm.

    groups = lr_groups.build(model, "llrd:0.9", base_lr=5e-5)   # flat | tiers | llrd:D | ulmfit
    torch.optim.AdamW(groups)
    print(lr_groups.table(groups))

Depth: the embeddings are depth 0, encoder layer i is depth i + 1, the heads sit on top.
  flat     every backbone parameter at base_lr, the heads at head_lr
  tiers    the design's three tiers: heads 2 x base_lr, upper half of the layers base_lr,
           lower half and embeddings base_lr / 5 (base_lr=5e-5 gives 1e-4 / 5e-5 / 1e-5)
  llrd:D   layer-wise decay as in ELECTRA and BEiT: depth d gets base_lr * D ** (top - d),
           so the top layer has base_lr and each layer below D times less (D typically 0.8-0.95)
  ulmfit   llrd with ULMFiT's factor, D = 1 / 2.6
Biases and LayerNorm weights get no weight decay: decaying them towards 0 only fights the
normalisation and the offsets the model learnt (BERT's recipe). Frozen parameters stay in the
groups so that unfreezing them later (gradual unfreezing) needs no new optimizer; AdamW skips
a parameter while its gradient is None.
"""
from __future__ import annotations

from dataclasses import dataclass

from heads import MultiTaskModel


def depth_of(name: str) -> int:
    """Depth of a backbone parameter from its name: 0 for the embeddings and the relative bias,
    i + 1 for layers.i."""
    if name.startswith("layers."):
        return int(name.split(".")[1]) + 1
    return 0


def no_decay(name: str) -> bool:
    return name.endswith(".bias") or "norm." in name or name == "relative_bias"


@dataclass(frozen=True)
class Spec:
    """A parsed --lr-groups spec: flat | tiers | llrd:DECAY | ulmfit."""
    name: str           # flat, tiers or llrd (ulmfit is llrd with D = 1 / 2.6)
    decay: float = 1.0  # llrd's D: each layer below the top gets D times the rate above it


def parse(spec: str) -> Spec:
    """The spec as a Spec (ulmfit: llrd with D = 1 / 2.6), or ValueError saying what is allowed."""
    if spec in ("flat", "tiers"):
        return Spec(spec)
    if spec == "ulmfit":
        return Spec("llrd", decay=1 / 2.6)
    name, colon, decay = spec.partition(":")
    if name == "llrd" and colon:
        try:
            value = float(decay)
        except ValueError:
            raise ValueError(f"--lr-groups {spec}: llrd needs a number, e.g. llrd:0.9") from None
        if not 0 < value <= 1:
            raise ValueError(f"--lr-groups {spec}: the llrd decay must be in (0, 1]")
        return Spec("llrd", decay=value)
    raise ValueError(f"--lr-groups: unknown spec {spec!r}; use flat, tiers, llrd:DECAY or ulmfit")


def layer_lr(spec: Spec, depth: int, top: int, base_lr: float) -> float:
    """The learning rate at this depth: the table above, in code."""
    if spec.name == "flat":
        return base_lr
    if spec.name == "tiers":
        return base_lr if depth > top // 2 else base_lr / 5
    return base_lr * spec.decay ** (top - depth)  # llrd, and ulmfit with its own D


def build(model: MultiTaskModel, spec: str, base_lr: float, head_lr: float | None = None,
          weight_decay: float = 0.01) -> list[dict]:
    """AdamW parameter groups: one per (depth, decay or not), each with its lr and weight decay."""
    parsed = parse(spec)
    top = model.backbone.cfg.num_hidden_layers
    if head_lr is None:
        head_lr = 2 * base_lr if parsed.name == "tiers" else base_lr
    groups: dict[tuple[str, bool], dict] = {}

    def add(group: str, lr: float, name: str, param) -> None:
        skip_decay = no_decay(name)
        key = (group, skip_decay)
        if key not in groups:
            groups[key] = {"name": f"{group}{' (no decay)' if skip_decay else ''}", "params": [],
                           "names": [], "lr": lr,
                           "weight_decay": 0.0 if skip_decay else weight_decay}
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)

    for name, p in model.backbone.named_parameters():
        depth = depth_of(name)
        group = "embeddings" if depth == 0 else f"layer.{depth - 1}"
        add(group, layer_lr(parsed, depth, top, base_lr), name, p)
    for name, p in model.heads.named_parameters():
        add(f"head.{name.split('.')[0]}", head_lr, name, p)
    return list(groups.values())


def brief(groups: list[dict]) -> str:
    """One line: the peak learning rate of each part that trains (table() has every group)."""
    parts: dict[str, list[float]] = {}
    for g in groups:
        if any(p.requires_grad for p in g["params"]):
            part = "heads" if g["name"].startswith("head.") else "backbone"
            parts.setdefault(part, []).append(g["lr"])
    said = [f"{part} {min(lrs):.2e}" + (f" to {max(lrs):.2e}" if max(lrs) > min(lrs) else "")
            for part, lrs in parts.items()]
    return "peak learning rates: " + ("; ".join(said) or "none (nothing trains)")


def table(groups: list[dict]) -> str:
    lines = [f"{'group':28} {'params':>12} {'lr':>10} {'weight decay':>13}"]
    for g in groups:
        n = sum(p.numel() for p in g["params"])
        lines.append(f"{g['name']:28} {n:12,} {g['lr']:10.2e} {g['weight_decay']:13g}")
    return "\n".join(lines)
