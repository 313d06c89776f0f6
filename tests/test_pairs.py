"""The pair task (issue 50): CoSENT and in-batch negatives, the pair batch, pair files, training a
pair task beside a classification one, and the export that sentence-transformers loads back."""
import json
import math
import re
from dataclasses import asdict

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import data
import heads
import metrics
import train as train_mod
from heads import IGNORE, MultiTaskModel, cosent_loss, in_batch_negatives_loss, multitask_loss
from mpnet import MPNet, MPNetConfig, SentenceEncoder, Tokenizer
from weights.fetch import fetch


def embeddings(n: int, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)


# ----------------------------------------------------------------------------- the losses
def test_cosent_is_log_one_plus_the_wrong_way_pairs_of_pairs():
    first, second = embeddings(6)
    scores = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.0, 1.0])
    c = 20 * torch.nn.functional.cosine_similarity(first.double(), second.double(), dim=-1)
    terms = [math.exp(c[i] - c[j]) for i in range(6) for j in range(6) if scores[i] < scores[j]]
    assert len(terms) == 14  # 15 pairs of pairs, less the tie (0.5, 0.5)
    assert cosent_loss(first.double(), second.double(), scores).item() == pytest.approx(math.log(1 + sum(terms)), rel=1e-12)


def test_cosent_is_zero_free_when_every_score_ties_and_falls_when_the_order_is_right():
    first, second = embeddings(4)
    assert cosent_loss(first, second, torch.full((4,), 0.5)).item() == 0.0  # log(1 + 0)
    right = torch.nn.functional.cosine_similarity(first, second, dim=-1)  # gold = the model's own order
    assert cosent_loss(first, second, right).item() < cosent_loss(first, second, -right).item()


def test_in_batch_negatives_is_cross_entropy_over_the_scaled_cosines():
    anchors, positives = embeddings(5, seed=1)
    sims = 20 * metrics.cosines(np.repeat(anchors.numpy(), 5, 0), np.tile(positives.numpy(), (5, 1))).reshape(5, 5)
    expected = np.mean([-(sims[i, i] - np.log(np.exp(sims[i]).sum())) for i in range(5)])
    assert in_batch_negatives_loss(anchors, positives).item() == pytest.approx(expected, rel=1e-5)


def test_the_losses_equal_sentence_transformers_on_the_same_embeddings():
    losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")

    class NoModel(torch.nn.Module):  # the losses' constructors want a model; these tests give embeddings
        pass
    first, second = embeddings(16, dim=32, seed=2)
    scores = torch.rand(16, generator=torch.Generator().manual_seed(3))
    theirs = losses.CoSENTLoss(NoModel()).compute_loss_from_embeddings([first, second], scores)
    assert cosent_loss(first, second, scores).item() == pytest.approx(theirs.item(), rel=1e-5)
    theirs = losses.MultipleNegativesRankingLoss(NoModel()).compute_loss_from_embeddings([first, second], None)
    assert in_batch_negatives_loss(first, second).item() == pytest.approx(theirs.item(), rel=1e-5)


def test_multitask_loss_gives_a_pair_batch_to_the_pair_loss_and_nothing_to_the_heads():
    first, second = embeddings(3, seed=4)
    batch = torch.cat([first, second])  # the pool's layout: first sentences, then their partners
    scores = torch.tensor([0.2, 0.8, 0.5])
    outputs = {"a": torch.randn(6, 4, requires_grad=True), "s": batch}
    labels = {"a": torch.full((6,), IGNORE), "s": torch.cat([scores, scores])}
    total, per_task = multitask_loss(outputs, labels, pairs={"s": "cosent"})
    assert total.item() == pytest.approx(cosent_loss(first, second, scores).item(), rel=1e-6)
    assert math.isnan(per_task["a"])
    # and a classification batch leaves the pair task out
    total, per_task = multitask_loss({"a": torch.randn(3, 4), "s": first},
                                     {"a": torch.tensor([0, 1, 2]), "s": torch.full((3,), IGNORE)},
                                     pairs={"s": "cosent"})
    assert math.isnan(per_task["s"]) and total.item() == pytest.approx(per_task["a"])


