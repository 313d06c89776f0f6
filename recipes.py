"""Each freezing scenario's recipe: the defaults that suit it, measured in this project
(docs/strategies.md, experiments/recipes.md). The command line fills every flag the user did not type
from the scenario's recipe, and says so in one line; --recipe none turns this off.

    recipe(cfg)                  -> Recipe(name, fill): fill(cfg) is cfg with the scenario's defaults
    with_recipe(cfg, given)      -> (cfg with the recipe in every field not typed, the line to print)
    scenario_defaults(cfg)       -> each flag's value when not typed: what a resume command leaves out
    refit_config, train_plus_validation: what --refit trains, and on what (train.refit)

A recipe is a function from TrainConfig to TrainConfig, written with dataclasses.replace, so a misspelt
field fails where it is written. Full fine-tuning keeps TrainConfig's own defaults: BERT's recipe.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # for the annotations only: the recipes read the config they are given
    from train_config import TrainConfig


def fine_tuning(cfg: TrainConfig) -> TrainConfig:
    """Full fine-tuning, top-k and gradual unfreezing: 3 epochs, warmup then linear decay, and the
    10% validation split picks the best epoch."""
    return cfg


def heads_only(cfg: TrainConfig) -> TrainConfig:
    """Only the heads train, on cached embeddings. A linear head is a convex problem and an epoch is
    cheap, so train to convergence: early stopping on validation loss decides the end, hence nothing
    to decay towards (constant LR, no warmup). Then, as scikit-learn's *CV estimators do, fresh heads
    are fit on train + validation (--refit). A checkpoint writes the whole model while an epoch of
    heads is short, so save every 5,000 steps rather than at each epoch's end."""
    return replace(cfg, epochs=200, patience=10, schedule="constant", warmup=0.0, head_lr=3e-3,
                   refit=True, save_every=5000)


def few_shot_steps(per_class: int) -> int:
    """The few-shot study's budget (docs/fewshot.md): 400 steps of 16 at K <= 16, 800 at K = 32."""
    return 400 if per_class <= 16 else 800


def few_shot(cfg: TrainConfig) -> TrainConfig:
    """K examples per class leave nothing to hold out: train a fixed budget of steps, whatever the
    number of classes, and keep the last step (SetFit's practice). --epochs is set out of the way,
    and the one checkpoint is written at the end."""
    steps = few_shot_steps(cfg.per_class)
    return replace(cfg, val_fraction=0.0, head_lr=1e-2, epochs=100_000, max_steps=steps,
                   save_every=steps)


def few_shot_heads_only(cfg: TrainConfig) -> TrainConfig:
    """Few-shot heads alone: ten times the steps, at a constant 3e-3 (docs/fewshot.md)."""
    steps = 10 * few_shot_steps(cfg.per_class)
    return replace(cfg, val_fraction=0.0, schedule="constant", warmup=0.0, head_lr=3e-3,
                   epochs=100_000, max_steps=steps, save_every=steps)


@dataclass(frozen=True)
class Recipe:
    name: str                                   # the scenario, as the command line names it
    fill: Callable[[TrainConfig], TrainConfig]  # cfg -> cfg with the scenario's defaults


def recipe(cfg: TrainConfig) -> Recipe:
    """The recipe of cfg's scenario, from --freeze and --per-class."""
    if cfg.freeze == "backbone" and cfg.per_class:
        return Recipe("heads only, few-shot", few_shot_heads_only)
    if cfg.freeze == "backbone":
        return Recipe("heads only on cached embeddings", heads_only)
    if cfg.per_class and cfg.freeze != "all":
        return Recipe("few-shot fine-tuning", few_shot)
    return Recipe("fine-tuning", fine_tuning)


def recipe_values(cfg: TrainConfig) -> dict[str, object]:
    """{field: value} for each field that the scenario's recipe changes in cfg."""
    filled = recipe(cfg).fill(cfg)
    return {f.name: getattr(filled, f.name) for f in fields(cfg)
            if getattr(filled, f.name) != getattr(cfg, f.name)}


def with_recipe(cfg: TrainConfig, given: set[str]) -> tuple[TrainConfig, str]:
    """The recipe in every field not in `given` (the flags the user typed, which always win)
    -> (config, one line saying what was chosen and why, or "")."""
    if cfg.recipe == "none":
        return cfg, ""
    chosen = {k: v for k, v in recipe_values(cfg).items() if k not in given}
    if not chosen:
        return cfg, ""
    words = ", ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                      for k, v in chosen.items())
    return replace(cfg, **chosen), f"recipe for {recipe(cfg).name} (recipes.py): {words}"


def scenario_defaults(cfg: TrainConfig) -> dict[str, object]:
    """Every flag's value when not typed, in cfg's scenario: what a resume command may leave out."""
    defaults = {f.name: f.default for f in fields(cfg)}
    if cfg.recipe == "none":
        return defaults
    scenario = replace(cfg, **(defaults | {"freeze": cfg.freeze, "per_class": cfg.per_class}))
    return defaults | recipe_values(scenario)


def refit_config(cfg: TrainConfig, best_epoch: int, out: str) -> TrainConfig:
    """--refit's own run: fresh heads, no validation, twice the winning epoch count, the rate
    decaying linearly to 0. The search ran at a constant rate, since early stopping decided its end;
    the refit knows its end, and twice the epochs at a rate falling to 0 is the same area under the
    learning-rate curve, so the head travels as far and ends settled (experiments/recipes.md)."""
    return replace(cfg, epochs=2 * best_epoch, schedule="linear", patience=0, val_fraction=0.0,
                   refit=False, out=out)


def train_plus_validation(train_sets: dict, val_sets: dict) -> dict:
    """Each task's training rows, followed by its validation rows if it has any."""
    everything = {}
    for task, ds in train_sets.items():
        if task in val_sets:
            val = val_sets[task]
            ds = replace(ds, texts=ds.texts + val.texts, labels=ds.labels + val.labels)
        everything[task] = ds
    return everything
