"""quant.py: exact int8 products on every kernel path, an error bound derived from the rounding,
smoothing that earns its keep, and the int8 encoder's quality against sentence-transformers."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from speed.quant import (EXACT_FP32_TERMS, INPUT_MAX, WEIGHT_MAX, Int8Linear, exact_int_mm, fbgemm_pack, fbgemm_sums,
                         quantize)

FBGEMM = "fbgemm" in torch.backends.quantized.supported_engines  # every x86 build of torch; CI runs on x86

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "reference.json").read_text(encoding="utf-8"))


def int8_operands(m: int, k: int, n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Inputs (m, k) and weights (n, k) at random and at both extremes of their ranges, where sums are largest."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randint(-INPUT_MAX, INPUT_MAX + 1, (m, k), generator=g, dtype=torch.int8),
          torch.full((m, k), INPUT_MAX, dtype=torch.int8), torch.full((m, k), -INPUT_MAX, dtype=torch.int8)]
    ws = [torch.randint(-WEIGHT_MAX, WEIGHT_MAX + 1, (n, k), generator=g, dtype=torch.int8),
          torch.full((n, k), WEIGHT_MAX, dtype=torch.int8), torch.full((n, k), -WEIGHT_MAX, dtype=torch.int8)]
    return xs, ws


@pytest.mark.numerics
@pytest.mark.parametrize("m, k, n", [(7, 768, 768), (33, 3072, 768)])
def test_int_mm_is_exact_for_7_bit_weights_on_this_kernel_path(m, k, n):
    """.ci/run reruns this with oneDNN capped at AVX2 and at SSE4.1, where 8-bit weights give wrong sums
    (int16 saturation in vpmaddubsw; see quant.py). Extremes of both ranges, and random values."""
    xs, ws = int8_operands(m, k, n)
    for x in xs:
        for w in ws:
            assert torch.equal(torch._int_mm(x, w.t()).long(), x.long() @ w.t().long())


@pytest.mark.numerics
@pytest.mark.parametrize("m, k, n", [(7, 768, 768), (33, 3072, 768), (5, EXACT_FP32_TERMS, 16), (5, 2 * EXACT_FP32_TERMS + 1, 16)])
def test_exact_int_mm_gives_int_mms_integers(m, k, n):
    """The fp32 route of CPUs without VNNI: every sum an integer below 2^24, so exact in any order the
    GEMM adds. Extremes of both ranges, where the sums are largest (k = 2,096 terms of 8,001 reach
    16,770,096, just below 2^24 = 16,777,216), random values, and a row split into three chunks."""
    xs, ws = int8_operands(m, k, n)
    for x in xs:
        for w in ws:
            got = exact_int_mm(x, w.t())
            assert got.dtype == torch.int32 and torch.equal(got.long(), x.long() @ w.t().long())


@pytest.mark.numerics
@pytest.mark.skipif(not FBGEMM, reason="this torch has no FBGEMM (not an x86 build)")
@pytest.mark.parametrize("m, k, n", [(7, 768, 768), (33, 3072, 768)])
def test_fbgemm_sums_are_int_mms_integers(m, k, n):
    """FBGEMM's route: on a CPU without VNNI its AVX2 kernels add unsigned-by-signed int8 pairs in int16 with
    saturation (vpmaddubsw), so this is where 8-bit weights would go wrong. Extremes of both ranges, and random
    values; the sums come back as float32, exact below 2^24 (3,072 x 127 x 63 = 24.6 million is not, so the
    extremes there are compared as float32, as Int8Linear uses them)."""
    xs, ws = int8_operands(m, k, n)
    for w in ws:
        packed = fbgemm_pack(w)
        for x in xs:
            got = fbgemm_sums(x.float(), packed)
            assert got.dtype == torch.float32 and torch.equal(got, (x.long() @ w.t().long()).float())


def test_int8_linear_gives_the_same_output_on_every_kernel(cpu):
    """torch._int_mm with VNNI, FBGEMM on x86 without, exact fp32 matmuls elsewhere: the same integers, then
    the same fp32 ops, so the same output to the bit. Each is also asked for by name, whatever the CPU."""
    linear, x = linear_with_outlier_input()
    for flags, machine, kernel in ((("avx2", "avx512_vnni"), "x86_64", "onednn"),
                                   (("avx2",), "x86_64", "fbgemm" if FBGEMM else "fp32"),
                                   (("asimd",), "aarch64", "fp32")):
        cpu(*flags, machine=machine)
        assert Int8Linear(linear).kernel == kernel
    for zero_point, outliers in ((False, None), (True, None), (True, torch.tensor([7, 100]))):
        outputs = {}
        for kernel in ["onednn", "fp32"] + (["fbgemm"] if FBGEMM else []):
            with torch.no_grad():
                outputs[kernel] = Int8Linear(linear, zero_point=zero_point, kernel=kernel, outliers=outliers)(x)
        assert all(torch.equal(y, outputs["onednn"]) for y in outputs.values()), (zero_point, outliers)
    with pytest.raises(ValueError, match="kernel must be"):
        Int8Linear(linear, kernel="fbgem")


def linear_with_outlier_input(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(256, 96)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(96, 256, generator=g) * 0.05)
        linear.bias.copy_(torch.randn(96, generator=g))
    x = torch.randn(40, 256, generator=g)
    x[:, 7] *= 30  # one channel far larger than the rest for every token, as in MPNet's LayerNorm outputs
    return linear, x


@pytest.mark.numerics
@pytest.mark.parametrize("smoothed", [False, True])
def test_int8_linear_error_stays_within_the_rounding_bound(smoothed):
    """Rounding x' = x / m to q_x * s_x moves each element by at most s_x / 2, and W' = W * m to
    q_w * s_w by at most s_w / 2, so for one output
        |x W^T - x^ W^^T| <= (s_x / 2) sum_i |W'_i| + (s_w / 2) sum_i |x^_i|
    (x^, W^: the rounded values). The int32 sum is exact; the float ops around it (the reference's own
    dot product of 256 terms, the rescale, the bias) add a few fp32 ulps of sum_i |x_i W_i| + |b|,
    bounded here by 300 * 2^-24 times that."""
    linear, x = linear_with_outlier_input()
    m = (x.abs().amax(0) ** 0.6 / linear.weight.abs().amax(0) ** 0.4) if smoothed else torch.ones(256)
    q = Int8Linear(linear, m)
    with torch.no_grad():
        got, want = q(x), linear(x)
        xs, ws = x / m, linear.weight * m
        s_x = xs.abs().amax(1, keepdim=True) / INPUT_MAX
        s_w = ws.abs().amax(1) / WEIGHT_MAX
        x_hat = torch.round(xs / s_x) * s_x
        bound = s_x / 2 * ws.abs().sum(1) + s_w / 2 * x_hat.abs().sum(1, keepdim=True)
        bound += 300 * 2.0 ** -24 * ((x.abs() @ linear.weight.abs().t()) + linear.bias.abs())
    err = (got - want).abs()
    assert err.max() > 0  # int8 really ran
    assert (err <= bound).all(), f"worst error/bound {(err / bound).max():.3f}"


def test_smoothing_lowers_the_error_on_an_outlier_channel():
    """Per token, the outlier channel sets the step for all 256 channels; smoothing moves its range into
    the weight's column, which its own per-row scale absorbs."""
    linear, x = linear_with_outlier_input()
    m = x.abs().amax(0) ** 0.6 / linear.weight.abs().amax(0) ** 0.4
    with torch.no_grad():
        want = linear(x)
        plain = (Int8Linear(linear)(x) - want).abs().mean()
        smooth = (Int8Linear(linear, m)(x) - want).abs().mean()
    assert smooth < plain, (smooth, plain)  # measured: 0.023 against 0.044


