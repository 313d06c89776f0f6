"""Scenario recipes (recipes.py): the command line fills only the flags not typed, and --refit fits
fresh heads on train + validation for the epoch count that early stopping picked."""
import shlex
from dataclasses import asdict, replace

import pytest
import torch
from safetensors.torch import load_file

import recipes
import train as train_mod
from data import LabelledTexts
from reliability import run_folder
from heads import MultiTaskModel
from mpnet import MPNet, MPNetConfig
from test_train import TEXTS, TOPIC, config, tokenizer  # noqa: F401  (the real tokenizer fixture)


def test_the_default_job_takes_trainconfigs_own_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no earlier runs/default here
    cfg, resume, line = train_mod.parse_args([])
    assert cfg == train_mod.TrainConfig() and not resume and line == ""


def test_heads_only_takes_the_linear_probe_recipe_and_says_so():
    cfg, _, line = train_mod.parse_args(["--freeze", "backbone", "--task-b", "none"])
    filled = recipes.heads_only(train_mod.TrainConfig(freeze="backbone", task_b="none"))
    assert cfg == filled and cfg.refit and cfg.schedule == "constant"
    assert line.startswith("recipe for heads only on cached embeddings") and "--refit" in line


def test_every_flag_the_user_types_wins():
    cfg, _, line = train_mod.parse_args(["--freeze", "backbone", "--epochs", "7", "--head-lr", "0.02", "--no-refit"])
    assert (cfg.epochs, cfg.head_lr, cfg.refit) == (7, 0.02, False)
    assert cfg.patience == 10 and "--epochs" not in line and "--refit" not in line
    cfg, _, line = train_mod.parse_args(["--freeze", "backbone", "--recipe", "none"])
    assert cfg == train_mod.TrainConfig(freeze="backbone", recipe="none") and line == ""


@pytest.mark.parametrize("k, steps", [(8, 400), (32, 800)])
def test_few_shot_takes_the_few_shot_studys_budget_in_steps_whatever_the_number_of_classes(k, steps):
    """The study's budget is steps: 400 at K=8 is 39 epochs of Banking77's 77 x 8 rows, but 400 epochs of
    SST-2's 2 x 8; a budget in epochs gave SST-2 ten steps."""
    cfg, _, _ = train_mod.parse_args(["--per-class", str(k), "--task-a", "sst2", "--task-b", "none"])
    assert (cfg.max_steps, cfg.save_every, cfg.val_fraction, cfg.head_lr, cfg.refit) == (steps, steps, 0.0, 1e-2, False)
    assert cfg.epochs * 1 >= steps  # one step an epoch (16 rows, batch 16): the step budget still binds
    cfg, _, _ = train_mod.parse_args(["--per-class", str(k), "--freeze", "backbone"])
    assert (cfg.max_steps, cfg.val_fraction, cfg.schedule, cfg.head_lr) == (10 * steps, 0.0, "constant", 3e-3)


def test_a_resume_command_gives_back_the_same_config(tmp_path):
    cfg, _, _ = train_mod.parse_args(["--freeze", "backbone", "--no-refit", "--epochs", "200", "--out", str(tmp_path)])
    command = run_folder.resume_command(asdict(cfg), recipes.scenario_defaults(cfg))
    assert "--no-refit" in command and "--epochs" not in command  # 200 is the recipe's own
    assert train_mod.parse_args(shlex.split(command)[2:])[:2] == (cfg, True)


def split_tasks():
    """Task A alone: 6 training rows, 2 validation rows."""
    names = ["q", "d", "p", "s"]
    return ({"a": LabelledTexts("toy-topic", "train", TEXTS[:6], TOPIC[:6], names, source="toy")},
            {"a": LabelledTexts("toy-topic", "val", TEXTS[6:], TOPIC[6:], names, source="toy#val")})


def one_head_model() -> MultiTaskModel:
    """The tiny config with Task A's head alone, without dropout: the runs below draw nothing at random."""
    torch.manual_seed(0)
    cfg = MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return MultiTaskModel(MPNet(cfg), {"a": 4}, dropout=0.0)


def test_refit_trains_the_initial_heads_on_train_and_validation(tmp_path, tokenizer):  # noqa: F811
    """refit() = a fresh run on all 8 rows for twice the best epoch count, the learning rate decaying linearly
    to 0, from the same initial heads."""
    train_sets, val_sets = split_tasks()
    cfg = config(tmp_path, epochs=8, freeze="backbone", schedule="constant", warmup=0.0, refit=True,
                 out=str(tmp_path / "run"))
    model = one_head_model()
    initial = {k: v.clone() for k, v in model.heads.state_dict().items()}
    best = train_mod.train(cfg, model, tokenizer, train_sets, val_sets)
    searched = load_file(tmp_path / "run" / "best.safetensors")
    best = train_mod.refit(cfg, model, tokenizer, train_sets, val_sets, best, initial)
    refitted = load_file(tmp_path / "run" / "best.safetensors")
    assert best["refit_rows"] == 8 and (tmp_path / "run" / "refit" / "last.safetensors").is_file()
    assert not (tmp_path / "run" / "refit" / "best.safetensors").exists()  # moved into the run folder

    direct = one_head_model()
    all_rows = {"a": replace(train_sets["a"], texts=TEXTS, labels=TOPIC)}
    train_mod.train(replace(cfg, epochs=2 * best["epoch"], schedule="linear", refit=False, val_fraction=0.0,
                            out=str(tmp_path / "direct")), direct, tokenizer, all_rows, {})
    expected = load_file(tmp_path / "direct" / "best.safetensors")
    assert set(refitted) == set(expected)
    for name, weight in expected.items():
        torch.testing.assert_close(refitted[name], weight, rtol=0, atol=0, msg=name)  # same arithmetic, same order
    assert not torch.equal(refitted["heads.a.1.weight"], searched["heads.a.1.weight"])  # it did replace the search's


def test_an_interrupted_refit_can_be_resumed(tmp_path):
    """check_before_start refuses a finished run, unless its refit is still to finish: its own run, or
    the move of its best.safetensors into the run folder."""
    from reliability.checkpoint import save_training_state

    out = tmp_path / "run"
    (out / "refit").mkdir(parents=True)
    config = asdict(train_mod.TrainConfig(freeze="backbone", refit=True))
    assert run_folder.refit_pending(out, config)
    assert not run_folder.refit_pending(out, config | {"refit": False})
    assert not run_folder.refit_pending(out, config | {"val_fraction": 0.0})

    class Sampler:
        def state_dict(self):
            return {"rng": [3, [1], None], "orders": [[0]], "position": 0}

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_training_state(out / "refit" / "last.safetensors", model, optimizer, scheduler, Sampler(), {"done": True})
    (out / "refit" / "best.safetensors").write_bytes(b"the refit's weights, not moved yet")
    assert run_folder.refit_pending(out, config)  # killed between the refit's end and the move
    (out / "refit" / "best.safetensors").rename(out / "best.safetensors")
    assert not run_folder.refit_pending(out, config)


def test_refit_needs_a_frozen_backbone(capsys):
    with pytest.raises(SystemExit):
        train_mod.parse_args(["--refit", "--freeze", "top-4"])
    assert "--refit fits fresh heads on a frozen backbone, so it needs --freeze backbone, not top-4" in capsys.readouterr().err
