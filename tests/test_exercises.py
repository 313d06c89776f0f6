"""The exercises and drills can fail, and say why: each checker fails on its stub, passes the project's own
function, and fails on plausible wrong solutions with a message that names the mistake's place."""
import importlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import freeze
import heads
import lr_groups
import mpnet
from exercises import BY_NAME, EXERCISES, run
from exercises import __main__ as cli
from exercises import drills
from exercises.drill_bugs import BUGS

ROOT = Path(__file__).resolve().parent.parent


def own(exercise):
    """The project's own function, the reference the check compares against."""
    module, _, rest = exercise.reference.partition(".")
    obj = importlib.import_module(module)
    for part in rest.split("."):
        obj = obj.__dict__[part] if isinstance(obj, type) else getattr(obj, part)
    return obj


def stub(exercise):
    return cli.load_function(exercise, cli.STUBS / f"{exercise.name}.py")


def test_the_exercises_in_the_design_order_each_with_a_stub():
    assert [e.name for e in EXERCISES][:2] == ["position_ids", "bucket"] and len(EXERCISES) >= 10
    assert sorted(p.stem for p in cli.STUBS.glob("*.py")) == sorted(BY_NAME)
    for e in EXERCISES:
        text = (cli.STUBS / f"{e.name}.py").read_text(encoding="utf-8")
        assert "raise NotImplementedError" in text and "Contract" in text and "Hint" in text, e.name


@pytest.mark.parametrize("name", list(BY_NAME))
def test_the_stub_fails_and_says_it_is_not_written(name):
    outcome = run(BY_NAME[name], stub(BY_NAME[name]))
    assert not outcome.passed and "not written yet" in outcome.message


@pytest.mark.parametrize("name", list(BY_NAME))
def test_the_projects_own_function_passes_with_a_figure(name):
    outcome = run(BY_NAME[name], own(BY_NAME[name]))
    assert outcome.passed, outcome.message
    if name in ("position_ids", "bucket", "mask", "attention", "layer", "pooling", "names"):
        assert "vs sentence-transformers over 36 sentences" in outcome.message
        assert float(outcome.message.split("max |diff| ")[1].split()[0]) <= 1e-5
    if name in ("cosent", "in_batch"):  # sentence-transformers is a test requirement: its loss is compared
        assert "sentence-transformers' " in outcome.message and " gives " in outcome.message


# ----------------------------------------------------------------------------- plausible wrong solutions
def positions_from_zero(input_ids, padding_idx):
    is_real = input_ids.ne(padding_idx).long()
    return torch.cumsum(is_real, dim=1) * is_real


def positions_count_padding(input_ids, padding_idx):
    return torch.cumsum(input_ids.ne(padding_idx).long(), dim=1) + padding_idx


def bucket_off_by_one(rel, num_buckets=32, max_distance=128):
    right = mpnet.relative_position_bucket(rel, num_buckets, max_distance)
    return torch.where((rel.abs() >= 8) & (rel.abs() < 128), right - 1, right)


def bucket_query_minus_key(rel, num_buckets=32, max_distance=128):
    return mpnet.relative_position_bucket(-rel, num_buckets, max_distance)


def bucket_hard_coded(rel, num_buckets=32, max_distance=128):
    return mpnet.relative_position_bucket(rel)  # ignores the arguments


