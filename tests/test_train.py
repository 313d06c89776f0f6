"""train.py on a tiny random-config backbone: overfitting, save/load, resume."""
import json

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import train as train_mod
from reliability.checkpoint import load_training_state
import data
from data import LabelledTexts
from eval import load_run
from heads import MultiTaskModel
from mpnet import MPNet, MPNetConfig, Tokenizer
from reliability import run_folder
from speed.training import folded_clip
from weights.fetch import fetch

TEXTS = ["great product, works well", "arrived late and broken", "the price is far too high",
         "support never replied", "love the soft fabric", "courier lost my parcel",
         "cheap and cheerful bargain", "the agent was very kind"]
TOPIC = [0, 1, 2, 3, 0, 1, 2, 3]
SENTIMENT = [1, 0, 0, 0, 1, 0, 1, 1]



def crash_before_step(monkeypatch, step: int, message: str = "simulated crash"):
    """train.train_step raises instead of taking step `step` (counted from 1), as a machine that goes
    away does; returns the real train_step, to put back before the resume."""
    real_step = train_mod.train_step

    def crash(run, batch):
        if run.progress.step == step - 1:
            raise RuntimeError(message)
        return real_step(run, batch)

    monkeypatch.setattr(train_mod, "train_step", crash)
    return real_step

@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(fetch() / "tokenizer.json")  # the real tokenizer (fetch is a no-op when present)


def tasks():
    return {"a": LabelledTexts("toy-topic", "train", TEXTS, TOPIC, ["q", "d", "p", "s"], source="toy"),
            "b": LabelledTexts("toy-sentiment", "train", TEXTS, SENTIMENT, ["neg", "pos"], source="toy")}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return MultiTaskModel(MPNet(cfg), {"a": 4, "b": 2})


def config(tmp_path, **kw):
    base = dict(epochs=40, batch_size=4, lr=1e-3, head_lr=3e-3, warmup=0.05, dtype="fp32", log_every=1000,
                out=str(tmp_path / "run"))
    return train_mod.TrainConfig(**(base | kw))


@pytest.mark.numerics
def recording(grads: dict, losses: list, loss_value=lambda total: float(total.detach())):
    """Stand-ins for train.setup and train.multitask_loss (monkeypatch them in) that record the first
    step's gradients, after backward and before clipping, into `grads`, and each step's loss into
    `losses` (loss_value: how to read it; under DDP, summed over ranks)."""
    real_setup, real_loss = train_mod.setup, train_mod.multitask_loss

    def setup(*args, **kw):  # the run's clip_grad_norm, wrapped to see the first step's gradients
        run = real_setup(*args, **kw)
        real_clip = run.clip_grad_norm

        def clip(parameters, max_norm):
            if not grads:  # the first step (under DDP: after the all-reduce), before any update
                grads.update({n: p.grad.clone() for n, p in run.model.named_parameters() if p.grad is not None})
            return real_clip(parameters, max_norm)
        run.clip_grad_norm = clip
        return run

    def loss(*args, **kw):
        total, per_task = real_loss(*args, **kw)
        losses.append(loss_value(total))
        return total, per_task

    return setup, loss


def test_tiny_model_overfits_a_few_batches(tmp_path, tokenizer):
    cfg = config(tmp_path)
    model = tiny_model()
    before = train_mod.accuracies(model, tokenizer, tasks(), autocast=False)
    best = train_mod.train(cfg, model, tokenizer, tasks(), tasks())
    assert best["val_acc_a"] == 1.0 and best["val_acc_b"] == 1.0
    assert min(before.values()) < 1.0
    losses = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == 40


