"""heads.py: shapes and values of the heads, the multi-task loss with missing labels, class weights."""
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from heads import IGNORE
from heads import MultiTaskModel, balanced_class_weights, multitask_loss
import mpnet
from mpnet import MPNet, MPNetConfig, mean_pool

TINY = MPNetConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=32, max_position_embeddings=40)


def tiny_multitask(normalize=False):
    torch.manual_seed(0)
    return MultiTaskModel(MPNet(TINY), {"a": 5, "b": 2}, normalize=normalize).eval()


def test_heads_read_the_pooled_embedding():
    model = tiny_multitask()
    ids = torch.tensor([[0, 5, 6, 2, 1], [0, 7, 8, 9, 2]])
    mask = ids.ne(1).long()
    logits = model(ids, mask)
    assert logits["a"].shape == (2, 5) and logits["b"].shape == (2, 2)
    pooled = mean_pool(model.backbone(ids, mask), mask)
    assert torch.allclose(logits["a"], model.heads["a"][-1](pooled), atol=1e-6)
    normalized = tiny_multitask(normalize=True)
    assert torch.allclose(normalized(ids, mask)["b"], normalized.heads["b"][-1](F.normalize(pooled, dim=-1)),
                          atol=1e-6)


def test_loss_skips_missing_labels():
    torch.manual_seed(1)
    logits = {"a": torch.randn(4, 5, requires_grad=True), "b": torch.randn(4, 2, requires_grad=True)}
    labels = {"a": torch.tensor([1, IGNORE, 3, IGNORE]), "b": torch.tensor([IGNORE, 0, 1, IGNORE])}
    total, per_task = multitask_loss(logits, labels, task_weights={"a": 1.0, "b": 0.5})
    expect_a = F.cross_entropy(logits["a"][[0, 2]], torch.tensor([1, 3]))
    expect_b = F.cross_entropy(logits["b"][[1, 2]], torch.tensor([0, 1]))
    assert torch.allclose(total, expect_a + 0.5 * expect_b)
    assert per_task["a"] == float(expect_a.detach())
    total.backward()
    # unlabelled rows get no gradient: nothing is guessed for them
    assert logits["a"].grad[[1, 3]].abs().sum() == 0 and logits["b"].grad[[0, 3]].abs().sum() == 0
    assert logits["a"].grad[[0, 2]].abs().sum() > 0


def test_task_without_any_label_in_the_batch_adds_nothing():
    logits = {"a": torch.randn(2, 5), "b": torch.randn(2, 2)}
    labels = {"a": torch.tensor([0, 4]), "b": torch.tensor([IGNORE, IGNORE])}
    total, per_task = multitask_loss(logits, labels)
    assert torch.isfinite(total) and torch.allclose(total, F.cross_entropy(logits["a"], labels["a"]))
    assert per_task["b"] != per_task["b"]  # NaN marks "absent"


def test_class_weights_match_sklearn_balanced():
    labels = [0] * 50 + [1] * 30 + [2] * 15 + [3] * 5
    ours = balanced_class_weights(labels + [IGNORE] * 7, 4)
    theirs = compute_class_weight("balanced", classes=np.arange(4), y=np.array(labels))
    assert torch.allclose(ours, torch.tensor(theirs, dtype=torch.float32))


def test_class_weights_change_the_loss():
    logits = {"a": torch.randn(6, 3)}
    labels = {"a": torch.tensor([0, 0, 0, 0, 1, 2])}
    plain, _ = multitask_loss(logits, labels)
    weighted, _ = multitask_loss(logits, labels, class_weights={"a": balanced_class_weights([0, 0, 0, 0, 1, 2], 3)})
    expect = F.cross_entropy(logits["a"], labels["a"], weight=torch.tensor([0.5, 2.0, 2.0]))
    assert torch.allclose(weighted, expect) and not torch.allclose(weighted, plain)


class WordTokenizer:
    """Tiny-vocabulary stand-in for mpnet.Tokenizer: a word's id is its length, <s> 0, </s> 2."""
    pad_id = 1
    pad = mpnet.Tokenizer.pad

    def encode(self, texts):
        return [[0] + [3 + len(w) % 40 for w in t.split()] + [2] for t in texts]


def test_encode_in_several_batches_gives_each_text_its_own_row():
    """Five texts in batches of two, longest first, land in input order as if embedded one by one."""
    model, tokenizer = tiny_multitask(), WordTokenizer()
    texts = ["a bb", "ccc dddd eeeee ff", "g", "hh iii jjjj", "kkkkk l mm nnn oooo pp"]
    rows = model.encode(tokenizer, texts, batch_size=2)
    alone = torch.cat([model.encode(tokenizer, [t]) for t in texts])
    torch.testing.assert_close(rows, alone, rtol=0, atol=1e-5)
    assert model.predict_proba(tokenizer, texts, batch_size=2)["a"].shape == (5, 5)
