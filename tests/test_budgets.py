"""Training budgets and early stopping on the tiny config: --max-tokens, --eval-every, --patience."""
import math

import pytest
import torch

import data
import train as train_mod
from reliability.checkpoint import read_progress
from test_train import TEXTS, config, crash_before_step, tasks, tiny_model, tokenizer  # noqa: F401  (the real tokenizer fixture)

# 8 examples in one pool, batch 2: 4 steps per epoch.


def test_max_tokens_stops_at_the_first_step_past_the_budget(tmp_path, tokenizer):  # noqa: F811
    lengths = [len(ids) for ids in tokenizer.encode(TEXTS)]
    budget = 3 * sum(lengths) // 4  # about 3 of an epoch's 4 steps
    cfg = config(tmp_path, epochs=5, batch_size=2, max_tokens=budget)
    train_mod.train(cfg, tiny_model(), tokenizer, tasks(), tasks())
    progress = read_progress(tmp_path / "run" / "last.safetensors")
    assert progress["tokens"] >= budget and progress["done"]
    # the step before the last was still under the budget: no step beyond it ran
    last_batch_max = 2 * max(lengths)
    assert progress["tokens"] - last_batch_max < budget
    assert progress["step"] <= math.ceil(budget / (2 * min(lengths)))


def test_the_schedule_ends_where_the_token_budget_does(tmp_path, tokenizer):  # noqa: F811
    cfg = config(tmp_path, epochs=50, batch_size=2, max_tokens=400)
    pools = data.make_pools(tasks(), tokenizer)
    sampler = data.MultiTaskSampler([len(p) for p in pools], cfg.batch_size, cfg.temperature, cfg.seed)
    mean_len = sum(len(ids) for ids in tokenizer.encode(TEXTS)) / len(TEXTS)
    assert train_mod.planned_steps(cfg, pools, sampler) == math.ceil(400 / (2 * mean_len))
    assert train_mod.planned_steps(config(tmp_path, epochs=50, batch_size=2), pools, sampler) == 200


def constant_validation(monkeypatch, calls):
    """Every validation returns the same loss: nothing after the first is a new best."""
    def accuracies(model, tok, tasks, autocast, *args, **kwargs):
        calls.append(1)
        return {"acc_a": 0.5, "loss_a": 1.0}
    monkeypatch.setattr(train_mod, "accuracies", accuracies)


def test_patience_stops_after_that_many_validations_without_a_new_best(tmp_path, tokenizer, monkeypatch):  # noqa: F811
    calls = []
    constant_validation(monkeypatch, calls)
    cfg = config(tmp_path, epochs=10, batch_size=2, eval_every=1, patience=2)
    train_mod.train(cfg, tiny_model(), tokenizer, tasks(), tasks())
    progress = read_progress(tmp_path / "run" / "last.safetensors")
    # step 1 sets the best; steps 2 and 3 do not improve it: stop after step 3, validated once each
    assert progress["step"] == 3 and progress["stale"] == 2 and progress["done"]
    assert [h["step"] for h in progress["history"]] == [1, 2, 3] and len(calls) == 3
    assert progress["best_metrics"]["step"] == 1


def test_eval_every_validates_mid_epoch_and_once_at_each_epochs_end(tmp_path, tokenizer, monkeypatch):  # noqa: F811
    calls = []
    constant_validation(monkeypatch, calls)
    cfg = config(tmp_path, epochs=2, batch_size=2, eval_every=3)
    train_mod.train(cfg, tiny_model(), tokenizer, tasks(), tasks())
    history = read_progress(tmp_path / "run" / "last.safetensors")["history"]
    # steps 3 and 6 by --eval-every, 4 and 8 at the epochs' ends; none twice
    assert [(h["epoch"], h["step"]) for h in history] == [(1, 3), (1, 4), (2, 6), (2, 8)]


@pytest.mark.numerics
def test_a_run_stopped_by_its_token_budget_resumes_to_the_same_weights(tmp_path, tokenizer, monkeypatch):  # noqa: F811
    straight = tiny_model()
    train_mod.train(config(tmp_path / "straight", epochs=3, batch_size=2, max_tokens=150, eval_every=2),
                    straight, tokenizer, tasks(), tasks())

    cfg = config(tmp_path / "split", epochs=3, batch_size=2, max_tokens=150, eval_every=2, save_every=1)
    crash_before_step(monkeypatch, 5)
    with pytest.raises(RuntimeError):
        train_mod.train(cfg, tiny_model(), tokenizer, tasks(), tasks())
    monkeypatch.undo()
    resumed = tiny_model(seed=7)
    train_mod.train(cfg, resumed, tokenizer, tasks(), tasks(), resume=True)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name


def test_constant_schedule_holds_the_peak_after_warmup():
    constant, linear = train_mod.lr_lambda(100, 10, "constant"), train_mod.lr_lambda(100, 10)
    assert [constant(s) for s in (0, 9, 10, 50, 99)] == [0.1, 1.0, 1.0, 1.0, 1.0]
    assert linear(55) == 0.5 and linear(99) == pytest.approx(1 / 90)


def test_validation_from_cached_embeddings_equals_running_the_backbone(tokenizer):  # noqa: F811
    """With the whole backbone frozen, validation reads the cached embeddings: the same numbers
    (the same batches of 64 length-sorted texts go through the same backbone either way)."""
    from speed.feature_cache import FeatureCache
    from freeze import freeze_backbone

    model = tiny_model()
    freeze_backbone(model)
    sets = tasks()
    direct = train_mod.accuracies(model, tokenizer, sets, autocast=False, with_loss=True)
    cache = FeatureCache(model, tokenizer, [t for ds in sets.values() for t in ds.texts])
    cache.install(model)
    looked_up = []
    real_embed = cache.model_embed
    cache.model_embed = lambda *a, **kw: looked_up.append(a) or real_embed(*a, **kw)  # the uncached path: not taken
    cached = train_mod.accuracies(model, tokenizer, sets, autocast=False, with_loss=True)
    assert looked_up == []
    assert direct.keys() == cached.keys()
    for key in direct:
        assert cached[key] == pytest.approx(direct[key], rel=1e-6, abs=1e-7), key