def _mask(self, attention_mask, dtype, offsets, padding):
    idx = torch.arange(attention_mask.shape[1])
    bias = self.relative_bias[mpnet.relative_position_bucket(offsets(idx))].permute(2, 0, 1).unsqueeze(0).to(dtype)
    return bias + padding(attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def mask_transposed(self, attention_mask, dtype):
    return _mask(self, attention_mask, dtype, lambda i: i[:, None] - i[None, :], lambda m: 1 - m)


def mask_wrong_sign(self, attention_mask, dtype):
    return _mask(self, attention_mask, dtype, lambda i: i[None, :] - i[:, None], lambda m: m)


def mask_no_padding(self, attention_mask, dtype):
    return _mask(self, attention_mask, dtype, lambda i: i[None, :] - i[:, None], lambda m: 0 * m)


def attend_unscaled(self, q, k, v, mask):
    return (q @ k.transpose(-1, -2) + mask).softmax(-1) @ v


def attend_softmax_over_queries(self, q, k, v, mask):
    return (q @ k.transpose(-1, -2) / 8 + mask).softmax(-2) @ v


def attend_written_out(self, q, k, v, mask):  # right, by another route than SDPA
    weights = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask).softmax(-1)
    return F.dropout(weights, self.dropout_p, self.training) @ v


def layer_pre_ln(self, x, mask):
    x = x + self.attn(self.attn_norm(x), mask)
    return x + self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(x))))


def layer_tanh_gelu(self, x, mask):
    x = self.attn_norm(x + self.attn(x, mask))
    return self.ffn_norm(x + self.ffn_out(F.gelu(self.ffn_in(x), approximate="tanh")))


def pool_over_pads(tokens, attention_mask):
    return tokens.mean(1)


def pool_trusting_zero_pads(tokens, attention_mask):
    return tokens.sum(1) / attention_mask.sum(1, keepdim=True)


def pool_written_out(tokens, attention_mask):  # right, by another route (an empty sentence pools to 0)
    return torch.stack([t[m.bool()].sum(0) / m.sum().clamp(min=1) for t, m in zip(tokens, attention_mask)])


def pool_unguarded(tokens, attention_mask):  # right on every real sentence; 0 / 0 on an empty one
    mask = attention_mask[..., None].to(tokens.dtype)
    return (tokens * mask).sum(1) / mask.sum(1)


def names_q_k_swapped(cfg):
    names = mpnet.checkpoint_names(cfg)
    q, k = "encoder.layer.0.attention.attn.q.weight", "encoder.layer.0.attention.attn.k.weight"
    names[q], names[k] = names[k], names[q]
    return names


def names_with_the_pooler(cfg):
    return mpnet.checkpoint_names(cfg) | {"pooler.dense.weight": "pooler.weight"}


def names_twelve_layers_always(cfg):
    return mpnet.checkpoint_names(mpnet.MPNetConfig())


def loss_nan_for_an_unlabelled_task(logits, labels, task_weights=None, class_weights=None, normalizers=None):
    total, per_task = 0, {}
    for task, task_logits in logits.items():
        loss = F.cross_entropy(task_logits.float(), labels[task])
        per_task[task] = float(loss.detach())
        total = total + (task_weights or {}).get(task, 1.0) * loss
    return total, per_task


def loss_mean_over_tasks(logits, labels, task_weights=None, class_weights=None, normalizers=None):
    total, per_task = heads.multitask_loss(logits, labels, task_weights)
    return total / len(logits), per_task


def loss_divided_by_all_rows(logits, labels, task_weights=None, class_weights=None, normalizers=None):
    total, per_task = 0, {}
    for task, task_logits in logits.items():
        if (labels[task] == heads.IGNORE).all():
            per_task[task] = float("nan")
            continue
        loss = F.cross_entropy(task_logits.float(), labels[task], ignore_index=heads.IGNORE, reduction="sum")
        loss = loss / len(labels[task])
        per_task[task] = float(loss.detach())
        total = total + (task_weights or {}).get(task, 1.0) * loss
    return total, per_task


def loss_weights_ignored(logits, labels, task_weights=None, class_weights=None, normalizers=None):
    return heads.multitask_loss(logits, labels)


def top_k_negative_slice(model, k):
    if not 0 <= k <= 12:
        raise ValueError(k)
    freeze.freeze_backbone(model)
    for _, params in freeze.backbone_groups(model)[-k:]:
        freeze.set_trainable(params, True)


