"""freeze.py and feature_cache.py: who trains, what stays bit-identical, gradual order, cache parity."""
import re

import pytest
import torch

import freeze
import train as train_mod
from speed.feature_cache import FeatureCache, frozen_prefix
from heads import MultiTaskModel
from mpnet import MPNet, MPNetConfig
from test_train import config, recording, tasks, tokenizer  # noqa: F401  (the real tokenizer fixture)


def tiny_model(layers=3, seed=0):
    torch.manual_seed(seed)
    cfg = MPNetConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64)
    return MultiTaskModel(MPNet(cfg), {"a": 4, "b": 2})


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_scenarios_set_exactly_the_expected_parts():
    model = tiny_model()
    everything = {n for n, _ in model.named_parameters()}
    heads = {n for n in everything if n.startswith("heads.")}
    freeze.apply(model, "all")
    assert trainable_names(model) == set()
    freeze.apply(model, "backbone")
    assert trainable_names(model) == heads
    freeze.apply(model, "head:a")
    assert trainable_names(model) == everything - {n for n in heads if n.startswith("heads.a.")}
    freeze.apply(model, "top-2")
    assert trainable_names(model) == heads | {n for n in everything if n.startswith(("backbone.layers.1.",
                                                                                      "backbone.layers.2."))}
    freeze.apply(model, "none")
    assert trainable_names(model) == everything
    with pytest.raises(ValueError, match="--freeze: unknown spec 'top'; use none"):
        freeze.apply(model, "top")
    with pytest.raises(ValueError, match="no head named 'c'; heads: a, b"):
        freeze.apply(model, "head:c")


def test_frozen_parts_run_without_dropout():
    model = tiny_model()
    freeze.apply(model, "top-1")
    freeze.train_mode(model)
    assert not model.backbone.embeddings.training and not model.backbone.layers[1].training
    assert model.backbone.layers[2].training and model.heads["a"].training


def test_gradual_unfreezing_goes_top_down():
    model = tiny_model()
    unfreezer = freeze.apply(model, "gradual")
    order = [unfreezer.unfreeze_next() for _ in range(5)]
    assert order == ["layer.2", "layer.1", "layer.0", "embeddings", None]
    assert len(trainable_names(model)) == len(list(model.parameters()))


def test_gradual_unfreezing_every_epoch_or_twentieth_of_the_run_whichever_is_sooner():
    assert freeze.apply(tiny_model(), "gradual", epoch_steps=306, planned_steps=918).every_steps == 45  # a twentieth
    assert freeze.apply(tiny_model(), "gradual", epoch_steps=3, planned_steps=400).every_steps == 3  # an epoch
    assert freeze.apply(tiny_model(), "gradual", epoch_steps=5, planned_steps=15).every_steps == 1
    assert freeze.apply(tiny_model(), "gradual:7", epoch_steps=306, planned_steps=918).every_steps == 7


@pytest.mark.numerics
@pytest.mark.parametrize("spec", ["top-1", "head:b", "gradual:1000"])
def test_frozen_weights_stay_bit_identical(tmp_path, tokenizer, spec):  # noqa: F811
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe = tiny_model()
    freeze.apply(probe, spec)
    frozen_at_start = set(before) - trainable_names(probe)
    train_mod.train(config(tmp_path, epochs=1, freeze=spec), model, tokenizer, tasks(), {})
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == set(before) - frozen_at_start  # gradual:1000: only the heads, nothing was unfrozen yet


def test_plain_gradual_trains_every_group_before_the_run_ends(tmp_path, tokenizer, capsys):  # noqa: F811
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_mod.train(config(tmp_path, epochs=20, freeze="gradual"), model, tokenizer, tasks(), {})
    log = capsys.readouterr().err
    every, planned = map(int, re.search(r"every (\d+) steps \(of (\d+) planned\)", log).groups())
    assert every == planned // 20 == 2  # 20 epochs of 2 steps: an epoch and a twentieth of the run agree
    thawed = re.findall(r"step (\d+): gradual unfreezing, (\S+) now trains", log)
    assert thawed == [(str(every * k), name) for k, name in enumerate(["layer.2", "layer.1", "layer.0", "embeddings"], 1)]
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())  # the embeddings too


