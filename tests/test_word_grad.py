"""word_grad.py: the word table's gradient in a kept buffer is bit-identical to the plain dense one."""
import copy

import pytest
import torch

import train as train_mod
from mpnet import MPNet, MPNetConfig
from test_train import config, tasks, tiny_model, tokenizer  # noqa: F401  (the real tokenizer fixture)
from word_grad import reuse_word_gradient

PAD = 1


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Few distinct ids, so rows repeat many times (the order of their sums matters), and right padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 9, (6, 12), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate([12, 9, 7, 12, 3, 5]):
        ids[row, length:], mask[row, length:] = PAD, 0
    return ids, mask


def backward(model: MPNet, ids: torch.Tensor, mask: torch.Tensor) -> None:
    torch.manual_seed(7)  # the same dropout masks in both models
    out = model(ids, mask)
    (out * torch.linspace(-3, 5, out.numel()).view_as(out)).sum().backward()


def grads(model: MPNet) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.numerics
def test_word_gradient_is_bit_identical_and_lands_in_one_buffer():
    torch.manual_seed(0)
    plain = MPNet(MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
    kept = copy.deepcopy(plain)
    reuse_word_gradient(kept.embeddings)
    reuse_word_gradient(kept.embeddings)  # a second call adds nothing: still one buffer, one hook
    buffers = set()
    for seed in (1, 2):
        for model in (plain, kept):
            model.zero_grad(set_to_none=True)
            backward(model, *batch(seed))
        word = kept.embeddings.word.grad
        assert word.layout == torch.strided and word.shape == kept.embeddings.word.shape
        assert word[PAD].abs().sum() == 0 and word.count_nonzero() > 0
        buffers.add(word.data_ptr())
        for name, grad in grads(plain).items():
            assert torch.equal(grad, grads(kept)[name]), name
    assert len(buffers) == 1  # the second step reused the first step's buffer


@pytest.mark.numerics
def test_a_second_backward_accumulates():
    """Without zero_grad in between, .grad holds the sum of both backward passes. The two batches use
    disjoint token ids, so each row of the sum has one nonzero term and comes out bit-identical; where
    rows overlap, the buffer adds the second batch's rows one by one, and the plain path adds two dense
    sums: the same terms, rounded in another order."""
    torch.manual_seed(0)
    plain = MPNet(MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
    kept = copy.deepcopy(plain)
    reuse_word_gradient(kept.embeddings)
    first, mask = batch(1)
    second = torch.where(mask.bool(), first + 10, PAD)  # ids 12..18 instead of 2..8
    for model in (plain, kept):
        backward(model, first, mask)
        backward(model, second, mask)
    for name, grad in grads(plain).items():
        assert torch.equal(grad, grads(kept)[name]), name
    assert kept.embeddings.word.grad[2:9].count_nonzero() > 0 and kept.embeddings.word.grad[12:19].count_nonzero() > 0


@pytest.mark.numerics
def test_training_with_the_buffer_gives_bit_identical_weights(tmp_path, tokenizer, monkeypatch):  # noqa: F811
    """train.py end to end, with and without word_grad.py: the same weights to the last bit."""
    kept = tiny_model()  # seeds torch, so both runs start from the same weights and draw the same dropout masks
    train_mod.train(config(tmp_path / "kept", epochs=2), kept, tokenizer, tasks(), {})
    assert kept.backbone.embeddings.sparse_grad  # train.py did set it up
    monkeypatch.setattr(train_mod, "reuse_word_gradient", lambda embeddings: None)
    plain = tiny_model()
    train_mod.train(config(tmp_path / "plain", epochs=2), plain, tokenizer, tasks(), {})
    assert not plain.backbone.embeddings.sparse_grad
    trained = dict(kept.named_parameters())
    assert not torch.equal(trained["backbone.embeddings.word"], tiny_model().backbone.embeddings.word)  # it trained
    for name, p in plain.named_parameters():
        assert torch.equal(p, trained[name]), name


def test_a_frozen_table_keeps_the_plain_path():
    model = MPNet(MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
    model.embeddings.word.requires_grad_(False)
    reuse_word_gradient(model.embeddings)  # autograd would refuse the hook; nothing to speed up anyway
    assert not model.embeddings.sparse_grad