def top_k_off_by_one(model, k):
    if not 0 <= k <= 12:
        raise ValueError(k)
    groups = freeze.backbone_groups(model)
    freeze.freeze_backbone(model)
    for _, params in groups[len(groups) - k - 1:]:
        freeze.set_trainable(params, True)


def top_k_no_range_check(model, k):
    freeze.unfreeze_top(model, min(max(k, 0), 12))


def gradual_bottom_up(self):
    if self.unfrozen == len(self.groups):
        return None
    name, params = self.groups[self.unfrozen]
    self.unfrozen += 1
    freeze.set_trainable(params, True)
    return name


def gradual_never_stops(self):
    self.unfrozen += 1
    name, params = self.groups[len(self.groups) - self.unfrozen]  # wraps round after the embeddings
    freeze.set_trainable(params, True)
    return name


def _llrd(model, spec, base_lr, head_lr, weight_decay, depth, decayed):
    decay, groups = float(spec[5:]), []
    for name, p in model.backbone.named_parameters():
        groups.append({"params": [p], "lr": base_lr * decay ** (12 - depth(name)),
                       "weight_decay": weight_decay if decayed(name) else 0.0})
    for name, p in model.heads.named_parameters():
        groups.append({"params": [p], "lr": head_lr or base_lr, "weight_decay": weight_decay if decayed(name) else 0.0})
    return groups


def llrd_layer_depth_off_by_one(model, spec, base_lr, head_lr=None, weight_decay=0.01):
    depth = lambda n: int(n.split(".")[1]) if n.startswith("layers.") else 0
    return _llrd(model, spec, base_lr, head_lr, weight_decay, depth, lambda n: not lr_groups.no_decay(n))


def llrd_decays_everything(model, spec, base_lr, head_lr=None, weight_decay=0.01):
    return _llrd(model, spec, base_lr, head_lr, weight_decay, lr_groups.depth_of, lambda n: True)


def llrd_forgets_the_heads(model, spec, base_lr, head_lr=None, weight_decay=0.01):
    return [g for g in lr_groups.build(model, spec, base_lr, head_lr, weight_decay) if not g["name"].startswith("head")]


def cosent_without_the_one(first, second, scores, scale=20.0):
    c = scale * F.cosine_similarity(first, second, dim=-1)
    diff = (c[:, None] - c[None, :])[scores[:, None] < scores[None, :]]
    return torch.logsumexp(diff, dim=0)


def cosent_counting_ties(first, second, scores, scale=20.0):
    c = scale * F.cosine_similarity(first, second, dim=-1)
    diff = (c[:, None] - c[None, :])[(scores[:, None] <= scores[None, :]) & ~torch.eye(len(c), dtype=torch.bool)]
    return torch.log1p(diff.exp().sum())


def cosent_reversed(first, second, scores, scale=20.0):
    return heads.cosent_loss(first, second, -scores, scale)


def in_batch_transposed(anchors, positives, scores=None, scale=20.0):
    return heads.in_batch_negatives_loss(positives, anchors, scale=scale)


def in_batch_summed(anchors, positives, scores=None, scale=20.0):
    return len(anchors) * heads.in_batch_negatives_loss(anchors, positives, scale=scale)


def in_batch_dot_product(anchors, positives, scores=None, scale=20.0):
    return F.cross_entropy(scale * anchors @ positives.T, torch.arange(len(anchors)))