@pytest.mark.numerics
def test_outlier_channels_skip_int8():
    """An input that lives only in the outlier channels comes out as fp32 computes it (the int8 sums are all
    zero); on the outlier input above, summing channel 7 in fp32 lowers the error, smoothed or not."""
    linear, x = linear_with_outlier_input()
    m = x.abs().amax(0) ** 0.5 / linear.weight.abs().amax(0) ** 0.5
    outliers = torch.tensor([7, 100])
    only = torch.zeros_like(x)
    only[:, outliers] = x[:, outliers]
    with torch.no_grad():
        got, want = Int8Linear(linear, m, outliers=outliers)(only), linear(only)
        # two products and a bias, summed in another order: a few fp32 ulps of sum |x_i W_i| + |b|
        bound = 8 * 2.0 ** -24 * ((only.abs() @ linear.weight.abs().t()) + linear.bias.abs())
        assert ((got - want).abs() <= bound).all()
        want = linear(x)
        for smooth in (None, m):
            without = (Int8Linear(linear, smooth)(x) - want).abs().mean()
            with_fp32 = (Int8Linear(linear, smooth, outliers=torch.tensor([7]))(x) - want).abs().mean()
            assert with_fp32 < without, (smooth is not None, with_fp32, without)


def test_quantize_rejects_unknown_layer_names(encoder):
    with pytest.raises(ValueError, match=r"keep_float names \['ffn'\] are not linear layers"):
        quantize(encoder, keep_float=((0, "ffn"),))


