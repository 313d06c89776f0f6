"""The checkers: each plugs a learner's function into the real model and says what it found.

A check returns a one-line pass message with the figure it matched, or raises Mistake with a message
that names the place: the sentence and token, the offset, the parameter, the call. The reference is
always the project's own function (mpnet.py, heads.py, freeze.py, lr_groups.py), run on the real
all-mpnet-base-v2 weights; the end-to-end figure is against sentence-transformers' own embeddings of
the 36 parity sentences (tests/fixtures/reference.json), and a pair loss's against its own loss class
on the same embeddings (where sentence-transformers is installed: requirements-test.txt).

Where a wrong answer matches a mistake people often make (pre-LN, the mean over padding, the
transposed bias...), the message names that mistake too. Those recognisers are written to spot
wrong answers; none of them is a second copy of a right one.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import data
import freeze
import heads
import lr_groups
import mpnet
from data import read_reviews
from heads import IGNORE
from tools.layer_parity import TOLERANCE as LAYER_TOLERANCE, compare, our_hidden_states, report

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "reference.json"
# The end-to-end bar is the parity tests' own: fp32 with other kernels or another order of the same sums
# lands within ~1e-6 per component of a unit vector; any real mistake is orders of magnitude larger.
TOLERANCE = 1e-5
# Sentences of different lengths, so the batch has padding, and one over 384 tokens.
SENTENCES = ["A man is playing a guitar.", "Hi",
             "The relative position bias is shared by every layer, so it is computed once per forward pass.",
             "Someone plays an instrument."]


class Mistake(Exception):
    """A check found a difference; the message says where and, when it can, why."""


# ----------------------------------------------------------------------------- shared, loaded once
@cache
def encoder() -> mpnet.SentenceEncoder:
    torch.manual_seed(0)
    return mpnet.SentenceEncoder.from_pretrained()


# The fixture's two 384-token sentences, longest first, pad two short ones to 384 in a batch of 4,
# so padding is still exercised, without 30 short sentences padded to 384 as a batch of 32 would.
FIXTURE_BATCH = 4


@cache
def fixture() -> tuple[list[str], torch.Tensor]:
    raw = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return raw["sentences"], torch.tensor(raw["embeddings"], dtype=torch.float32)


def batch() -> dict[str, torch.Tensor]:
    return encoder().tokenize(SENTENCES)


def token(row: int, col: int) -> str:
    """The token at (sentence, position) of batch(), as text."""
    ids = batch()["input_ids"]
    return encoder().tokenizer.tok.id_to_token(int(ids[row, col]))


@contextmanager
def plugged(owner: object, name: str, fn: Callable):
    """owner.name = fn for the duration: the real model then calls the learner's function."""
    reference_states()  # computed (once) before anything is swapped, so that it is the project's own
    old = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
    setattr(owner, name, fn)
    try:
        yield
    finally:
        setattr(owner, name, old)


