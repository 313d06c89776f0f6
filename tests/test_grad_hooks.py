"""speed/grad_hooks.py: the word table's gradient in a kept buffer is bit-identical to the plain dense one,
and the norm summed during backward is the gradients' norm."""
import copy

import pytest
import torch

from speed import grad_hooks
import train as train_mod
from mpnet import MPNet, MPNetConfig
from test_train import config, tasks, tiny_model, tokenizer  # noqa: F401  (the real tokenizer fixture)
from speed.grad_hooks import GradNorm, SparseGradEmbeddings, reuse_word_gradient

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
    """train.py end to end, with and without the kept buffer: the same weights to the last bit."""
    kept = tiny_model()  # seeds torch, so both runs start from the same weights and draw the same dropout masks
    train_mod.train(config(tmp_path / "kept", epochs=2), kept, tokenizer, tasks(), {})
    assert isinstance(kept.backbone.embeddings, SparseGradEmbeddings)  # train.py did set it up
    monkeypatch.setattr(grad_hooks, "reuse_word_gradient", lambda embeddings: None)
    plain = tiny_model()
    train_mod.train(config(tmp_path / "plain", epochs=2), plain, tokenizer, tasks(), {})
    assert not isinstance(plain.backbone.embeddings, SparseGradEmbeddings)
    trained = dict(kept.named_parameters())
    assert not torch.equal(trained["backbone.embeddings.word"], tiny_model().backbone.embeddings.word)  # it trained
    for name, p in plain.named_parameters():
        assert torch.equal(p, trained[name]), name


def test_a_frozen_table_keeps_the_plain_path():
    model = MPNet(MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
    model.embeddings.word.requires_grad_(False)
    reuse_word_gradient(model.embeddings)  # autograd would refuse the hook; nothing to speed up anyway
    assert not isinstance(model.embeddings, SparseGradEmbeddings)


def small_model() -> MPNet:
    """Small tables too (40 ids, 20 positions): the longest gradient has 64 x 32 = 2,048 elements."""
    torch.manual_seed(0)
    return MPNet(MPNetConfig(vocab_size=40, max_position_embeddings=20, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=64))


def exact_norm(grads: list[torch.Tensor]) -> float:
    return float(sum((g.double() ** 2).sum() for g in grads).sqrt())


@pytest.mark.numerics
def test_grad_norm_sums_every_gradient_once_per_backward():
    """GradNorm.total() against the norm of the same gradients in float64.

    A float32 sum of n non-negative terms, in any order, is within (n - 1) u of the exact sum
    (u = 2^-24); the longest dot here has n = 2,048 terms and the stack of squares has one per
    parameter, so (2,048 + 40) u bounds the relative error of the squared norm, and half of it that
    of the norm. Leaving out the gradients of the two special paths, the word table's (its own hook
    runs first) and a layer's thawed after the hooks went on, must move the norm by more than that,
    or the test could not tell."""
    model = small_model()
    layer1 = list(model.layers[1].parameters())
    for p in layer1:
        p.requires_grad_(False)  # frozen when the hooks go on, thawed below: total() must still count it
    hooks = grad_hooks.install(model, model.embeddings)
    assert grad_hooks.install(model, model.embeddings) is hooks  # a second set-up adds no second hooks
    for p in layer1:
        p.requires_grad_(True)
    bound = (2048 + 40) * 2.0 ** -24 / 2
    for seed in (1, 2):  # the second backward's total holds only its own gradients
        model.zero_grad(set_to_none=True)
        backward(model, *batch(seed))
        grads = {n: p.grad for n, p in model.named_parameters()}
        exact = exact_norm(list(grads.values()))
        assert abs(float(hooks.total()) - exact) <= bound * exact
        for special in ("embeddings.word", "layers.1.ffn_in.weight"):
            rest = [g for n, g in grads.items() if n != special]
            assert abs(exact_norm(rest) - exact) > bound * exact, special
    assert hooks.squares == []