@pytest.fixture(scope="module")
def int8_encoder():
    from speed import load_encoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "no fast kernel": no VNNI, no FBGEMM; tested in test_cli
        return load_encoder(dtype="int8")


@pytest.mark.numerics
def test_int8_encoder_stays_close_to_sentence_transformers(int8_encoder):
    """Issue #9's constraint on the parity fixture (short, empty, long, eight scripts, emoji):
    min cosine to the fp32 reference >= 0.98. A numerics test: the int8 sums are exact everywhere,
    but the fp32 parts around them (LayerNorm, GELU, attention) round differently per kernel path."""
    assert isinstance(int8_encoder.model.layers[0].ffn_in, Int8Linear)
    emb = int8_encoder.encode(REFERENCE["sentences"])
    cos = F.cosine_similarity(emb, torch.tensor(REFERENCE["embeddings"]))
    worst = int(cos.argmin())
    assert cos.min() >= 0.98, f"sentence {worst} ({REFERENCE['sentences'][worst][:40]!r}): cosine {cos.min():.4f}"


def test_int8_encoder_keeps_stsb(int8_encoder):
    """STS-B test within 0.3 points of fp32's 83.42 (issue #9), on the real data."""
    from eval import stsb_spearman

    assert stsb_spearman(int8_encoder, "test") >= 83.12


# ----------------------------------------------------------------------------- int8 for a fine-tuned run (speed/int8_check.py)
def test_the_verdict_needs_agreement_and_no_accuracy_drop():
    import numpy as np

    from speed import int8_check

    truth = np.arange(1000) % 5
    right = {"a": truth.copy()}
    assert int8_check.judge("x", right, {"a": truth.copy()}, {"a": truth}).passed
    off = truth.copy()
    off[:6] = (off[:6] + 1) % 5  # 99.4% agreement, 0.6 points lost
    verdict = int8_check.judge("x", right, {"a": off}, {"a": truth})
    assert not verdict.passed and verdict.agreement == 0.994 and verdict.accuracy["a"] == (100.0, 99.4)
    off = truth.copy()
    off[:4] = (off[:4] + 1) % 5  # 99.6% agreement, but 0.4 points lost
    assert not int8_check.judge("x", right, {"a": off}, {"a": truth}).passed
    fp32_wrong = truth.copy()
    fp32_wrong[:4] = (truth[:4] + 1) % 5  # int8 right where fp32 was wrong: agreement 99.6%, accuracy up
    assert int8_check.judge("x", {"a": fp32_wrong}, {"a": truth.copy()}, {"a": truth}).passed


def test_a_run_on_built_in_sets_is_checked_on_the_split_train_py_reports(tmp_path):
    """SST-2's test labels are hidden (GLUE), so train.py reports SST-2 on its dev set; so does the check."""
    import data
    from speed import int8_check

    tasks = {"a": ("banking77", "test"), "b": ("sst2", "dev")}
    info = {"tasks": {t: {"dataset": name, "label_names": data.load(name, split).label_names}
                      for t, (name, split) in tasks.items()}}
    sets = int8_check.test_sets(tmp_path, info)
    assert {t: (ds.name, ds.split, len(ds)) for t, ds in sets.items()} == {"a": ("banking77", "test", 3080),
                                                                            "b": ("sst2", "dev", 872)}