def test_summary_counts_every_parameter():
    model = tiny_model()
    freeze.apply(model, "backbone")
    text = freeze.summary(model)
    n_heads = sum(p.numel() for p in model.heads.parameters())
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    assert text.splitlines()[-1].split()[1:] == [f"{n_heads:,}", f"{n_backbone:,}"]


U = 2.0 ** -24  # fp32 unit roundoff


@pytest.mark.numerics
@pytest.mark.parametrize("spec", ["backbone", "top-1"])
def test_cached_and_uncached_training_agree(tmp_path, tokenizer, monkeypatch, spec):  # noqa: F811
    """The cache changes the order of floating-point operations (the frozen bottom runs once, in
    batches of 64 sorted by length, instead of once per training batch), not the maths.

    What can be compared tightly is what does not go through many optimizer steps:
      * the first step's gradients. Each differs by rounding only: a length-n dot product in fp32
        is exact to n*u relative (u = 2^-24), the longest here is n = 64 (the FFN), and a value
        passes through at most 2 * (3 layers + embeddings) = 8 such products forward and back,
        so |difference| <= 2 * 8 * 64 * u * max|gradient| (about 6e-5 of the largest gradient);
      * the loss at every step, which moves smoothly with the weights: its relative difference
        may grow with the steps taken, at most 64 * u per step.
    The final weights are NOT compared tightly, on purpose: AdamW divides each gradient by its own
    running RMS, so a parameter whose true gradient is zero moves by O(lr) per step in a direction
    set by rounding noise. The attention key bias is one: q . b_k is the same for every key of a
    query, and softmax ignores a constant shift, so its gradient is rounding noise (~1e-9), which
    AdamW turns into steps of ~lr. On an AVX2 CPU the two runs' key biases differ by ~1e-4 after 6
    steps while everything the model computes agrees; no tolerance on such weights means anything.
    """
    grads, losses = {}, {}
    for no_cache in (False, True):
        model = tiny_model()
        grads[no_cache], losses[no_cache] = {}, []
        setup, loss = recording(grads[no_cache], losses[no_cache])
        monkeypatch.setattr(train_mod, "setup", setup)
        monkeypatch.setattr(train_mod, "multitask_loss", loss)
        train_mod.train(config(tmp_path / str(no_cache), epochs=3, freeze=spec, no_cache=no_cache),
                        model, tokenizer, tasks(), {})
        monkeypatch.undo()  # the next round wraps the real functions again
    assert set(grads[False]) == set(grads[True]) and grads[True]
    largest = max(float(g.abs().max()) for g in grads[True].values())
    for name, g in grads[True].items():
        assert (grads[False][name] - g).abs().max() <= 2 * 8 * 64 * U * largest, name
    assert len(losses[False]) == len(losses[True]) == 6
    for step, (cached, uncached) in enumerate(zip(losses[False], losses[True]), start=1):
        assert abs(cached - uncached) <= step * 64 * U * abs(uncached), step
    assert losses[True][-1] < losses[True][0]  # it did train


def test_cache_layout(tokenizer):  # noqa: F811
    model = tiny_model()
    freeze.apply(model, "top-1")
    assert frozen_prefix(model) == 3  # embeddings + layers 0 and 1
    cache = FeatureCache(model, tokenizer, tasks()["a"].texts)
    assert cache.start == 2 and not cache.pooled
    ids = tokenizer.encode(tasks()["a"].texts)
    assert len(cache.features) == len(set(map(tuple, ids)))  # one entry per distinct text, keyed by its ids
    assert all(cache.features[tuple(i)].shape == (len(i), 32) for i in ids)
    freeze.apply(model, "none")
    with pytest.raises(ValueError, match="nothing to cache"):
        FeatureCache(model, tokenizer, ["x"])
