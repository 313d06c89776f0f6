"""dtype="auto" decided by measuring this machine, once, as FFTW's wisdom and cuDNN's benchmark mode do.

    python -m speed.tune          # measure the candidates here, print the table, save the choice

A table of CPU flags can only be as good as the CPUs someone measured. So the candidates, each correct on
every CPU, are timed where they will run:

    fp32          the plain model (its linear layers through oneDNN where that helps: onednn.py)
    bf16          bf16 weights, only where the CPU runs bf16 natively (elsewhere it is emulated: hardware.py)
    int8-onednn   quant.Int8Linear summing on torch._int_mm (fast with VNNI, a reference loop without)
    int8-fbgemm   the same integers summed by FBGEMM's AVX2 kernels (x86)
    int8-fp32     the same integers summed by exact fp32 matmuls (anywhere; timed only where neither int8
                  library is: it is fp32's matmuls plus the quantising, so never the faster of the two)

Each must pass one accuracy gate before it may be chosen: on the parity fixture's sentences (up to 128
tokens), its embeddings' smallest cosine to sentence-transformers' stored ones is at least GATE (the int8
kernels sum the same integers, so one int8 gate holds for all three). The
fastest candidate that passes is kept. An int8 kernel whose single-layer probe is over PROBE_SLOWER
times fp32's is not timed further (the reference loop would take seconds a batch).

The choice is saved with its timings and the reason in the user's cache folder ($MPNET_CACHE_DIR, else
$XDG_CACHE_HOME/mpnet, else ~/.cache/mpnet), under a name keyed by what decides the speed: the CPU model,
its flags, torch's thread count, torch's version and the int8 scheme's version (hardware.INT8_SCHEME), written
atomically. A file that is damaged, or made for another key, is set aside with one line.

Until a choice is saved, `auto` takes the flags table's answer at once (hardware.encoder_precision), so a
short encode() never pays for tuning; the long jobs (the corpus command, predict.py --input, tools/bench.py)
call ensure() first, and say so.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from speed.hardware import Choice, cache_file, machine_key, saved  # noqa: F401  (saved: tune.saved())

GATE = 0.98          # the smallest cosine to sentence-transformers a candidate may have on the fixture
PROBE_SLOWER = 3.0   # an int8 kernel this many times slower than fp32 on one layer is not timed further
ROUNDS = 2           # timed encodes of the batch per candidate, after a warm-up: the faster counts
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference.json"


def pick(speeds: dict[str, float | None], cosines: dict[str, float | None]) -> tuple[str, str]:
    """(candidate, reason): the fastest candidate whose smallest cosine is at least GATE; fp32 if none."""
    passed = {c: s for c, s in speeds.items() if s is not None and (cosines.get(c) or 0) >= GATE}
    if not passed:
        return "fp32", "no candidate was timed and passed the gate; fp32 is the reference"
    best = max(passed, key=passed.get)
    failed = [c for c, s in speeds.items() if s is not None and c not in passed]
    ratio = passed[best] / passed["fp32"] if passed.get("fp32") else None
    return best, (f"{best} measured fastest here ({passed[best]:.0f} sentences/s"
                  + (f", {ratio:.2f}x fp32" if ratio else "") + f"; min cosine {cosines[best]:.4f} >= {GATE})"
                  + (f"; {', '.join(failed)} failed the gate" if failed else ""))


def candidates_here() -> list[str]:
    from speed.hardware import native_bf16

    names = ["fp32"] + (["bf16"] if native_bf16() else []) + ["int8-onednn"]
    if "fbgemm" in torch.backends.quantized.supported_engines:
        return names + ["int8-fbgemm"]
    return names + ["int8-fp32"]


def gate_sentences() -> tuple[list[str], torch.Tensor | None]:
    """The fixture's sentences up to 128 tokens and sentence-transformers' unit embeddings of them."""
    if not FIXTURE.is_file():
        return [], None
    raw = json.loads(FIXTURE.read_text(encoding="utf-8"))
    keep = [i for i, ids in enumerate(raw["input_ids"]) if len(ids) <= 128]
    return [raw["sentences"][i] for i in keep], torch.tensor([raw["embeddings"][i] for i in keep])


def measure(path=None, say=lambda line: print(line, file=sys.stderr)) -> Choice:
    """Time every candidate here on fixed batches, gate each, save and return the choice."""
    from mpnet import SentenceEncoder
    from reliability.checkpoint import write_atomic
    from speed.onednn import use_where_it_helps
    from speed.packing import pack
    from speed.quant import CALIBRATION, Int8Linear, cached_ranges, quantize, set_kernel
    from weights.fetch import weights_dir

    started = time.perf_counter()
    say("dtype auto: timing the candidates on this machine once (about 5 s; python -m speed.tune does it again)")
    sentences, truth = gate_sentences()
    encoders = {"fp32": SentenceEncoder.from_pretrained(path)}
    pack(encoders["fp32"].model)
    use_where_it_helps(encoders["fp32"])
    if truth is None:  # a copy without the tests folder: the gate is this machine's fp32 instead
        sentences = CALIBRATION
        truth = encoders["fp32"].encode(sentences)
    names = candidates_here()
    if "bf16" in names:
        encoders["bf16"] = SentenceEncoder.from_pretrained(path, dtype="bf16")
        pack(encoders["bf16"].model)
    int8 = SentenceEncoder.from_pretrained(path)
    pack(int8.model)
    quantize(int8, make=lambda linear, smooth, **kw: Int8Linear(linear, smooth, kernel="fp32", **kw),
             ranges=cached_ranges(int8, weights_dir(path) / "model.safetensors"))  # the calibration load_encoder reuses
    batch = sentences[:16]
    speeds, cosines, notes = {}, {}, {}
    # one layer's FFN input projection on 128 tokens: a probe that keeps the reference loop from being timed
    plain = encoders["fp32"].model.layers[0].ffn_in
    x = torch.randn(128, plain.in_features)
    layer = int8.model.layers[0].ffn_in
    fp32_probe = probe(lambda: plain(x))
    for name in names:
        if name.startswith("int8-"):
            set_kernel(int8, name.split("-")[1])
            took = probe(lambda: layer(x))
            if took > PROBE_SLOWER * fp32_probe:
                speeds[name], cosines[name] = None, None
                notes[name] = f"one layer took {took * 1e3:.1f} ms against fp32's {fp32_probe * 1e3:.1f}: not timed"
                continue
        encoder = int8 if name.startswith("int8-") else encoders[name]
        with torch.inference_mode():
            gated = [c for c in cosines if c.startswith("int8-") and cosines[c] is not None]
            if name.startswith("int8-") and gated:  # the kernels sum the same integers (tests/test_quant.py)
                cosines[name] = cosines[gated[0]]
                encoder.encode(batch)  # a warm-up
            elif name == "fp32":  # the reference: its gate (parity is tests/test_parity.py's) on the batch
                got = encoder.encode(batch)  # the gate, and a warm-up
                cosines[name] = float((got * truth[:len(batch)]).sum(dim=1).min())
            else:
                got = encoder.encode(sentences)  # the gate, and a warm-up
                cosines[name] = float((got * truth).sum(dim=1).min())
            rounds = []
            for _ in range(ROUNDS):
                t = time.perf_counter()
                encoder.encode(batch)
                rounds.append(time.perf_counter() - t)
        speeds[name] = len(batch) / min(rounds)
        notes[name] = f"rounds {', '.join(f'{r * 1e3:.0f}' for r in rounds)} ms"
    candidate, reason = pick(speeds, cosines)
    choice = Choice(candidate, reason, machine_key(), speeds, cosines, notes, round(time.perf_counter() - started, 2))
    path_out = cache_file(choice.key)
    try:
        path_out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(lambda p: p.write_text(json.dumps(asdict(choice), indent=1)), path_out)
    except OSError as e:
        say(f"cannot save the choice in {path_out} ({e.strerror}); it is measured again next time")
    saved.cache_clear()
    say(f"dtype auto: {candidate}: {reason} (tuned in {choice.tuning_s:.1f} s, saved in {path_out})")
    return choice


def probe(run) -> float:
    """The best of five calls, in seconds (after one warm-up)."""
    with torch.inference_mode():
        run()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
    return min(times)


def ensure(say=lambda line: print(line, file=sys.stderr)) -> Choice:
    """The saved choice, measured first if there is none: what a long job calls before it loads."""
    return saved() or measure(say=say)


def main(argv: list[str] | None = None) -> None:
    import argparse

    from speed.hardware import describe

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    choice = measure()
    print(describe())
    print(f"{'candidate':<13} {'sentences/s':>11} {'min cosine':>10}  note")
    for name, speed in choice.sentences_per_s.items():
        cos = choice.min_cosine.get(name)
        print(f"{name:<13} {'-' if speed is None else f'{speed:.1f}':>11} {'-' if cos is None else f'{cos:.4f}':>10}  "
              f"{choice.notes.get(name, '')}")
    print(f"chosen: {choice.candidate} ({choice.reason})")


if __name__ == "__main__":
    main()