def test_retrieval_ranks_each_anchor_s_own_positive():
    anchors = np.eye(4)
    positives = np.eye(4)[[0, 1, 3, 2]]  # anchors 2 and 3 find each other's positive first
    positives[2] += 0.5 * np.eye(4)[2]
    found = metrics.retrieval(anchors, positives)
    assert found["acc1"] == 0.5
    assert found["mrr10"] == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)


# ----------------------------------------------------------------------------- pair data
@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(fetch() / "tokenizer.json")


def test_a_pair_batch_holds_the_first_sentences_then_their_partners(tokenizer):
    pairs = data.SentencePairs("p", "train", ["a cat", "a dog", "the sun"], ["one cat", "some dog", "sunlight"],
                               [0.9, 0.1, 0.5], "cosent")
    labelled = data.LabelledTexts("c", "train", ["x", "y"], [0, 1], ["n", "p"], source="c")
    pools = data.make_pools({"s": pairs, "a": labelled}, tokenizer)
    pair_pool = next(p for p in pools if isinstance(p, data.PairPool))
    assert len(pair_pool) == 3
    batch = data.collate(tokenizer, pair_pool, [2, 0])
    expected = tokenizer.pad(tokenizer.encode(["the sun", "a cat", "sunlight", "one cat"]))
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert batch["labels"]["s"].tolist() == pytest.approx([0.5, 0.9, 0.5, 0.9])
    assert batch["labels"]["a"].tolist() == [IGNORE] * 4


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, message", [
    ("sentence1,score\na,0.5\n", r":1: a pair file needs the columns sentence1, sentence2, score"),
    ("sentence1,sentence2,score\na,b,1.5\n", r":2: score '1.5' is not a number from 0 to 1 \(--score-range\)"),
    ("sentence1,sentence2,score\na, ,0.5\n", r":2: 'sentence1' and 'sentence2' must be non-empty texts"),
    ("sentence1,sentence2,sentence2,score\na,b,c,0.5\n", r":1: the header names 'sentence2' twice"),
    ("anchor,positive\nquery,\n", r":2: 'anchor' and 'positive' must be non-empty texts"),
])
def test_a_bad_pair_file_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys, text, message):
    path = write(tmp_path / "pairs.csv", text)
    monkeypatch.setattr(train_mod, "build", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(SystemExit) as stop:
        train_mod.main(["--task-a", str(path), "--task-b", "none", "--out", str(tmp_path / "run")])
    assert str(stop.value).startswith("error: ") and "\n" not in str(stop.value)
    assert re.search(message, str(stop.value)), stop.value


def test_a_pair_file_is_read_by_its_columns(tmp_path):
    scored = data.read_pairs(write(tmp_path / "s.tsv", "sentence1\tsentence2\tscore\na\tb\t4\n"), (0, 5))
    assert (scored.loss, scored.first, scored.second, scored.scores) == ("cosent", ["a"], ["b"], [4.0])
    positive = data.read_pairs(write(tmp_path / "p.jsonl", '{"anchor": "q", "positive": "d"}\n'), (0, 1))
    assert (positive.loss, positive.first, positive.second, positive.scores) == ("in-batch", ["q"], ["d"], [1.0])
    assert data.is_pair_task(str(tmp_path / "s.tsv")) and not data.is_pair_task("banking77")


def test_a_pair_task_cannot_freeze_its_only_parameters(tmp_path, capsys):
    path = write(tmp_path / "pairs.csv", "anchor,positive\nq,d\n")
    with pytest.raises(SystemExit):
        train_mod.main(["--task-a", str(path), "--task-b", "none", "--freeze", "backbone", "--out", str(tmp_path / "r")])
    assert "task a is a pair task, which trains the embedding itself" in capsys.readouterr().err


# ----------------------------------------------------------------------------- training
def test_a_tiny_model_learns_a_pair_task_beside_a_classification_task(tmp_path, tokenizer):
    torch.manual_seed(0)
    cfg = MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    model = MultiTaskModel(MPNet(cfg), {"a": 2}, pairs={"s": "cosent"})
    words = ["red apple", "green apple", "fast car", "slow car", "old book", "new book", "big dog", "small dog"]
    first = words
    second = ["apple red", "apple pie", "car race", "apple tree", "book shop", "dog bone", "dog", "red car"]
    scores = [1.0, 0.7, 0.8, 0.1, 0.9, 0.2, 0.9, 0.0]
    pairs = data.SentencePairs("toy-pairs", "train", first, second, scores, "cosent", source="pairs")
    labelled = data.LabelledTexts("toy", "train", words, [0, 0, 1, 1, 0, 0, 1, 1], ["n", "p"], source="toy")
    before = train_mod.accuracies(model, tokenizer, {"s": pairs}, autocast=False)["spearman_s"]
    run_cfg = train_mod.TrainConfig(epochs=30, batch_size=4, lr=1e-3, head_lr=3e-3, warmup=0.05, dtype="fp32",
                                    log_every=1000, out=str(tmp_path / "run"))
    best = train_mod.train(run_cfg, model, tokenizer, {"s": pairs, "a": labelled}, {"s": pairs, "a": labelled})
    assert best["val_spearman_s"] > max(0.95, before + 0.2)
    assert best["val_loss_s"] == pytest.approx(1 - best["val_spearman_s"])
    assert best["val_acc_a"] == 1.0


# ----------------------------------------------------------------------------- the export
@pytest.fixture(scope="module")
def fine_tuned_run(tmp_path_factory, encoder):
    """A run folder whose backbone differs from all-mpnet-base-v2 (one layer scaled, as fine-tuning
    would move it), with a classification head: what train.py leaves, written by hand."""
    folder = tmp_path_factory.mktemp("run")
    model = MultiTaskModel(MPNet(encoder.model.cfg), {"a": 3})
    model.backbone.load_state_dict(encoder.model.state_dict())
    with torch.no_grad():
        model.backbone.layers[5].ffn_out.weight.mul_(1.05)
        model.backbone.relative_bias.add_(0.01)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "best.safetensors")
    info = {"config": asdict(train_mod.TrainConfig()), "backbone": asdict(encoder.model.cfg),
            "tasks": {"a": {"dataset": "mine.csv", "label_names": ["x", "y", "z"]}}}
    (folder / "run.json").write_text(json.dumps(info))
    (folder / "tokenizer.json").write_bytes((fetch() / "tokenizer.json").read_bytes())
    return folder, model.eval()


