"""Hidden states after the embeddings and after each of the 12 layers against transformers' MPNetModel,
and proof that the comparison points at the right layer when the model is broken on purpose."""
import pytest
import torch
from torch import nn

import mpnet
from tools.layer_parity import SENTENCES, TOLERANCE, compare, our_hidden_states, reference_hidden_states, report
from weights.fetch import weights_dir


@pytest.fixture(scope="module")
def batch(encoder):
    return encoder.tokenize(SENTENCES)


@pytest.fixture(scope="module")
def reference(batch):
    return reference_hidden_states(batch, weights_dir())


def test_every_layer_matches_transformers(encoder, batch, reference):
    diffs = compare(our_hidden_states(encoder, batch), reference)
    assert [n for n, _ in diffs] == ["embeddings"] + [f"layer {i}" for i in range(12)]
    assert all(d <= TOLERANCE for _, d in diffs), report(diffs)[0]


def test_a_shifted_bucket_is_caught_at_the_first_attention(encoder, batch, reference, monkeypatch):
    real = mpnet.relative_position_bucket
    monkeypatch.setattr(mpnet, "relative_position_bucket", lambda *a, **k: (real(*a, **k) + 1).clamp(max=31))
    text, first = report(compare(our_hidden_states(encoder, batch), reference))
    assert first == "layer 0" and "layer 0" in text.splitlines()[2] and "<- first divergence" in text


def test_a_broken_weight_is_caught_at_its_own_layer(batch, reference):
    broken = mpnet.SentenceEncoder.from_pretrained()
    layer = broken.model.layers[7].ffn_out
    torch.manual_seed(0)
    layer.weight = nn.Parameter(layer.weight + 1e-3 * torch.randn_like(layer.weight))  # a new tensor: the file is untouched
    diffs = compare(our_hidden_states(broken, batch), reference)
    _, first = report(diffs)
    assert first == "layer 7" and all(d <= TOLERANCE for _, d in diffs[:8])
