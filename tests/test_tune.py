"""dtype="auto" decided by measuring this machine (speed/tune.py): the choice rule with injected timings,
the saved choice and what it is trusted for, and one real measurement."""
import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest

from speed import hardware, tune


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test's choices in a folder of its own: none reaches another test."""
    monkeypatch.setenv("MPNET_CACHE_DIR", str(tmp_path / "cache"))
    tune.saved.cache_clear()


def test_the_fastest_candidate_that_passes_the_gate_is_chosen():
    cosines = {"fp32": 1.0, "int8-fbgemm": 0.996, "int8-fp32": 0.996}
    assert tune.pick({"fp32": 70.0, "int8-fbgemm": 95.0, "int8-fp32": 50.0}, cosines)[0] == "int8-fbgemm"
    # a CPU where int8 is slower than fp32: fp32
    assert tune.pick({"fp32": 70.0, "int8-fbgemm": 60.0, "int8-fp32": 40.0}, cosines)[0] == "fp32"
    # the fastest fails the gate: the next fastest that passes
    candidate, reason = tune.pick({"fp32": 70.0, "bf16": 80.0, "int8-onednn": 140.0},
                                  {"fp32": 1.0, "bf16": 0.999, "int8-onednn": 0.97})
    assert candidate == "bf16" and "int8-onednn failed the gate" in reason
    # not timed (the probe said too slow) is never chosen
    assert tune.pick({"fp32": 70.0, "int8-onednn": None}, {"fp32": 1.0, "int8-onednn": None})[0] == "fp32"
    assert tune.pick({}, {})[0] == "fp32"


@pytest.mark.parametrize("speeds", [{"fp32": 50.0, "int8-fbgemm": 51.0}, {"fp32": 51.0, "int8-fbgemm": 50.0},
                                    {"fp32": 30.0, "bf16": 90.0, "int8-onednn": 89.0}])
def test_auto_is_within_five_percent_of_the_best_candidate_that_passes(speeds):
    candidate, _ = tune.pick(speeds, {c: 0.99 for c in speeds})
    assert speeds[candidate] >= 0.95 * max(speeds.values())


def save(choice: tune.Choice) -> Path:
    path = tune.cache_file(tune.machine_key())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(choice)))
    tune.saved.cache_clear()
    return path


def test_a_saved_choice_decides_auto_and_the_int8_kernel(cpu):
    cpu("avx2", "fma")  # no VNNI: the flags table says fp32
    assert hardware.encoder_precision("auto")[0] == "fp32"
    save(tune.Choice("int8-fbgemm", "measured", tune.machine_key(), {"fp32": 70.0, "int8-fbgemm": 95.0}))
    precision, why = hardware.encoder_precision("auto")
    assert precision == "int8" and why.startswith("measured on this machine")
    assert hardware.int8_kernel() == "fbgemm"


@pytest.mark.parametrize("content, said", [
    ("{not json", "not a choice speed.tune wrote"),
    ('{"candidate": "int4", "reason": "x", "key": {}}', "not a choice speed.tune wrote"),
    ("[]", "not a choice speed.tune wrote"),
    ("[" * 100_000, "not a choice speed.tune wrote"),
])
def test_a_damaged_choice_file_is_set_aside_in_one_line(capsys, content, said):
    path = tune.cache_file(tune.machine_key())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    assert tune.saved() is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0]


def test_a_choice_made_for_another_machine_or_torch_is_set_aside(capsys):
    other = tune.machine_key() | {"torch": "1.0.0"}
    save(tune.Choice("int8-fbgemm", "measured elsewhere", other))  # (under this machine's name: a copied file)
    assert tune.saved() is None and "made for another machine or torch" in capsys.readouterr().err


def test_the_key_names_what_decides_the_speed(monkeypatch):
    first = tune.cache_file(tune.machine_key())
    monkeypatch.setattr(tune.torch, "get_num_threads", lambda: 97)
    assert tune.cache_file(tune.machine_key()) != first


def test_measuring_here_saves_a_choice_that_passed_the_gate(capsys):
    """One real tuning run on this machine's CPU: every timed candidate passed, the choice is the fastest."""
    choice = tune.measure()
    timed = {c: s for c, s in choice.sentences_per_s.items() if s is not None}
    assert "fp32" in timed and choice.candidate == max(timed, key=timed.get)
    assert all(choice.min_cosine[c] >= tune.GATE for c in timed)
    assert tune.saved() == choice and Path(os.environ["MPNET_CACHE_DIR"]).is_dir()
    assert "dtype auto: timing the candidates" in capsys.readouterr().err


def test_the_calibration_is_kept_and_gives_the_integers_a_fresh_one_gives(monkeypatch, tmp_path):
    """quant.cached_ranges: the second int8 load reads the calibration pass back, and quantises to the same
    buffers bit for bit; a damaged cache file is measured again."""
    import torch

    from mpnet import SentenceEncoder
    from speed import quant
    from weights.fetch import fetch

    weights = fetch() / "model.safetensors"
    fresh = quant.quantize(SentenceEncoder.from_pretrained())  # the calibration pass, not cached
    first = quant.cached_ranges(SentenceEncoder.from_pretrained(), weights)  # measured, then saved
    saved = list(Path(os.environ["MPNET_CACHE_DIR"]).glob("calibration-*.safetensors"))
    assert len(saved) == 1
    monkeypatch.setattr(quant, "input_ranges", lambda *a: pytest.fail("measured again"))
    again = quant.quantize(encoder := SentenceEncoder.from_pretrained(), ranges=quant.cached_ranges(encoder, weights))
    assert set(first) == {(i, n) for i in range(12) for n in quant.LINEAR_NAMES}
    ours, theirs = again.model.state_dict(), fresh.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    saved[0].write_bytes(b"not a safetensors file")
    calls = []
    monkeypatch.setattr(quant, "input_ranges", lambda *a: calls.append(1) or first)
    quant.cached_ranges(SentenceEncoder.from_pretrained(), weights)
    assert calls == [1]