def tensor_result(got: object, want: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(got, torch.Tensor):
        raise Mistake(f"{what} must return a torch.Tensor, yours returned {type(got).__name__}")
    if got.shape != want.shape:
        raise Mistake(f"{what} returned shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    return got


def end_to_end(what: str) -> str:
    """Encode the 36 parity sentences with the learner's function plugged in; compare with
    sentence-transformers. On a difference, name the first place (layer) where it shows."""
    sentences, reference = fixture()
    ours = encoder().encode(sentences, batch_size=FIXTURE_BATCH)
    diff = float((ours - reference).abs().max())
    if not diff <= TOLERANCE:
        raise Mistake(f"{what} in the real model: the embeddings differ from sentence-transformers' by {diff:.2e} "
                      f"(more than {TOLERANCE:g}); {first_divergence()}")
    return f"max |diff| {diff:.1e} vs sentence-transformers over {len(sentences)} sentences, with your {what} in the model"


@cache
def reference_states() -> list[torch.Tensor]:
    return our_hidden_states(encoder(), batch())


def first_divergence() -> str:
    """Which hidden state first differs from the project's own (which matches transformers' MPNetModel)."""
    _, first = report(compare(our_hidden_states(encoder(), batch()), reference_states()), LAYER_TOLERANCE)
    return f"first divergence: {first}" if first else "every layer agrees, so look after the layers (pooling)"


def first_difference(got: torch.Tensor, want: torch.Tensor, tol: float) -> tuple[int, ...] | None:
    """Index of the first element over tol (NaN counts as over), or None."""
    bad = ~((got.float() - want.float()).abs() <= tol)
    return tuple(int(i) for i in bad.nonzero()[0]) if bad.any() else None


# ----------------------------------------------------------------------------- encoder, mpnet.py
def check_position_ids(fn: Callable) -> str:
    ids = batch()["input_ids"]
    want = mpnet.position_ids_from(ids, 1)
    got = tensor_result(fn(ids.clone(), 1), want, "position_ids_from")
    if got.is_floating_point():
        raise Mistake(f"position ids index the position table, so they must be integers; yours are {got.dtype}")
    if where := first_difference(got, want, 0):
        row, col = where
        is_pad = int(ids[row, col]) == 1
        why = ("every padding position gets padding_idx (1) itself" if is_pad else
               "real tokens count up from padding_idx + 1 = 2 (RoBERTa's numbering), so the first one reads row 2")
        raise Mistake(f"sentence {row}, position {col} ({'<pad>' if is_pad else repr(token(row, col))}): your position "
                      f"id is {int(got[row, col])}, expected {int(want[row, col])}: {why}")
    other = torch.tensor([[7, 7, 7, 5], [7, 5, 5, 5]])  # padding_idx 5: no hard-coded 1 or 2
    if not torch.equal(fn(other, 5), mpnet.position_ids_from(other, 5)):
        raise Mistake(f"with padding_idx=5, ids {other.tolist()} should give {mpnet.position_ids_from(other, 5).tolist()}, "
                      f"yours gave {fn(other, 5).tolist()}: use padding_idx, not the value 1")
    with plugged(mpnet, "position_ids_from", fn):
        return end_to_end("position_ids_from")


def bucket_reason(offset: int, num_buckets: int, max_distance: int) -> str:
    half, distance = num_buckets // 2, abs(offset)
    exact = half // 2
    side = (f"offset {offset:+d}: the key is {distance} to the left of the query, the lower half (0..{half - 1})"
            if offset <= 0 else f"offset {offset:+d}: the key is {distance} to the right of the query, the upper half "
                                f"({half}..{num_buckets - 1})")
    if distance < exact:
        return f"{side}; distances below {exact} get a bucket each"
    if distance < max_distance:
        return f"{side}; distances {exact}..{max_distance - 1} are log-spaced over buckets {exact}..{half - 1}"
    return f"{side}; distances of {max_distance} and more share the last bucket of their half"


def check_bucket(fn: Callable) -> str:
    offsets = torch.arange(-300, 301)
    offsets = offsets[offsets.abs().argsort(stable=True)]  # report the smallest wrong distance first
    for num_buckets, max_distance in ((32, 128), (16, 64)):
        want = mpnet.relative_position_bucket(offsets, num_buckets, max_distance)
        got = tensor_result(fn(offsets, num_buckets, max_distance), want, "relative_position_bucket")
        if got.is_floating_point():
            raise Mistake(f"buckets index the bias table, so they must be integers; yours are {got.dtype}")
        if where := first_difference(got, want, 0):
            o = int(offsets[where[0]])
            setting = "" if num_buckets == 32 else f" (with num_buckets={num_buckets}, max_distance={max_distance})"
            raise Mistake(f"your bucket for offset {o:+d} is {int(got[where])}, expected {int(want[where])}{setting}: "
                          f"{bucket_reason(o, num_buckets, max_distance)}")
    with plugged(mpnet, "relative_position_bucket", fn):
        return end_to_end("relative_position_bucket")


def check_mask(fn: Callable) -> str:
    model, mask = encoder().model, batch()["attention_mask"]
    with torch.no_grad():
        want = mpnet.MPNet.attention_mask(model, mask, torch.float32)
        got = fn(model, mask, torch.float32)
    if not isinstance(got, torch.Tensor) or got.dtype != torch.float32:
        raise Mistake(f"attention_mask must return a float32 tensor (the dtype asked for), yours returned "
                      f"{getattr(got, 'dtype', type(got).__name__)}")
    try:
        got = got.expand(want.shape)
    except RuntimeError:
        raise Mistake(f"attention_mask returned shape {tuple(got.shape)}, expected {tuple(want.shape)} "
                      f"(batch, heads, queries, keys) or one that broadcasts to it") from None
    B, H, L, _ = want.shape
    for s in range(B):
        for key in range(L):
            is_pad = int(mask[s, key]) == 0
            value = float(got[s, 0, 0, key])
            if is_pad and not value <= -1e4:
                raise Mistake(f"sentence {s}, key {key} is padding, but your mask adds {value:.3g} there: padded keys "
                              f"need a large negative term (torch.finfo(dtype).min) so that softmax gives them 0")
            if not is_pad and not value > -1e4:
                raise Mistake(f"sentence {s}, key {key} ({token(s, key)!r}) is a real token, but your mask adds {value:.3g} "
                              f"there: the padding term has the wrong sign or the wrong positions; "
                              f"(1 - attention_mask) * finfo.min masks only the pads")
    # Compared where query and key are both real: rows of padded queries are dropped after attention.
    real = (mask[:, None, :, None] * mask[:, None, None, :]).bool().expand(want.shape)
    if where := first_difference(torch.where(real, got, 0), torch.where(real, want, 0), 1e-6):
        s, h, q, k = where
        if torch.allclose(got[real], want.transpose(2, 3)[real], atol=1e-6):
            raise Mistake("your bias is transposed: offsets are key - query (idx[None, :] - idx[:, None]), "
                          "so a key to the right of its query has a positive offset; yours is query - key")
        bucket = int(mpnet.relative_position_bucket(torch.tensor(k - q)))
        raise Mistake(f"sentence {s}, head {h}, query {q}, key {k}: your mask is {float(got[where]):.4f}, expected "
                      f"{float(want[where]):.4f}, relative_bias[{bucket}, {h}] (offset {k - q:+d} is bucket {bucket})")
    with plugged(mpnet.MPNet, "attention_mask", fn):
        return end_to_end("attention_mask")


def layer_zero_inputs() -> dict:
    """What attention and layer 0 receive on the real batch, recorded from the real forward pass."""
    seen = {}
    model, b = encoder().model, batch()

    class Seen(Exception):
        pass

    def record(self, x, mask):
        seen.update(x=x, mask=mask)
        raise Seen  # layer 0's input is all we need

    with plugged(mpnet.Layer, "forward", record), torch.no_grad():
        try:
            model(b["input_ids"], b["attention_mask"])
        except Seen:
            pass
    layer = model.layers[0]
    x = seen["x"]
    B, L, D = x.shape
    H = layer.attn.n_heads
    to_heads = lambda t: t.view(B, L, H, D // H).transpose(1, 2)
    with torch.no_grad():
        seen.update(q=to_heads(layer.attn.q(x)), k=to_heads(layer.attn.k(x)), v=to_heads(layer.attn.v(x)))
    return seen


def check_attention(fn: Callable) -> str:
    seen, attn = layer_zero_inputs(), encoder().model.layers[0].attn
    q, k, v, mask = seen["q"], seen["k"], seen["v"], seen["mask"]
    with torch.no_grad():
        want = mpnet.SelfAttention.attend(attn, q, k, v, mask)
        got = tensor_result(fn(attn, q, k, v, mask), want, "attend")
    real = batch()["attention_mask"][:, None, :, None].bool().expand(want.shape)  # outputs at padded queries are dropped
    if where := first_difference(torch.where(real, got, 0), torch.where(real, want, 0), 1e-5):
        d = q.shape[-1]
        known = {
            "no 1/sqrt(head_dim) scale on the scores": (q @ k.transpose(-1, -2) + mask).softmax(-1) @ v,
            "a 1/head_dim scale on the scores; it is 1/sqrt(head_dim) = 1/8": (q @ k.transpose(-1, -2) / d + mask).softmax(-1) @ v,
            "the softmax over the queries (dim -2); each query's weights over the keys must sum to 1":
                (q @ k.transpose(-1, -2) / math.sqrt(d) + mask).softmax(-2) @ v,
            "the mask left out: the relative position bias and the padding are both in it":
                (q @ k.transpose(-1, -2) / math.sqrt(d)).softmax(-1) @ v,
        }
        named = [name for name, wrong in known.items() if torch.allclose(torch.where(real, got, 0), torch.where(real, wrong, 0), atol=1e-5)]
        s, h, query, _ = where
        raise Mistake(f"sentence {s}, head {h}, query {query} ({token(s, query)!r}) in layer 0: your output differs by "
                      f"{float((got[s, h, query] - want[s, h, query]).abs().max()):.3g}"
                      + (f"; it matches {named[0]}" if named else ""))
    with plugged(mpnet.SelfAttention, "attend", fn):
        return end_to_end("attend")


def check_layer(fn: Callable) -> str:
    seen, layer = layer_zero_inputs(), encoder().model.layers[0]
    args = (seen["x"], seen["mask"])
    with torch.no_grad():
        want = mpnet.Layer.forward(layer, *args)
        got = tensor_result(fn(layer, *args), want, "Layer.forward")
        if where := first_difference(got, want, 1e-5):
            x, a = seen["x"], layer.attn(*args)
            ffn = lambda h, act=F.gelu: layer.ffn_out(act(layer.ffn_in(h)))
            post = layer.attn_norm(x + a)
            known = {
                "pre-LN, x + f(LN(x)); MPNet was trained post-LN, LN(x + f(x))":
                    (lambda h: h + ffn(layer.ffn_norm(h)))(x + layer.attn(layer.attn_norm(x), *args[1:])),
                "the tanh GELU; MPNet uses the exact (erf) one, F.gelu's default":
                    layer.ffn_norm(post + ffn(post, lambda t: F.gelu(t, approximate="tanh"))),
                "no residual around attention": (lambda h: layer.ffn_norm(h + ffn(h)))(layer.attn_norm(a)),
                "no residual around the feed-forward block": layer.ffn_norm(ffn(post)),
                "a ReLU; MPNet uses the exact (erf) GELU": layer.ffn_norm(post + ffn(post, F.relu)),
                "the two LayerNorms swapped: attn_norm follows attention, ffn_norm the feed-forward block":
                    (lambda h: layer.attn_norm(h + ffn(h)))(layer.ffn_norm(x + a)),
            }
            named = [name for name, wrong in known.items() if torch.allclose(got, wrong, atol=1e-5)]
            s, pos = where[0], where[1]
            raise Mistake(f"layer 0, sentence {s}, token {pos} ({token(s, pos)!r}): your output differs by "
                          f"{float((got[s, pos] - want[s, pos]).abs().max()):.3g}" + (f"; it matches {named[0]}" if named else ""))
    with plugged(mpnet.Layer, "forward", fn):
        return end_to_end("Layer.forward")


def check_pooling(fn: Callable) -> str:
    b = batch()
    mask = b["attention_mask"]
    with torch.no_grad():
        tokens = encoder().model(b["input_ids"], mask)
    # Another model may leave anything at padded positions; so do we here, to be sure they are not read.
    tokens = torch.where(mask[..., None].bool(), tokens, torch.full_like(tokens, 5.0))
    want = mpnet.mean_pool(tokens, mask)
    got = tensor_result(fn(tokens.clone(), mask.clone()), want, "mean_pool")
    if where := first_difference(got, want, 1e-6):
        s = where[0]
        n, L = int(mask[s].sum()), mask.shape[1]
        masked_sum = (tokens * mask[..., None]).sum(1)
        known = {
            f"the mean over all {L} positions; only the {n} real ones count": tokens.mean(1),
            f"the real tokens summed, then divided by all {L} positions instead of the {n} real ones": masked_sum / L,
            "the padded positions summed in: mask the tokens before the sum": tokens.sum(1) / mask.sum(1, keepdim=True),
            "<s> and </s> left out; they count as real tokens (sentence-transformers pools them)":
                (masked_sum - tokens[:, 0] - tokens[torch.arange(len(mask)), mask.sum(1) - 1]) / (mask.sum(1, keepdim=True) - 2),
        }
        named = [name for name, wrong in known.items() if torch.allclose(got[s], wrong[s], atol=1e-5)]
        raise Mistake(f"sentence {s} ({n} real tokens, {L - n} padded): your pooled embedding differs by "
                      f"{float((got[s] - want[s]).abs().max()):.3g}" + (f"; it is {named[0]}" if named else ""))
    empty = mask.clone()
    empty[0] = 0  # the contract's third point: a sentence with no real token
    got = fn(tokens.clone(), empty)
    if isinstance(got, torch.Tensor) and not bool(torch.isfinite(got[0]).all()):
        raise Mistake("a sentence with no real token (its mask all 0) gave NaN or inf: 0 / 0. Clamp the "
                      "count of real tokens to a tiny positive value before you divide, as the contract says")
    with plugged(mpnet, "mean_pool", fn):
        return end_to_end("mean_pool")


def check_names(fn: Callable) -> str:
    for cfg in (encoder().model.cfg, mpnet.MPNetConfig(num_hidden_layers=3)):
        want, got = mpnet.checkpoint_names(cfg), fn(cfg)
        if not isinstance(got, dict):
            raise Mistake(f"checkpoint_names must return a dict, yours returned {type(got).__name__}")
        layers = "" if cfg.num_hidden_layers == 12 else f" (for a {cfg.num_hidden_layers}-layer config)"
        for src, dst in want.items():
            if src not in got:
                raise Mistake(f"{src} is missing{layers}: it should fill {dst}")
            if got[src] != dst:
                raise Mistake(f"{src} is mapped to {got[src]!r}, expected {dst!r}{layers}")
        for src in got.keys() - want.keys():
            why = ("it is deliberately unused (mpnet.SKIPPED)" if src in mpnet.SKIPPED
                   else "no tensor of that name is in model.safetensors" + layers)
            raise Mistake(f"{src} should not be in the map: {why}")
    folder = mpnet.weights_dir()
    with plugged(mpnet, "checkpoint_names", fn):
        model = mpnet.load_checkpoint(folder / "model.safetensors", encoder().model.cfg).eval()
    sentences, reference = fixture()
    ours = mpnet.SentenceEncoder(model, encoder().tokenizer).encode(sentences, batch_size=FIXTURE_BATCH)
    diff = float((ours - reference).abs().max())
    if not diff <= TOLERANCE:
        raise Mistake(f"the model loaded with your map differs from sentence-transformers by {diff:.2e}")
    return (f"all {len(want)} tensors mapped; max |diff| {diff:.1e} vs sentence-transformers over "
            f"{len(sentences)} sentences, loaded through your map")


# ----------------------------------------------------------------------------- multi-task, heads.py
@cache
def review_logits() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Logits of the two review tasks for 8 real review sentences, and their real labels."""
    topic, sentiment = read_reviews("topic", "train"), read_reviews("sentiment", "train")
    torch.manual_seed(0)
    model = heads.MultiTaskModel(encoder().model, {"topic": len(topic.label_names), "sentiment": 2}).eval()
    b = encoder().tokenize(topic.texts[:8])
    with torch.no_grad():
        logits = model(b["input_ids"], b["attention_mask"])
    return logits, {"topic": torch.tensor(topic.labels[:8]), "sentiment": torch.tensor(sentiment.labels[:8])}


def loss_mistakes(logits: dict[str, torch.Tensor], y: dict[str, torch.Tensor],
                  weights: dict[str, float] | None) -> dict[float, str]:
    """The totals that the usual wrong denominators give, each with its reason."""
    summed, labelled, rows = {}, {}, {}
    for task, z in logits.items():
        keep = y[task] != IGNORE
        summed[task] = float(F.cross_entropy(z.float(), y[task], ignore_index=IGNORE, reduction="sum"))
        labelled[task], rows[task] = int(keep.sum()), len(keep)
    w = {t: (weights or {}).get(t, 1.0) for t in logits}
    present = [t for t in logits if labelled[t]]
    mistakes = {
        sum(w[t] * summed[t] / rows[t] for t in present):
            "each task's summed loss is divided by all the rows in the batch; divide by the rows labelled for "
            "that task (an unlabelled row, -100, is not a zero loss: it is no example at all)",
        sum(w[t] * summed[t] for t in present) / max(1, sum(labelled[t] for t in present)):
            "the rows of all tasks share one denominator; each task's loss is the mean over its own labelled "
            "rows, and then the tasks' means are summed (weighted)",
        sum(w[t] * summed[t] / labelled[t] for t in present) / max(1, len(present)):
            "the tasks' means are averaged; multitask_loss sums them (each times its weight), so that adding "
            "a task does not shrink the others' gradients",
    }
    return {value: why for value, why in mistakes.items() if math.isfinite(value)}


def check_loss(fn: Callable) -> str:
    logits, labels = review_logits()
    partly = {"topic": labels["topic"].clone(), "sentiment": labels["sentiment"].clone()}
    partly["topic"][[1, 4]] = IGNORE
    partly["sentiment"][[0, 2, 5]] = IGNORE
    cases = [
        ("both tasks labelled on all 8 rows", labels, None),
        ("rows 1 and 4 have no topic label, rows 0, 2 and 5 no sentiment label (-100)", partly, None),
        ("no row has a sentiment label (the sampler draws such batches)",
         {"topic": labels["topic"], "sentiment": torch.full((8,), IGNORE)}, None),
        ("task weights topic 1.0, sentiment 0.3", partly, {"topic": 1.0, "sentiment": 0.3}),
    ]
    for case, y, weights in cases:
        ours = {t: v.clone().requires_grad_() for t, v in logits.items()}
        theirs = {t: v.clone().requires_grad_() for t, v in logits.items()}
        want, want_parts = heads.multitask_loss(theirs, y, task_weights=weights)
        result = fn(ours, {t: v.clone() for t, v in y.items()}, task_weights=weights)
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.Tensor)):
            raise Mistake("multitask_loss must return (total loss tensor, {task: mean loss as a float})")
        got, got_parts = result
        if not math.isclose(float(got.detach()), float(want.detach()), rel_tol=1e-5, abs_tol=1e-6):
            hint = ""
            if math.isnan(float(got.detach())):
                hint = ": a task with no label in the batch adds zero (cross-entropy over no rows is 0 / 0 = NaN)"
            for wrong, why in loss_mistakes(logits, y, weights).items():
                if math.isclose(float(got.detach()), wrong, rel_tol=1e-5, abs_tol=1e-6):
                    hint = f": {why}"
                    break
            raise Mistake(f"{case}: your total loss is {float(got.detach()):.5f}, expected {float(want.detach()):.5f}{hint}")
        for task, value in want_parts.items():
            mine = got_parts.get(task) if isinstance(got_parts, dict) else None
            same = mine is not None and (math.isclose(float(mine), value, rel_tol=1e-5) or (math.isnan(value) and math.isnan(float(mine))))
            if not same:
                raise Mistake(f"{case}: your per-task loss for {task} is {mine}, expected {value:.5f} "
                              f"(the mean over the rows labelled for it; NaN when there are none)")
        if not got.requires_grad:
            raise Mistake(f"{case}: your total loss carries no gradient; build it from the logits, not from floats")
        got.backward()
        want.backward()
        for task in logits:  # a task that adds nothing gets no gradient: None, or zeros
            g, want_g = (t.grad if t.grad is not None else torch.zeros_like(t) for t in (ours[task], theirs[task]))
            if where := first_difference(g, want_g, 1e-6):
                raise Mistake(f"{case}: the gradient reaching the {task} logits of row {where[0]} differs "
                              f"({float(g[where]):.4g}, expected {float(want_g[where]):.4g})")
    return (f"the same total, per-task losses and gradients as heads.multitask_loss in {len(cases)} cases, "
            f"on the real model's logits for 8 review sentences")


# ----------------------------------------------------------------------------- freezing, freeze.py
@cache
def review_model() -> heads.MultiTaskModel:
    torch.manual_seed(0)
    return heads.MultiTaskModel(encoder().model, {"topic": 5, "sentiment": 2})


def trainable_groups(model: heads.MultiTaskModel) -> dict[str, str]:
    """{group: trainable | frozen | mixed} over the backbone's layer groups and the heads."""
    parts = freeze.backbone_groups(model) + [(f"head.{t}", list(h.parameters())) for t, h in model.heads.items()]
    states = {}
    for name, params in parts:
        flags = {p.requires_grad for p in params}
        states[name] = "mixed" if len(flags) == 2 else ("trainable" if flags.pop() else "frozen")
    return states


def backward_on_reviews(model: heads.MultiTaskModel) -> dict[str, torch.Tensor]:
    """loss.backward() on 8 real review sentences; returns the weights as they were, for put_back()."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _, labels = review_logits()
    b = encoder().tokenize(read_reviews("topic", "train").texts[:8])
    loss, _ = heads.multitask_loss(model(b["input_ids"], b["attention_mask"]), labels)
    loss.backward()
    return before


@torch.no_grad()
def put_back(model: heads.MultiTaskModel, before: dict[str, torch.Tensor]) -> None:
    for n, p in model.named_parameters():
        p.copy_(before[n])


def changed_by_one_step(model: heads.MultiTaskModel) -> set[str]:
    """One AdamW step on 8 real review sentences; the names of the parameters it changed (then put back)."""
    freeze.train_mode(model)
    before = backward_on_reviews(model)
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3).step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    put_back(model, before)
    model.zero_grad(set_to_none=True)
    model.eval()
    return changed


def check_top_k(fn: Callable) -> str:
    model = review_model()
    try:
        for k in range(13):
            freeze.set_trainable(model.parameters(), True)
            fn(model, k)
            got = trainable_groups(model)
            freeze.set_trainable(model.parameters(), True)
            freeze.unfreeze_top(model, k)
            want = trainable_groups(model)
            for group, state in want.items():
                if got[group] != state:
                    top = ", ".join(f"layer.{i}" for i in range(12 - k, 12)) or "none"
                    hint = (" (groups[-0:] is the whole list: slice from len(groups) - k)" if k == 0 and
                            got["embeddings"] == "trainable" else "")
                    raise Mistake(f"k={k}: {group} is {got[group]}, expected {state}; top-{k} trains the heads and the top "
                                  f"{k} of the 12 layers ({top}), nothing below{hint}")
        for k in (13, -1):
            try:
                fn(model, k)
            except ValueError:
                continue
            raise Mistake(f"k={k}: expected a ValueError (k must be between 0 and 12), got none")
        freeze.set_trainable(model.parameters(), True)
        fn(model, 2)
        changed = changed_by_one_step(model)
        expected = {n for n, p in model.named_parameters() if n.startswith(("heads.", "backbone.layers.10.", "backbone.layers.11."))}
        if changed != expected:
            raise Mistake(f"after top-2, one training step changed {len(changed)} tensors, expected {len(expected)}")
    finally:
        freeze.set_trainable(model.parameters(), True)
    n = sum(model.get_parameter(name).numel() for name in changed)
    return (f"the same trainable groups as freeze.unfreeze_top for k = 0..12; one AdamW step on 8 review sentences "
            f"after top-2 changed exactly the heads and layers 10-11 ({n:,} parameters)")


def check_gradual(fn: Callable) -> str:
    model = review_model()

    def schedule(unfreeze_next: Callable) -> list[tuple[object, dict[str, str]]]:
        with plugged(freeze.GradualUnfreezer, "unfreeze_next", unfreeze_next):
            freeze.set_trainable(model.parameters(), True)
            unfreezer = freeze.GradualUnfreezer(model, every_steps=1)
            steps = [(None, trainable_groups(model))]
            for call in range(1, 15):
                try:
                    name = unfreezer.unfreeze_next()
                except IndexError as e:
                    raise Mistake(f"call {call}: your unfreeze_next raised IndexError ({e}); once all 13 groups are "
                                  f"unfrozen it returns None") from None
                steps.append((name, trainable_groups(model)))
            return steps

    try:
        want = schedule(freeze.GradualUnfreezer.__dict__["unfreeze_next"])
        got = schedule(fn)
        for call, ((got_name, got_state), (want_name, want_state)) in enumerate(zip(got, want)):
            if got_name != want_name or got_state != want_state:
                now = [g for g, s in got_state.items() if s != "frozen" and not g.startswith("head.")]
                raise Mistake(f"call {call}: you returned {got_name!r} and the backbone's trainable groups are "
                              f"{now or 'none'}; expected {want_name!r}. ULMFiT unfreezes from the top, layer.11 "
                              f"first and the embeddings last, one group per call, then returns None")
        with plugged(freeze.GradualUnfreezer, "unfreeze_next", fn):
            freeze.set_trainable(model.parameters(), True)
            freeze.GradualUnfreezer(model, every_steps=1).catch_up(2)
        changed = changed_by_one_step(model)
    finally:
        freeze.set_trainable(model.parameters(), True)
    if any(n.startswith("backbone.") and not n.startswith(("backbone.layers.10.", "backbone.layers.11.")) for n in changed):
        raise Mistake("after two unfreezing calls, a training step changed layers below layer.10")
    return (f"the same 13 unfreezing steps as freeze.GradualUnfreezer on the real model (top first, then None); "
            f"a training step after two calls changed {len(changed)} tensors: the heads and layers 10-11")


# ----------------------------------------------------------------------------- layer-wise LRs, lr_groups.py
def per_parameter(groups: object, model: heads.MultiTaskModel) -> dict[str, tuple[float, float]]:
    """{parameter name: (lr, weight decay)} from a list of AdamW groups; each parameter exactly once."""
    if not isinstance(groups, list) or not all(isinstance(g, dict) and "params" in g for g in groups):
        raise Mistake("build must return a list of dicts, each with 'params', 'lr' and 'weight_decay'")
    name_of = {id(p): n for n, p in model.named_parameters()}
    found: dict[str, tuple[float, float]] = {}
    for g in groups:
        for p in g["params"]:
            name = name_of.get(id(p), "a tensor that is not the model's")
            if name in found:
                raise Mistake(f"{name} is in two groups; AdamW refuses a parameter that appears twice")
            found[name] = (g.get("lr"), g.get("weight_decay"))
    for name in name_of.values():
        if name not in found:
            raise Mistake(f"{name} is in no group: AdamW would never update it (keep frozen ones too, for gradual unfreezing)")
    return found


def check_llrd(fn: Callable) -> str:
    model = review_model()
    top = model.backbone.cfg.num_hidden_layers
    for spec, base_lr, head_lr in (("llrd:0.9", 5e-5, None), ("llrd:0.75", 2e-5, 1e-3)):
        got = per_parameter(fn(model, spec, base_lr, head_lr=head_lr, weight_decay=0.01), model)
        want = per_parameter(lr_groups.build(model, spec, base_lr, head_lr=head_lr, weight_decay=0.01), model)
        for name, (lr, wd) in want.items():
            mine_lr, mine_wd = got[name]
            if not isinstance(mine_lr, (int, float)):
                raise Mistake(f"{spec}: the group of {name} has lr {mine_lr!r}; each group needs a number")
            if not math.isclose(mine_lr, lr, rel_tol=1e-9):
                if name.startswith("heads."):
                    why = f"the heads get head_lr ({head_lr}), or base_lr when head_lr is None"
                else:
                    depth = lr_groups.depth_of(name.removeprefix("backbone."))
                    why = (f"depth {depth}: base_lr x {spec[5:]} ** ({top} - {depth}); layer i is depth i + 1, the "
                           f"embeddings and relative_bias depth 0, so the top layer gets base_lr")
                raise Mistake(f"{spec}, base_lr {base_lr}: {name} has lr {mine_lr:.4g}, expected {lr:.4g} ({why})")
            if mine_wd != wd:
                raise Mistake(f"{spec}: {name} has weight decay {mine_wd!r}, expected {wd}: biases, LayerNorm weights "
                              f"and relative_bias are not decayed, every other weight is")
    changed = one_adamw_step_difference(model, fn(model, "llrd:0.9", 1e-3), lr_groups.build(model, "llrd:0.9", 1e-3))
    return (f"every parameter at the same lr and weight decay as lr_groups.build for llrd:0.9 and llrd:0.75; one AdamW "
            f"step on 8 review sentences with your groups moves the weights as the project's do (max |diff| {changed:.1e})")


def one_adamw_step_difference(model: heads.MultiTaskModel, ours: list[dict], theirs: list[dict]) -> float:
    """The same gradients, one AdamW step with each set of groups: the largest difference in the weights."""
    before = backward_on_reviews(model)
    after = []
    for groups in (ours, theirs):
        torch.optim.AdamW([{k: v for k, v in g.items() if k in ("params", "lr", "weight_decay")} for g in groups]).step()
        after.append({n: p.detach().clone() for n, p in model.named_parameters()})
        put_back(model, before)
    model.zero_grad(set_to_none=True)
    return max(float((after[0][n] - after[1][n]).abs().max()) for n in before)


# ----------------------------------------------------------------------------- pair losses, heads.py
@cache
def stsb_embeddings(positives: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pair task's output for the first 16 STS-B training pairs (all, or those scored 4 or more: a
    positive pair), from the real model: the mean-pooled embeddings of their first sentences and of
    their second ones, not normalised (as heads.classify gives them), and the gold scores / 5."""
    pairs = data.load_stsb("train")
    rows = [i for i, score in enumerate(pairs.scores) if score >= 4.0 or not positives][:16]
    model = heads.MultiTaskModel(encoder().model, {})
    both = model.encode(encoder().tokenizer, [pairs.first[i] for i in rows] + [pairs.second[i] for i in rows])
    return both[:16], both[16:], torch.tensor([pairs.scores[i] / 5 for i in rows])


def loss_value(got: object, want: torch.Tensor, what: str, case: str, recognisers: dict[str, float]) -> None:
    """got must be a scalar tensor with want's value. fp32 sums of up to B * B = 256 terms in another order
    differ by ~256 x 6e-8 = 1.5e-5 relative at worst, and a loss near 0 is a difference of logits of ~scale
    (20 x 6e-8 = 1.2e-6 absolute per rounding), so rel 1e-4, abs 1e-5 pass any right order; each mistake
    the recognisers know moves the loss by more than that (the cases are chosen so)."""
    if not (isinstance(got, torch.Tensor) and got.dim() == 0):
        raise Mistake(f"{what} must return a scalar tensor (the batch's mean loss), yours returned "
                      f"{type(got).__name__}{tuple(got.shape) if isinstance(got, torch.Tensor) else ''}")
    value, expected = float(got.detach()), float(want.detach())
    if not math.isclose(value, expected, rel_tol=1e-4, abs_tol=1e-5):
        named = next((why for why, v in recognisers.items() if math.isclose(value, v, rel_tol=1e-4, abs_tol=1e-5)), "")
        raise Mistake(f"{case}: your loss is {value:.5f}, expected {expected:.5f}{': ' + named if named else ''}")


def loss_gradients(first: torch.Tensor, second: torch.Tensor, fn: Callable, reference: Callable, case: str,
                   *args) -> None:
    """The gradient reaching each embedding is the project's, to 1e-4 of the largest one."""
    grads = []
    for loss_fn in (fn, reference):
        a, b = first.clone().requires_grad_(), second.clone().requires_grad_()
        loss = loss_fn(a, b, *args)
        if not loss.requires_grad:
            raise Mistake(f"{case}: your loss carries no gradient; build it from the embeddings, not from floats")
        loss.backward()
        grads.append(torch.cat([a.grad if a.grad is not None else torch.zeros_like(a),
                                b.grad if b.grad is not None else torch.zeros_like(b)]))
    tol = 1e-4 * float(grads[1].abs().max())
    if where := first_difference(grads[0], grads[1], tol):
        side, row = ("first", where[0]) if where[0] < len(first) else ("second", where[0] - len(first))
        raise Mistake(f"{case}: the gradient reaching pair {row}'s {side} embedding differs "
                      f"({float(grads[0][where]):.4g}, expected {float(grads[1][where]):.4g})")


def sentence_transformers_value(loss_class: str, first: torch.Tensor, second: torch.Tensor,
                                scores: torch.Tensor | None, yours: torch.Tensor) -> str:
    """What sentence-transformers' own loss gives on the same embeddings, beside yours; a line saying how to
    get it where the library is not installed (it is a test requirement, never a run-time one)."""
    try:
        from sentence_transformers.sentence_transformer import losses
    except ImportError:
        return "; pip install -r requirements-test.txt to compare with sentence-transformers' own loss too"

    class NoModel(torch.nn.Module):  # the loss classes want a model; compute_loss_from_embeddings never uses it
        pass
    theirs = float(getattr(losses, loss_class)(NoModel()).compute_loss_from_embeddings([first, second], scores))
    if not math.isclose(float(yours), theirs, rel_tol=1e-4, abs_tol=1e-5):
        raise Mistake(f"your loss is {float(yours):.5f}, sentence-transformers' {loss_class} gives {theirs:.5f} "
                      f"on the same embeddings")
    return f"; sentence-transformers' {loss_class} gives {theirs:.5f} on the same embeddings, yours {float(yours):.5f}"


def cosent_mistakes(first: torch.Tensor, second: torch.Tensor, scores: torch.Tensor, scale: float) -> dict[str, float]:
    """The values of the wrong CoSENTs people write, to name the one a learner wrote."""
    cos = F.cosine_similarity(first, second, dim=-1)
    dot = (first * second).sum(-1)

    def softened(c: torch.Tensor, order: torch.Tensor, one: bool) -> float:
        diff = (c[:, None] - c[None, :]).masked_fill(~order, float("-inf")).flatten()
        return float(torch.logsumexp(torch.cat([diff.new_zeros(int(one)), diff]), dim=0))
    lower = scores[:, None] < scores[None, :]
    return {"the 1 inside the log is missing (log(1 + sum), not log(sum): the loss of a batch in the right order is 0)":
                softened(scale * cos, lower, one=False),
            "pairs of pairs with equal gold scores count too; only score_i < score_j counts (ties say nothing about order)":
                softened(scale * cos, (scores[:, None] <= scores[None, :]).fill_diagonal_(False), one=True),
            "score_i <= score_j counts each pair against itself (i = j), and ties; only score_i < score_j counts":
                softened(scale * cos, scores[:, None] <= scores[None, :], one=True),
            "the cosines are not multiplied by scale": softened(cos, lower, one=True),
            "the sign is reversed: a pair of pairs is in the wrong order when score_i < score_j but cos_i > cos_j, "
            "so the term is exp(scale * (cos_i - cos_j))": softened(scale * cos, scores[:, None] > scores[None, :], one=True),
            "that is the dot product of the embeddings, not their cosine (the pair task's embeddings are not normalised)":
                softened(scale * dot, lower, one=True)}


def check_cosent(fn: Callable) -> str:
    first, second, scores = stsb_embeddings(positives=False)
    ties = int((scores[:, None] == scores[None, :]).triu(1).sum())
    cases = [(f"16 STS-B training pairs, gold scores / 5 ({ties} ties)", first, second, scores, 20.0),
             ("the same pairs, scale 10", first, second, scores, 10.0),
             ("the first 4 pairs, every score 0.5 (no pair of pairs is ordered)", first[:4], second[:4],
              torch.full((4,), 0.5), 20.0)]
    for case, a, b, s, scale in cases:
        got = fn(a.clone(), b.clone(), s.clone(), scale=scale)
        want = heads.cosent_loss(a, b, s, scale=scale)
        loss_value(got, want, "cosent_loss", case, cosent_mistakes(a, b, s, scale))
    loss_gradients(first, second, lambda a, b: fn(a, b, scores, scale=20.0),
                   lambda a, b: heads.cosent_loss(a, b, scores, scale=20.0), cases[0][0])
    yours = fn(first.clone(), second.clone(), scores.clone(), scale=20.0)
    return (f"the same loss and gradients as heads.cosent_loss in {len(cases)} cases, on the real model's embeddings of "
            f"16 STS-B pairs" + sentence_transformers_value("CoSENTLoss", first, second, scores, yours))


def in_batch_mistakes(anchors: torch.Tensor, positives: torch.Tensor, scale: float) -> dict[str, float]:
    """The values of the wrong in-batch-negative losses people write."""
    a, p = F.normalize(anchors, dim=-1), F.normalize(positives, dim=-1)
    labels = torch.arange(len(a))
    sims = scale * a @ p.T
    return {"each positive picks among the anchors (positives @ anchors.T): here anchor i picks among the positives":
                float(F.cross_entropy(scale * p @ a.T, labels)),
            "that is the symmetric loss (anchor to positive and back, averaged); this one is anchor to positive only":
                float((F.cross_entropy(sims, labels) + F.cross_entropy(sims.T, labels)) / 2),
            "the cosines are not multiplied by scale": float(F.cross_entropy(a @ p.T, labels)),
            "that is the dot product of the embeddings, not their cosine (the pair task's embeddings are not normalised)":
                float(F.cross_entropy(scale * anchors @ positives.T, labels)),
            "that is the sum over the batch; the loss is the mean": float(F.cross_entropy(sims, labels, reduction="sum"))}


def check_in_batch(fn: Callable) -> str:
    anchors, positives, _ = stsb_embeddings(positives=True)
    cases = [("16 STS-B training pairs scored 4 or more, as (anchor, positive)", anchors, positives, 20.0),
             ("the same pairs, scale 5 (a higher temperature: the negatives weigh more)", anchors, positives, 5.0),
             ("the first 4 of them, scale 5 (a smaller batch: 3 negatives each, not 15)", anchors[:4], positives[:4], 5.0)]
    for case, a, p, scale in cases:
        got = fn(a.clone(), p.clone(), scale=scale)
        want = heads.in_batch_negatives_loss(a, p, scale=scale)
        loss_value(got, want, "in_batch_negatives_loss", case, in_batch_mistakes(a, p, scale))
    loss_gradients(anchors, positives, lambda a, p: fn(a, p, scale=5.0),
                   lambda a, p: heads.in_batch_negatives_loss(a, p, scale=5.0), cases[1][0])
    yours = fn(anchors.clone(), positives.clone(), scale=20.0)
    return (f"the same loss and gradients as heads.in_batch_negatives_loss in {len(cases)} cases, on the real model's "
            f"embeddings of 16 STS-B pairs" + sentence_transformers_value("MultipleNegativesRankingLoss", anchors,
                                                                         positives, None, yours))