@pytest.fixture
def tiny_run(tmp_path):
    """A run folder of a tiny random model on 'your own data', with its saved test rows."""
    import json
    import shutil
    from dataclasses import asdict

    from safetensors.torch import save_file

    from heads import MultiTaskModel
    from mpnet import MPNet, MPNetConfig
    from weights.fetch import fetch

    torch.manual_seed(0)
    cfg = MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    model = MultiTaskModel(MPNet(cfg), {"a": 2})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "best.safetensors")
    shutil.copyfile(fetch() / "tokenizer.json", tmp_path / "tokenizer.json")
    rows = [("the parcel never came", "p"), ("great service, thank you", "q"), ("I was charged twice", "p"),
            ("arrived early and works well", "q")] * 5
    (tmp_path / "test-a.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    info = {"config": {"normalize": False}, "backbone": asdict(cfg),
            "tasks": {"a": {"dataset": "mine.csv", "label_names": ["p", "q"], "test_rows": "test-a.jsonl"}}}
    (tmp_path / "run.json").write_text(json.dumps(info))
    return tmp_path


def int8_layers(model) -> int:
    from speed.quant import Int8Linear

    return sum(isinstance(m, Int8Linear) for m in model.modules())


@pytest.mark.parametrize("passes", [True, False])
def test_auto_serves_int8_only_if_it_passed_on_the_runs_test_rows_and_caches_the_verdict(tiny_run, cpu, monkeypatch,
                                                                                         passes):
    from eval import load_run
    from speed import int8_check

    cpu("avx2", "avx512_vnni")  # a CPU where int8 is fast
    monkeypatch.setattr(int8_check, "AGREEMENT", 0.0 if passes else 1.01)
    model, tokenizer, info = load_run(tiny_run)
    served, precision, why = int8_check.choose(tiny_run, model, tokenizer, info, "auto",
                                               reload=lambda: load_run(tiny_run)[0])
    assert (int8_layers(served) > 0) == passes and precision == ("int8" if passes else "fp32") and "20 test rows" in why
    assert why.startswith("int8: ") if passes else why.startswith("fp32, int8 did not pass")
    cached = json.loads((tiny_run / int8_check.CHECK_FILE).read_text())
    assert cached["passed"] == passes and cached["rows"] == 20

    def no_second_check(*args):
        raise AssertionError("the cached verdict was not used")

    monkeypatch.setattr(int8_check, "labels", no_second_check)
    model, tokenizer, info = load_run(tiny_run)
    served, _, why_again = int8_check.choose(tiny_run, model, tokenizer, info, "auto",
                                             reload=lambda: load_run(tiny_run)[0])
    assert (int8_layers(served) > 0) == passes and why_again == why


def test_a_retrained_run_is_checked_again(tiny_run, cpu, monkeypatch):
    from safetensors.torch import load_file, save_file

    from eval import load_run
    from speed import int8_check

    cpu("avx2", "avx512_vnni")
    (tiny_run / int8_check.CHECK_FILE).write_text(json.dumps({"best_sha256": "an older model", "rows": 1, "agreement": 1.0,
                                                               "accuracy": {"a": [50.0, 50.0]}, "passed": True}))
    weights = load_file(tiny_run / "best.safetensors")
    save_file({k: v + 0.01 for k, v in weights.items()}, tiny_run / "best.safetensors")
    monkeypatch.setattr(int8_check, "AGREEMENT", 1.01)
    model, tokenizer, info = load_run(tiny_run)
    _, _, why = int8_check.choose(tiny_run, model, tokenizer, info, "auto", reload=lambda: load_run(tiny_run)[0])
    assert why.startswith("fp32, int8 did not pass")


@pytest.mark.parametrize("bf16_passes", [True, False])
def test_auto_tries_bf16_where_int8_fails_and_bf16_is_native(tiny_run, cpu, monkeypatch, bf16_passes):
    """The decision, with the labels made up: int8 gets every label wrong; bf16 gets them right or wrong."""
    from eval import load_run
    from predict import Classifier
    from speed import int8_check

    cpu("avx2", "avx512_vnni", "avx512_bf16")

    def made_up_labels(model, tokenizer, sets, autocast=False):
        right = {task: np.array(ds.labels) for task, ds in sets.items()}
        wrong = int8_layers(model) > 0 or (autocast and not bf16_passes)
        return {task: 1 - y for task, y in right.items()} if wrong else right

    monkeypatch.setattr(int8_check, "labels", made_up_labels)
    model, tokenizer, info = load_run(tiny_run)
    served, precision, why = int8_check.choose(tiny_run, model, tokenizer, info, "auto",
                                               reload=lambda: load_run(tiny_run)[0])
    assert int8_layers(served) == 0 and precision == ("bf16" if bf16_passes else "fp32")
    assert why.startswith("bf16 autocast, int8 did not pass") if bf16_passes else "; nor did bf16: bf16 agrees with fp32 on 0.00%" in why
    cached = json.loads((tiny_run / int8_check.BF16_CHECK_FILE).read_text())
    assert cached["precision"] == "bf16" and cached["passed"] == bf16_passes and cached["agreement"] == bf16_passes
    assert Classifier.from_checkpoint(tiny_run, dtype="auto").autocast == bf16_passes  # from the cached verdicts


