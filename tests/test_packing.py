"""speed/packing.py: the packed model computes the plain model's numbers on the real tokens, in eval
and in training (gradients too), and leaves the parameters and their names as they were."""
import copy

import pytest
import torch

from mpnet import MPNet, MPNetConfig, SelfAttention
from speed.packing import PackedMPNet, PackedSelfAttention, pack

SENTENCES = ["A man is playing a guitar.", "Hi", "", "The relative position bias is shared by every layer of the "
             "encoder, so it is computed once per forward pass and reused twelve times."]


def test_packed_encoder_equals_the_plain_one_on_real_tokens(encoder):
    batch = encoder.tokenize(SENTENCES)
    packed = pack(copy.deepcopy(encoder.model))
    with torch.no_grad():
        plain = encoder.model(batch["input_ids"], batch["attention_mask"])
        fast = packed(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert real.float().mean() < 0.6  # the batch really is padded: the test would see a wrong scatter
    # fp32 through 12 layers, other matrix shapes (T rows against B * L): rounding, ~1e-6.
    assert (fast[real] - plain[real]).abs().max() < 1e-5
    assert torch.equal(fast[~real], torch.zeros_like(fast[~real]))  # nothing at padded positions
    assert [n for n, _ in packed.named_parameters()] == [n for n, _ in encoder.model.named_parameters()]


def tiny() -> MPNet:
    torch.manual_seed(0)
    return MPNet(MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def test_packed_training_gives_the_plain_gradients():
    plain, packed = tiny(), pack(tiny())
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]])
    mask = (ids != 1).long()
    for model in (plain, packed):
        model.train()
        out = model(ids, mask)
        (out * mask[..., None]).pow(2).sum().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), packed.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
    assert plain.embeddings.word.grad.abs().sum() > 0  # the loss reached the bottom


def test_pack_is_idempotent_and_keeps_a_subclass():
    class Mine(PackedSelfAttention):
        pass

    model = tiny()
    model.layers[0].attn.__class__ = Mine
    pack(pack(model))
    assert type(model) is PackedMPNet
    assert type(model.layers[0].attn) is Mine and type(model.layers[1].attn) is PackedSelfAttention
    assert type(tiny().layers[0].attn) is SelfAttention  # the plain class is untouched


@pytest.mark.parametrize("start", [0, 1])
def test_a_layer_range_from_given_states_continues_the_full_pass(start):
    model = pack(tiny()).eval()
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]])
    mask = (ids != 1).long()
    with torch.no_grad():
        full = model(ids, mask)
        below = model(ids, mask, stop=start)  # the states entering layer `start`, zero at padding
        rest = model(None, mask, start=start, packed=below[mask.bool()])
    assert torch.allclose(rest, full, atol=1e-6)
