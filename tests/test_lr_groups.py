"""lr_groups.py: the per-depth learning rates for a 12-layer model, decay exclusions, coverage."""
import pytest
import torch

import freeze
import lr_groups
from heads import MultiTaskModel
from mpnet import MPNet, MPNetConfig

BASE = 5e-5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MultiTaskModel(MPNet(MPNetConfig(hidden_size=16, num_attention_heads=4, intermediate_size=32)),
                          {"a": 3, "b": 2})


def lr_by_group(groups):
    return {g["name"].replace(" (no decay)", ""): g["lr"] for g in groups}


@pytest.mark.parametrize("spec", ["flat", "tiers", "llrd:0.8", "ulmfit"])
def test_every_parameter_in_exactly_one_group(model, spec):
    groups = lr_groups.build(model, spec, base_lr=BASE)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    freeze.apply(model, "top-4")  # frozen ones are in the groups too, so gradual unfreezing needs no new optimizer
    assert {id(p) for p in model.parameters() if p.requires_grad} <= set(ids)
    freeze.apply(model, "none")


def test_tiers_match_the_design(model):
    lrs = lr_by_group(lr_groups.build(model, "tiers", base_lr=BASE))
    assert lrs["head.a"] == lrs["head.b"] == 1e-4
    assert all(lrs[f"layer.{i}"] == 5e-5 for i in range(6, 12))
    assert all(lrs[f"layer.{i}"] == 1e-5 for i in range(0, 6)) and lrs["embeddings"] == 1e-5


@pytest.mark.parametrize("spec, decay", [("llrd:0.9", 0.9), ("llrd:0.8", 0.8), ("ulmfit", 1 / 2.6)])
def test_layerwise_decay_for_12_layers(model, spec, decay):
    lrs = lr_by_group(lr_groups.build(model, spec, base_lr=BASE, head_lr=1e-3))
    for i in range(12):
        assert lrs[f"layer.{i}"] == pytest.approx(BASE * decay ** (11 - i))
    assert lrs["embeddings"] == pytest.approx(BASE * decay ** 12)
    assert lrs["head.a"] == 1e-3


def test_no_weight_decay_on_biases_and_layernorm(model):
    # found from the module types, independently of the name rule lr_groups uses
    layernorm = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    biases = {id(p) for m in model.modules() if isinstance(m, torch.nn.Linear) for p in [m.bias]}
    exempt = layernorm | biases | {id(model.backbone.relative_bias)}
    groups = lr_groups.build(model, "flat", base_lr=BASE, weight_decay=0.05)
    for g in groups:
        for name, p in zip(g["names"], g["params"]):
            assert g["weight_decay"] == (0.0 if id(p) in exempt else 0.05), name
    assert any(g["weight_decay"] == 0.05 for g in groups) and any(g["weight_decay"] == 0 for g in groups)


def test_table_and_bad_specs(model):
    groups = lr_groups.build(model, "llrd:0.9", base_lr=BASE)
    text = lr_groups.table(groups)
    assert "layer.11" in text and "embeddings (no decay)" in text
    for bad, words in [("llrd:x", "needs a number"), ("llrd:1.5", "must be in (0, 1]"), ("steep", "unknown")]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("]", r"\]")):
            lr_groups.build(model, bad, base_lr=BASE)