WRONG = [  # (exercise, wrong solution, what the message must say: the place, and the mistake where it is named)
    ("position_ids", positions_from_zero, ["sentence 0, position 0", "expected 2"]),
    ("position_ids", positions_count_padding, ["(<pad>)", "padding_idx (1) itself"]),
    ("bucket", bucket_off_by_one, ["offset -8 is 7, expected 8", "log-spaced"]),
    ("bucket", bucket_query_minus_key, ["offset -1 is 17, expected 1", "left of the query"]),
    ("bucket", bucket_hard_coded, ["num_buckets=16"]),
    ("mask", mask_transposed, ["transposed", "key - query"]),
    ("mask", mask_wrong_sign, ["key 0 ('<s>') is a real token", "wrong sign"]),
    ("mask", mask_no_padding, ["is padding", "large negative"]),
    ("attention", attend_unscaled, ["head 0, query 0", "no 1/sqrt(head_dim) scale"]),
    ("attention", attend_softmax_over_queries, ["query 0", "softmax over the queries"]),
    ("layer", layer_pre_ln, ["layer 0, sentence 0, token 0", "pre-LN"]),
    ("layer", layer_tanh_gelu, ["layer 0, sentence 0", "tanh GELU"]),
    ("pooling", pool_over_pads, ["sentence 0 (9 real tokens, 12 padded)", "mean over all 21 positions"]),
    ("pooling", pool_trusting_zero_pads, ["sentence 0", "padded positions summed in"]),
    ("pooling", pool_unguarded, ["no real token", "Clamp the count"]),
    ("names", names_q_k_swapped, ["encoder.layer.0.attention.attn.q.weight is mapped to 'layers.0.attn.k.weight'"]),
    ("names", names_with_the_pooler, ["pooler.dense.weight", "mpnet.SKIPPED"]),
    ("names", names_twelve_layers_always, ["3-layer config"]),
    ("loss", loss_nan_for_an_unlabelled_task, ["no row has a sentiment label", "adds zero"]),
    ("loss", loss_mean_over_tasks, ["both tasks labelled", "expected", "the tasks' means are averaged"]),
    ("loss", loss_divided_by_all_rows, ["rows 1 and 4 have no topic label", "divided by all the rows"]),
    ("loss", loss_weights_ignored, ["task weights topic 1.0, sentiment 0.3"]),
    ("cosent", cosent_without_the_one, ["16 STS-B training pairs", "the 1 inside the log"]),
    ("cosent", cosent_counting_ties, ["ties", "only score_i < score_j counts"]),
    ("cosent", cosent_reversed, ["the sign is reversed"]),
    ("in_batch", in_batch_transposed, ["positives @ anchors.T"]),
    ("in_batch", in_batch_summed, ["the sum over the batch"]),
    ("in_batch", in_batch_dot_product, ["not their cosine"]),
    ("top_k", top_k_negative_slice, ["k=0: embeddings is trainable", "groups[-0:]"]),
    ("top_k", top_k_off_by_one, ["k=0: layer.11 is trainable, expected frozen"]),
    ("top_k", top_k_no_range_check, ["k=13: expected a ValueError"]),
    ("gradual", gradual_bottom_up, ["call 1: you returned 'embeddings'", "expected 'layer.11'"]),
    ("gradual", gradual_never_stops, ["call 14", "expected None"]),
    ("llrd", llrd_layer_depth_off_by_one, ["backbone.layers.0.attn.q.weight has lr", "depth 1"]),
    ("llrd", llrd_decays_everything, ["weight decay 0.01, expected 0.0", "not decayed"]),
    ("llrd", llrd_forgets_the_heads, ["heads.", "in no group"]),
]


@pytest.mark.parametrize("name, wrong, says", WRONG, ids=[w[1].__name__ for w in WRONG])
def test_a_plausible_wrong_solution_fails_naming_the_place(name, wrong, says):
    outcome = run(BY_NAME[name], wrong)
    assert not outcome.passed
    for text in says:
        assert text in outcome.message, outcome.message


def test_every_exercise_has_wrong_solutions_tested():
    assert {name for name, _, _ in WRONG} == set(BY_NAME)


@pytest.mark.numerics
@pytest.mark.parametrize("name, right", [("attention", attend_written_out), ("pooling", pool_written_out)])
def test_a_right_solution_by_another_route_passes(name, right):
    """Another order of the same sums (explicit softmax, not SDPA) lands within the tolerance on every kernel path."""
    outcome = run(BY_NAME[name], right)
    assert outcome.passed, outcome.message


