"""speed/lane_dropout.py: the cheaper masks drop at rate p (to 1/65536), keep the mean, and train like nn.Dropout;
the written-out training attention computes what scaled_dot_product_attention does."""
import math

import pytest
import torch
import torch.nn.functional as F

from speed.lane_dropout import LANES, LaneDropout, dropout, keep_mask
from speed.packing import pack
from speed.training import WrittenOutAttention
from mpnet import MPNet, MPNetConfig

P = 0.1
DROPPED = round(P * LANES)  # 6554 of 65536 lane values
SCALE = LANES / (LANES - DROPPED)


def within_binomial(count: int, n: int, p: float) -> bool:
    """count is within 6 standard deviations of n draws at rate p: a 1-in-500-million false alarm."""
    return abs(count - n * p) <= 6 * math.sqrt(n * p * (1 - p))


def test_every_lane_drops_at_rate_p():
    # Each of a word's four 16-bit lanes must drop at rate p on its own: with random_()'s default
    # range the top bit of every word would be 0, and lane 3 would never drop.
    torch.manual_seed(0)
    n = 4 * 250_000
    dropped = keep_mask(torch.Size([n]), P, torch.float32, torch.device("cpu")) == 0
    assert within_binomial(int(dropped.sum()), n, DROPPED / LANES)
    for lane in range(4):
        assert within_binomial(int(dropped[lane::4].sum()), n // 4, DROPPED / LANES), lane
    assert not within_binomial(int(dropped.sum()), n, 0.11)  # the check can fail


@pytest.mark.numerics
def test_kept_values_are_scaled_to_keep_the_mean():
    torch.manual_seed(0)
    x = torch.randn(1000, 768)
    y = dropout(x, P)
    kept = y != 0
    # the same multiply nn.Dropout does, with 1/(1-p) for p rounded to a multiple of 1/65536
    assert torch.equal(y[kept], x[kept] * torch.tensor(SCALE, dtype=torch.float32))
    mask = keep_mask(torch.Size([1_000_000]), P, torch.float32, torch.device("cpu"))
    # mean of 1e6 draws of (0 or SCALE): standard error SCALE * sqrt(p (1 - p) / n) = 3.3e-4
    assert abs(float(mask.mean()) - 1.0) <= 6 * SCALE * math.sqrt(P * (1 - P) / 1e6)


def test_gradient_is_the_same_mask():
    torch.manual_seed(0)
    x = torch.randn(64, 768, requires_grad=True)
    y = dropout(x, P)
    g = torch.randn_like(y)
    y.backward(g)
    kept = y.detach() != 0  # (no x is exactly 0 here)
    assert torch.equal(x.grad, torch.where(kept, g * torch.tensor(SCALE, dtype=torch.float32), 0.0))


def test_masks_follow_the_global_seed():
    x = torch.ones(10_000)
    torch.manual_seed(3)
    a, b = dropout(x, P), dropout(x, P)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, P), a)
    assert not torch.equal(a, b)


def test_off_in_eval_and_at_p_zero():
    x = torch.randn(8, 16)
    layer = LaneDropout(P).eval()
    assert layer(x) is x
    assert dropout(x, 0.0) is x
    assert dropout(x, 1e-6) is x  # rounds to 0 of 65536 values dropped
    assert LaneDropout(P).train()(x).shape == x.shape


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_bad_probability_is_refused_when_built(p):
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\)"):
        LaneDropout(p)


def written_out(model: MPNet) -> MPNet:
    """The speed path's attention (speed/training.py) on every layer, which is packed (speed/packing.py)."""
    pack(model)
    for layer in model.layers:
        layer.attn.__class__ = WrittenOutAttention
    return model


@pytest.mark.numerics
def test_training_attention_is_the_fused_formula():
    """With a dropout that drops nothing, the written-out training path and the fused kernel agree.

    Both in float64: each output sums L products of O(1) terms, so rounding differences stay near
    L * 2^-53 ~ 1e-15; 1e-12 leaves room, and a wrong scale, mask or transpose is off by O(0.1)."""
    cfg = MPNetConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                      intermediate_size=32, max_position_embeddings=40, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)  # train(): the written-out path, dropping nothing
    torch.manual_seed(0)
    model = written_out(MPNet(cfg).double())
    with torch.no_grad():
        model.relative_bias.normal_()
    ids = torch.tensor([[0, 5, 6, 7, 2, 1, 1], [0, 8, 9, 10, 11, 12, 2]])
    mask = (ids != 1).long()
    by_hand = model.train()(ids, mask)
    fused = model.eval()(ids, mask)
    assert (by_hand - fused).abs().max() <= 1e-12
    model.layers[0].attn.dropout_p = 0.5  # and a real dropout does change it
    assert (model.train()(ids, mask) - fused).abs().max() > 1e-3


def test_training_attention_gives_the_bias_a_gradient():
    cfg = MPNetConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                      intermediate_size=32, max_position_embeddings=40)
    torch.manual_seed(0)
    model = written_out(MPNet(cfg)).train()
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    model(ids, torch.ones_like(ids)).square().sum().backward()
    assert model.relative_bias.grad is not None and model.relative_bias.grad.abs().sum() > 0


def test_bf16_autocast_training_stays_finite():
    # Under autocast the padding mask's most negative float32 becomes -inf in bf16; the written-out
    # path must still give finite outputs (every query row has at least one real key).
    cfg = MPNetConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=32, max_position_embeddings=40)
    torch.manual_seed(0)
    model = written_out(MPNet(cfg)).train()
    ids = torch.tensor([[0, 5, 6, 7, 2, 1, 1], [0, 8, 9, 10, 11, 12, 2]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, (ids != 1).long())
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