def test_auto_without_vnni_serves_fp32_and_checks_nothing(tiny_run, cpu):
    from eval import load_run
    from speed import int8_check

    cpu("avx2")
    model, tokenizer, info = load_run(tiny_run)
    served, precision, why = int8_check.choose(tiny_run, model, tokenizer, info, "auto",
                                               reload=lambda: load_run(tiny_run)[0])
    assert int8_layers(served) == 0 and precision == "fp32" and why.startswith("fp32 (no VNNI")
    assert not (tiny_run / int8_check.CHECK_FILE).exists()


def test_a_forged_cached_verdict_is_checked_again(tiny_run, cpu, monkeypatch, capsys):
    """int8-check.json said passed with agreement 0.0, and int8 was served: now a verdict whose numbers
    do not give its `passed` is set aside and the check runs again."""
    from eval import load_run
    from speed import int8_check
    from weights.fetch import sha256_of

    cpu("avx2", "avx512_vnni")
    forged = {"best_sha256": sha256_of(tiny_run / "best.safetensors"), "rows": 20, "agreement": 0.0,
              "accuracy": {"a": [50.0, 0.0]}, "passed": True}
    (tiny_run / int8_check.CHECK_FILE).write_text(json.dumps(forged))
    monkeypatch.setattr(int8_check, "AGREEMENT", 1.01)  # the real check cannot pass
    model, tokenizer, info = load_run(tiny_run)
    served, precision, why = int8_check.choose(tiny_run, model, tokenizer, info, "auto",
                                               reload=lambda: load_run(tiny_run)[0])
    assert precision == "fp32" and int8_layers(served) == 0 and why.startswith("fp32, int8 did not pass")
    assert "not a verdict this check wrote" in capsys.readouterr().err


def test_auto_on_a_read_only_run_folder_serves_and_says_it_cannot_cache(tiny_run, cpu, monkeypatch, capsys):
    import errno

    from eval import load_run
    from reliability import checkpoint
    from speed import int8_check

    def read_only(write, path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    cpu("avx2", "avx512_vnni")
    monkeypatch.setattr(int8_check, "AGREEMENT", 0.0)
    monkeypatch.setattr(checkpoint, "write_atomic", read_only)  # (root ignores a chmod)
    model, tokenizer, info = load_run(tiny_run)
    served, precision, _ = int8_check.choose(tiny_run, model, tokenizer, info, "auto",
                                             reload=lambda: load_run(tiny_run)[0])
    assert precision == "int8" and int8_layers(served) > 0
    assert "Read-only file system); it is checked again next time" in capsys.readouterr().err


def test_reading_each_weight_a_layer_at_a_time_quantises_to_the_same_integers(monkeypatch):
    """quantize(weights_file=...) reads each fp32 weight with pread (memory.read_tensor), not through the map,
    so that the file's pages leave the resident set; the int8 model is the same bit for bit."""
    from safetensors import safe_open

    from mpnet import SentenceEncoder
    from speed import memory, quant
    from weights.fetch import fetch

    weights = fetch() / "model.safetensors"
    with safe_open(weights, framework="pt") as f:
        mapped = f.get_tensor("encoder.layer.3.output.dense.weight")
    assert torch.equal(memory.read_tensor(weights, "encoder.layer.3.output.dense.weight"), mapped)
    mapped_way = quant.quantize(SentenceEncoder.from_pretrained()).model.state_dict()
    read_way = quant.quantize(SentenceEncoder.from_pretrained(), weights_file=weights).model.state_dict()
    assert mapped_way.keys() == read_way.keys() and all(torch.equal(mapped_way[k], read_way[k]) for k in mapped_way)
    monkeypatch.setattr(quant, "read_tensor", lambda path, name: torch.zeros_like(memory.read_tensor(path, name)))
    with pytest.raises(ValueError, match="is not the file this encoder was loaded from"):
        quant.quantize(SentenceEncoder.from_pretrained(), weights_file=weights)
