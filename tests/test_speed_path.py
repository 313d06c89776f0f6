"""The speed path (speed/training.py) computes what the plain code computes: `python train.py` and
`python train.py --plain` give the same losses and gradients, up to rounding, with dropout off (with
dropout on they draw their masks differently, by design)."""
import pytest
import torch

import train as train_mod
from heads import MultiTaskModel
from mpnet import MPNet, MPNetConfig, SelfAttention
from speed.grad_hooks import SparseGradEmbeddings
from speed.lane_dropout import LaneDropout
from speed.training import WrittenOutAttention
from test_train import config, recording, tasks, tokenizer  # noqa: F401  (the real tokenizer fixture)

U = 2.0 ** -24  # fp32 unit roundoff
STEPS = 6


def model_without_dropout() -> MultiTaskModel:
    torch.manual_seed(0)
    cfg = MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return MultiTaskModel(MPNet(cfg), {"a": 4, "b": 2}, dropout=0.0)


def first_gradients_and_losses(tmp_path, tokenizer, monkeypatch, plain: bool):  # noqa: F811
    """train.py on the tiny config: the first step's gradients (after backward, before clipping) and
    the loss of every step, and the trained model."""
    grads, losses = {}, []
    model = model_without_dropout()
    setup, loss = recording(grads, losses)
    monkeypatch.setattr(train_mod, "setup", setup)
    monkeypatch.setattr(train_mod, "multitask_loss", loss)
    cfg = config(tmp_path / str(plain), epochs=3, attention_dropout=0.0, clip=1e-2, plain=plain)  # clipping active
    train_mod.train(cfg, model, tokenizer, tasks(), {})
    monkeypatch.undo()
    return grads, losses, model


@pytest.mark.numerics
def test_plain_and_speed_paths_give_the_same_losses_and_gradients(tmp_path, tokenizer, monkeypatch):  # noqa: F811
    """The same bound as the feature cache's test (test_freeze.py), for the same reason: the two paths
    sum the same products in other orders. A length-n dot product in fp32 is exact to n*u relative
    (u = 2^-24); the longest here is n = 64 (the FFN), and a value passes through at most 2 * (2 layers
    + embeddings + head) = 8 such products forward and back, so each first-step gradient differs by at
    most 2 * 8 * 64 * u * max|gradient|, and each step's loss by at most 64 * u per step taken. Weights
    after several AdamW steps are not compared: AdamW turns a zero gradient's rounding noise into
    steps of ~lr (see test_freeze.py)."""
    fast_grads, fast_losses, fast = first_gradients_and_losses(tmp_path, tokenizer, monkeypatch, plain=False)
    plain_grads, plain_losses, plain = first_gradients_and_losses(tmp_path, tokenizer, monkeypatch, plain=True)
    # each path ran its own code
    assert all(type(layer.attn) is WrittenOutAttention for layer in fast.backbone.layers)
    assert isinstance(fast.backbone.embeddings, SparseGradEmbeddings)
    assert all(type(layer.attn) is SelfAttention for layer in plain.backbone.layers)
    assert type(plain.backbone.embeddings.dropout) is torch.nn.Dropout
    assert type(fast.backbone.embeddings.dropout) is LaneDropout

    assert set(fast_grads) == set(plain_grads) and plain_grads
    largest = max(float(g.abs().max()) for g in plain_grads.values())
    for name, g in plain_grads.items():
        assert (fast_grads[name] - g).abs().max() <= 2 * 8 * 64 * U * largest, name
    assert len(fast_losses) == len(plain_losses) == STEPS
    for step, (a, b) in enumerate(zip(fast_losses, plain_losses), start=1):
        assert abs(a - b) <= step * 64 * U * abs(b), step
    assert plain_losses[-1] < plain_losses[0]  # it did train


@pytest.mark.numerics
def test_the_comparison_can_fail(tmp_path, tokenizer, monkeypatch):  # noqa: F811
    """A speed path that forgot the 1/sqrt(head_dim) scale is caught by the same bounds."""
    real_attend = WrittenOutAttention.attend

    def unscaled(self, q, k, v, mask):
        return real_attend(self, q * q.shape[-1] ** 0.5, k, v, mask) if self.training else real_attend(self, q, k, v, mask)

    _, plain_losses, _ = first_gradients_and_losses(tmp_path, tokenizer, monkeypatch, plain=True)
    monkeypatch.setattr(WrittenOutAttention, "attend", unscaled)
    _, broken_losses, _ = first_gradients_and_losses(tmp_path, tokenizer, monkeypatch, plain=False)
    assert abs(broken_losses[0] - plain_losses[0]) > 64 * U * abs(plain_losses[0])
