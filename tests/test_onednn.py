"""speed/onednn.py: fp32 linear layers through oneDNN give the plain model's numbers, and train as before."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from speed.onednn import OneDNNLinear, onednn_available, onednn_helps, use_onednn

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "reference.json").read_text(encoding="utf-8"))
pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")


@pytest.fixture(scope="module")
def onednn_encoder():
    from mpnet import SentenceEncoder

    encoder = SentenceEncoder.from_pretrained()
    use_onednn(encoder)
    return encoder


@pytest.mark.numerics
def test_onednn_encoder_matches_sentence_transformers_within_1e_5(onednn_encoder):
    """The parity test's own bound: only the order of each dot product's sum changed (fp32 throughout), as
    between this project and sentence-transformers, so the same 1e-5 holds. A numerics test: the order is
    the kernel's, so CI checks it on AVX2 and baseline kernels too."""
    assert isinstance(onednn_encoder.model.layers[0].attn.q, OneDNNLinear)
    ours = onednn_encoder.encode(REFERENCE["sentences"])
    diff = (ours - torch.tensor(REFERENCE["embeddings"])).abs().max(dim=1).values
    worst = int(diff.argmax())
    assert diff.max() <= 1e-5, f"sentence {worst} ({REFERENCE['sentences'][worst][:40]!r}) differs by {diff.max():.2e}"


def test_the_swap_keeps_the_same_weights_and_state_dict_names(encoder, onednn_encoder):
    plain = encoder.model.state_dict()
    swapped = onednn_encoder.model.state_dict()
    assert list(plain) == list(swapped)
    assert all(torch.equal(plain[k], swapped[k]) for k in plain)
    layer = onednn_encoder.model.layers[3]
    assert sum(isinstance(m, OneDNNLinear) for m in layer.modules()) == 6
    assert not any(type(m) is nn.Linear for m in onednn_encoder.model.modules())


@pytest.mark.numerics
def test_the_onednn_product_equals_f_linear_up_to_summation_order():
    """Each output is a float32 sum of 769 terms (768 products and the bias). Summed in any order, such a sum
    is within about n * 2^-24 * (the sum of the terms' sizes) of the exact one (n = 769), so two orders are
    within twice that: that bound, and not a figure that happened to pass, is the tolerance."""
    torch.manual_seed(0)
    linear = nn.Linear(768, 3072)
    x = torch.rand(37, 768) * 2 - 1
    with torch.no_grad():
        got, want = OneDNNLinear(linear)(x), linear(x)
    terms = (x.abs() @ linear.weight.abs().T + linear.bias.abs()).max()
    assert got.shape == want.shape == (37, 3072)
    assert (got - want).abs().max() <= 2 * 769 * 2**-24 * terms
    assert not torch.equal(torch.zeros_like(got), got)


def test_with_autograd_recording_it_is_f_linear_exactly_and_trains():
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    swapped = OneDNNLinear(linear)
    x = torch.randn(5, 16, requires_grad=True)
    y = swapped(x)
    assert torch.equal(y, linear(x))  # the fallback is F.linear itself
    y.square().sum().backward()
    assert linear.weight.grad is not None and x.grad is not None and linear.weight.grad.abs().sum() > 0


def test_under_autocast_and_in_bf16_it_is_f_linear():
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    x = torch.randn(5, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = OneDNNLinear(linear)(x), linear(x)
    assert got.dtype == want.dtype == torch.bfloat16 and torch.equal(got, want)
    linear = linear.to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(OneDNNLinear(linear)(x.bfloat16()), linear(x.bfloat16()))


def test_a_batch_of_three_dimensions_keeps_its_shape():
    linear = nn.Linear(16, 8)
    x = torch.randn(2, 3, 16)
    with torch.no_grad():
        assert torch.allclose(OneDNNLinear(linear)(x), linear(x), atol=1e-6)


def test_load_encoder_swaps_only_where_the_cpu_has_avx512(cpu, monkeypatch):
    from speed import load_encoder

    cpu("avx2", "fma")
    assert onednn_helps() == (False, onednn_helps()[1]) and "AVX-512" in onednn_helps()[1]
    assert isinstance(load_encoder(dtype="fp32").model.layers[0].ffn_in, nn.Linear)
    cpu("avx2", "fma", "avx512f")
    assert onednn_helps()[0]
    assert isinstance(load_encoder(dtype="fp32").model.layers[0].ffn_in, OneDNNLinear)