def test_a_difference_that_only_the_whole_model_shows_is_located_by_layer():
    from exercises import checks

    with checks.plugged(mpnet.Layer, "forward", layer_pre_ln):
        assert checks.first_divergence() == "first divergence: layer 0"
        with pytest.raises(checks.Mistake, match="differ from sentence-transformers' by .*first divergence: layer 0"):
            checks.end_to_end("Layer.forward")
    assert checks.first_divergence() == "every layer agrees, so look after the layers (pooling)"


def test_an_exception_in_your_code_is_reported_with_its_line(tmp_path):
    path = tmp_path / "bucket.py"
    path.write_text("def relative_position_bucket(rel, num_buckets=32, max_distance=128):\n    return rel.nope\n")
    outcome = run(BY_NAME["bucket"], cli.load_function(BY_NAME["bucket"], path))
    assert not outcome.passed and "AttributeError" in outcome.message and "line 2" in outcome.message


def test_the_list_shows_a_passed_exercise_as_passed_until_the_file_changes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "YOURS", tmp_path / "yours")
    cli.check("top_k")  # makes the file from the stub
    mine = tmp_path / "yours" / "top_k.py"
    mine.write_text("from freeze import unfreeze_top\n")  # the project's own: it passes
    assert cli.check("top_k") == 0
    cli.listing()
    assert "[passed]" in [line for line in capsys.readouterr().out.splitlines() if " top_k " in line][0]
    mine.write_text(mine.read_text() + "# changed since\n")
    cli.listing()
    assert "[edited]" in [line for line in capsys.readouterr().out.splitlines() if " top_k " in line][0]


def test_check_makes_your_file_from_the_stub_and_reset_keeps_what_you_wrote(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "YOURS", tmp_path / "yours")
    assert cli.check("gradual") == 1  # the stub: not yet
    mine = tmp_path / "yours" / "gradual.py"
    assert mine.read_bytes() == (cli.STUBS / "gradual.py").read_bytes()
    mine.write_text(mine.read_text() + "\n# my attempt\n")
    cli.reset(["gradual"])
    assert mine.read_bytes() == (cli.STUBS / "gradual.py").read_bytes()
    assert "# my attempt" in (tmp_path / "yours" / "gradual.py.bak").read_text()
    assert "not yet" in capsys.readouterr().out


# ----------------------------------------------------------------------------- drills
@pytest.mark.parametrize("number", range(1, len(BUGS) + 1))
def test_each_drill_applies_once_and_shows_somewhere(number):
    bug = BUGS[number - 1]
    rows = drills.places(bug)
    assert drills.first_place(rows) is not None, rows
    assert drills.is_right(bug, f"mpnet.py:{bug.function}") and drills.is_right(bug, f"./mpnet.py:{bug.function.split('.')[0]}")
    assert not drills.is_right(bug, "mpnet.py:SentenceEncoder.encode") and not drills.is_right(bug, f"heads.py:{bug.function}")


def test_at_least_five_drills_in_different_places():
    assert len(BUGS) >= 5 and len({b.function for b in BUGS}) >= 5


def test_a_drill_that_no_longer_applies_is_named():
    stale = drills.Bug("Layer.forward", "text that is not in mpnet.py", "", "")
    with pytest.raises(RuntimeError, match="no longer applies"):
        drills.bugged_source(stale)


def test_the_walkthrough_finds_the_pre_ln_drill_in_section_5():
    out = subprocess.run([sys.executable, "-m", "exercises", "drill", "1", "--walkthrough"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={"MPLBACKEND": "Agg", **__import__("os").environ})
    assert out.returncode == 1, out.stdout + out.stderr
    assert "section: 5. One attention layer, by hand" in out.stdout