@pytest.mark.numerics
def test_save_then_load_gives_identical_logits(tmp_path, tokenizer):
    cfg = config(tmp_path, epochs=2)
    model = tiny_model()
    run_folder.start_fresh(tmp_path / "run", run_folder.run_info(cfg, model.backbone.cfg, tasks()),
                           fetch() / "tokenizer.json")  # run.json and tokenizer.json, as main() writes them
    train_mod.train(cfg, model, tokenizer, tasks(), tasks())
    model.load_state_dict(load_file(tmp_path / "run" / "best.safetensors"))
    loaded, tok, info = load_run(tmp_path / "run")
    batch = tokenizer.pad(tokenizer.encode(TEXTS))
    model.eval()
    with torch.no_grad():
        a, b = model(batch["input_ids"], batch["attention_mask"]), loaded(batch["input_ids"], batch["attention_mask"])
    assert all(torch.equal(a[t], b[t]) for t in ("a", "b"))
    assert info["tasks"]["a"]["label_names"] == ["q", "d", "p", "s"]


@pytest.mark.numerics
def test_resume_continues_the_schedule_exactly(tmp_path, tokenizer, monkeypatch):
    straight = tiny_model()
    train_mod.train(config(tmp_path / "straight", epochs=4), straight, tokenizer, tasks(), tasks())

    real_save = run_folder.save_last

    def crash_after_epoch_2(run):
        real_save(run)
        if run.progress.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_folder, "save_last", crash_after_epoch_2)
    cfg = config(tmp_path / "resumed", epochs=4)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg, tiny_model(), tokenizer, tasks(), tasks())
    monkeypatch.setattr(run_folder, "save_last", real_save)
    resumed = tiny_model(seed=123)  # its own weights are overwritten by the checkpoint
    train_mod.train(cfg, resumed, tokenizer, tasks(), tasks(), resume=True)

    # Same batches, same kernels, same order of operations: bit-identical, not merely close.
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    lines = [json.loads(x) for x in open(tmp_path / "resumed" / "run" / "metrics.jsonl")]
    assert [x["epoch"] for x in lines] == [1, 2, 3, 4] and lines[-1]["step"] == 8
    _, optimizer, state = load_training_state(tmp_path / "resumed" / "run" / "last.safetensors")
    assert state["scheduler"]["last_epoch"] == 8 and optimizer["param_groups"][0]["lr"] == 0.0
    assert state["progress"]["done"]


def test_a_batch_pads_the_ids_tokenised_once_as_tokenising_it_would(tokenizer):
    pools = data.make_pools(tasks(), tokenizer)
    rows = [5, 0, 2]
    batch = data.collate(tokenizer, pools[0], rows)
    fresh = tokenizer.pad(tokenizer.encode([TEXTS[i] for i in rows]))
    assert torch.equal(batch["input_ids"], fresh["input_ids"])
    assert torch.equal(batch["attention_mask"], fresh["attention_mask"])
    assert batch["labels"]["a"].tolist() == [TOPIC[i] for i in rows]


def test_lr_warms_up_then_decays_to_zero():
    f = train_mod.lr_lambda(total_steps=10, warmup_steps=2)
    assert [round(f(s), 3) for s in range(10)] == [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]


def test_bad_dataset_name_exits_with_a_clear_message(capsys):
    with pytest.raises(SystemExit):
        train_mod.main(["--task-a", "nope"])
    assert "argument --task-a: unknown dataset 'nope'; known: reviews-topic" in capsys.readouterr().err


def test_per_class_sample_takes_k_of_each_label_and_the_seed_picks_which():
    ds = LabelledTexts("toy-topic", "train", [f"text {i}" for i in range(40)], [i % 4 for i in range(40)],
                       ["q", "d", "p", "s"])
    few = data.per_class_sample(ds, 3, seed=0)
    assert sorted(few.labels) == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert all(ds.labels[int(t.split()[1])] == label for t, label in zip(few.texts, few.labels))  # rows kept whole
    assert few.texts != data.per_class_sample(ds, 3, seed=1).texts
    assert few.texts == data.per_class_sample(ds, 3, seed=0).texts
    assert len(data.per_class_sample(ds, 50, seed=0)) == 40  # a label with fewer than k: all of it