def sentences():
    return json.loads((data.ROOT / "tests" / "fixtures" / "reference.json").read_text())["sentences"]


def test_an_exported_run_gives_its_embeddings_in_sentence_transformers_and_here(tmp_path, fine_tuned_run, tokenizer,
                                                                                encoder):
    st = pytest.importorskip("sentence_transformers")
    from tools.export import export

    folder, model = fine_tuned_run
    out = export(folder, tmp_path / "exported")
    texts = sentences()
    # Batches of 4: the two 384-token sentences pad only two others to 384, not thirty.
    ours = torch.nn.functional.normalize(model.encode(tokenizer, texts, batch_size=4), dim=-1)
    theirs = torch.from_numpy(st.SentenceTransformer(str(out), device="cpu").encode(texts, batch_size=4))
    back = SentenceEncoder.from_pretrained(out).encode(texts, batch_size=4)
    assert (theirs - ours).abs().max().item() <= 1e-5
    assert (back - ours).abs().max().item() <= 1e-5
    assert (back[:4] - encoder.encode(texts[:4])).abs().max().item() > 1e-3  # not the base model
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == model.backbone.cfg.num_hidden_layers


def test_the_export_never_writes_into_a_folder_that_holds_something(tmp_path, fine_tuned_run, capsys):
    from tools import export

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as stop:
        export.main([str(fine_tuned_run[0]), str(tmp_path / "mine")])
    assert "exists and is not an empty folder" in str(stop.value)
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and (tmp_path / "mine" / "notes.txt").read_text() == "mine"