def test_attention_dropout_zero_makes_training_attention_deterministic(tokenizer):
    torch.manual_seed(0)
    backbone = MPNet(MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                 hidden_dropout_prob=0.0))  # only the attention probabilities can drop out
    batch = tokenizer.pad(tokenizer.encode(TEXTS))

    def outputs(train_mode: bool) -> torch.Tensor:
        backbone.train(train_mode)
        with torch.no_grad():
            return backbone(batch["input_ids"], batch["attention_mask"])

    # Training attention is written out (test_dropout checks it against the fused kernel), so the
    # test is whether two training passes agree: only a dropout mask can make them differ.
    assert not torch.equal(outputs(True), outputs(True))  # the checkpoint's 0.1: other drops each pass
    backbone.set_attention_dropout(0.0)
    assert torch.equal(outputs(True), outputs(True))
    assert backbone.cfg.attention_probs_dropout_prob == 0.0  # what run.json records


def test_a_run_without_attention_dropout_passes_the_resume_check(tmp_path):
    cfg = config(tmp_path, attention_dropout=0.0)
    model = tiny_model()
    checkpoint = model.backbone.cfg  # what config.json says (0.1), as main() reads it on --resume
    model.backbone.set_attention_dropout(cfg.attention_dropout)
    info = run_folder.run_info(cfg, model.backbone.cfg, tasks())
    now = run_folder.run_info(cfg, replace(checkpoint, attention_probs_dropout_prob=0.0), tasks())
    run_folder.check_resume_matches(info, now, tmp_path)
    with pytest.raises(ValueError, match="the data or model differ"):  # the checkpoint's own config would not
        run_folder.check_resume_matches(info, run_folder.run_info(cfg, checkpoint, tasks()), tmp_path)


@pytest.mark.numerics
@pytest.mark.parametrize("clip", [1e-3, 1e6])  # clipping active, and far from it
def test_clipping_folded_into_adamw_matches_clip_grad_norm(clip):
    """speed/training.py's folded_clip + the fused step against clip_grad_norm_ + the same step.

    Both runs are fed the same gradients (fixed tensors, of a different size each step, so that
    clipping changes AdamW's moments). Only rounding may differ: g / fl((n + 1e-6) / clip) against
    g * fl(clip / (n + 1e-6)) is within 4 units of roundoff (u = 2^-24) of g; AdamW's update
    lr * m / (sqrt(v) + eps) is a ratio in g, so the updates differ by at most ~8u of lr a step,
    plus each weight's rounding a step, which can then land one ulp apart (2u |w|)."""
    u, lr, steps = 2.0 ** -24, 1e-2, 3
    torch.manual_seed(0)
    start = [torch.randn(64, 32), torch.randn(64)]
    grads = [[scale * torch.randn_like(w) for w in start] for scale in (1.0, 30.0, 0.1)]

    def run(how: str) -> list[torch.Tensor]:
        params = [torch.nn.Parameter(w.clone()) for w in start]
        optimizer = train_mod.make_optimizer([{"params": params, "lr": lr, "weight_decay": 0.01}])
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            if how == "folded":
                folded_clip(optimizer, grad_norm=None)(params, clip)
            elif how == "clip_grad_norm_":
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
        return [p.detach() for p in params]

    folded, reference, unclipped = run("folded"), run("clip_grad_norm_"), run("not clipped")
    for a, b in zip(folded, reference):
        assert ((a - b).abs() <= steps * (8 * u * lr + 2 * u * b.abs())).all(), (a - b).abs().max()
    moved = max(float((a - b).abs().max()) for a, b in zip(folded, unclipped))
    if clip < 1:  # the clipping did something: an unclipped run ends elsewhere, by O(lr)
        assert moved > 1e-3
    else:
        assert moved == 0  # and with nothing to clip, grad_scale is exactly 1: nothing changes
