"""int8 through PyTorch's x86 int8 kernels (FBGEMM, oneDNN): what their per-tensor activations cost in accuracy,
and what smoothing and keeping layers in fp32 win back (issue #31, item 1: the accuracy half).

    python experiments/x86_int8.py             # every missing cell, then the tables
    python experiments/x86_int8.py --speed     # also time Int8Linear's kernels on this CPU (one cell per CPU)
    python experiments/x86_int8.py --table-only

On an AVX2-only CPU torch._int_mm has no fast kernel (speed/quant.py), but the quantized engines do: FBGEMM
(built for AVX2, behind torch.ao.nn.quantized.dynamic.Linear) and oneDNN's qlinear. Their dynamic linear
quantises the input with one scale and zero point per call (per tensor, 7-bit: reduce_range), where
quant.Int8Linear takes one range per token. This measures the accuracy of that route with this project's
calibration (quant.quantize, with `make` building the engine's layer instead of Int8Linear):

  * the weights per output channel (or per tensor: quantize_dynamic's default, no smoothing, the
    configuration an independent run measured at STS-B 79.60);
  * SmoothQuant at alpha 0.5 or none;
  * some layers kept in fp32.

The last cell is quant.py's own route without VNNI: Int8Linear rounds each token as always, and FBGEMM only
adds up the integers (quant.fbgemm_sums), so it scores what Int8Linear scores on every kernel. Its cell
predates quant.py's outlier channels and is measured without them, as recorded (experiments/int8_layers.md
has Int8Linear with them).

Measured against the fp32 encoder in the same process, as experiments/int8_layers.py does: the parity
fixture's min cosine to fp32 and to sentence-transformers' embeddings (target >= 0.98), and STS-B test
Spearman (target >= 83.1). The integers such a kernel computes do not depend on the CPU (exact int32 sums of 7-bit
inputs), so the accuracy measured here holds on an AVX2-only CPU; its speed does not, and is not measured
here: that needs the AVX2-only machine. One JSON per cell in experiments/results/x86_int8/.

--speed times the encoder on this CPU with Int8Linear's sums on each kernel that has a fast path here
(quant.int8_kernel: oneDNN's _int_mm with VNNI, FBGEMM on x86, and exact fp32 matmuls), against fp32 as
speed.load_encoder runs it: interleaved rounds over the same sentences in one process, the median and spread.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import int8_layers  # noqa: E402
from cells import cell, cpu_type  # noqa: E402
from data import read_stsb  # noqa: E402
from int8_layers import REFERENCE  # noqa: E402
from speed.hardware import native_int8  # noqa: E402
from speed.quant import ZERO_POINT, Int8Linear  # noqa: E402

RESULTS = HERE / "results" / "x86_int8"
FFN_OUT = tuple((i, "ffn_out") for i in range(12))


class EngineLinear(nn.Module):
    """A smoothed linear layer on a quantized engine's dynamic int8 kernel: y = dynamic_linear(x / m) with W * m."""

    def __init__(self, linear: nn.Linear, smooth: torch.Tensor, per_channel: bool):
        super().__init__()
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

        scaled = nn.Linear(linear.in_features, linear.out_features)
        scaled.weight.data = linear.weight.detach().float() * smooth
        scaled.bias.data = linear.bias.detach().float()
        scaled.qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        self.inner = DynamicLinear.from_float(scaled)
        self.register_buffer("inv_smooth", 1 / smooth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x * self.inv_smooth)


# cell -> (engine, weights per channel, alpha, (layer, name) pairs kept in fp32)
CELLS = {
    "fbgemm, per-tensor weights, no smoothing (quantize_dynamic's default)": ("fbgemm", False, 0.0, ()),
    "fbgemm, per-channel weights, no smoothing": ("fbgemm", True, 0.0, ()),
    "fbgemm, per-channel weights, alpha 0.5": ("fbgemm", True, 0.5, ()),
    "fbgemm, per-channel weights, alpha 0.5, ffn_out in fp32": ("fbgemm", True, 0.5, FFN_OUT),
    "onednn, per-channel weights, alpha 0.5": ("onednn", True, 0.5, ()),
    "Int8Linear summed by FBGEMM, per-token inputs, alpha 0.5, ffn_out zero point": ("int8linear", True, 0.5, ()),
}


def slug(name: str) -> str:
    return name.split(" (")[0].replace(", ", "-").replace(" ", "-").replace(".", "_")


def measure(engine: str, per_channel: bool, alpha: float, keep_float: tuple, reference: dict, pairs: list) -> dict:
    if engine == "int8linear":
        make = lambda linear, smooth, zero_point, outliers: Int8Linear(linear, smooth, zero_point, "fbgemm", outliers)  # noqa: E731
        result = int8_layers.measure(alpha, keep_float, ZERO_POINT, reference, REFERENCE["sentences"], pairs, make=make)
        return {"engine": "fbgemm", "per_channel": per_channel, **result, "torch": torch.__version__}
    torch.backends.quantized.engine = engine
    result = int8_layers.measure(alpha, keep_float, (), reference, REFERENCE["sentences"], pairs,
                                 make=lambda linear, smooth, zero_point, outliers: EngineLinear(linear, smooth, per_channel))
    return {"engine": engine, "per_channel": per_channel, **result, "torch": torch.__version__}


def time_kernels(sentences: list[str], rounds: int, batch_size: int) -> dict:
    """Sentences per second of each encoder, rounds interleaved: fp32 as speed.load_encoder runs it, then
    Int8Linear on each kernel with a fast path here. Every int8 encoder must give the same embeddings."""
    from mpnet import SentenceEncoder
    from speed import load_encoder
    from speed.quant import quantize

    def int8(kernel: str):  # as load_encoder(dtype="int8") builds it, on the kernel asked for
        make = lambda linear, smooth, zero_point, outliers: Int8Linear(linear, smooth, zero_point, kernel, outliers)  # noqa: E731
        return quantize(SentenceEncoder.from_pretrained(), make=make)

    kernels = (["onednn"] if native_int8() else []) + ["fbgemm", "fp32"]
    encoders = {"fp32 (speed.load_encoder)": load_encoder(dtype="fp32")} | {f"int8, {k}": int8(k) for k in kernels}
    embeddings = {name: enc.encode(sentences[:64]) for name, enc in encoders.items()}
    int8_names = [n for n in encoders if n.startswith("int8")]
    assert all(torch.equal(embeddings[n], embeddings[int8_names[0]]) for n in int8_names), "int8 kernels disagree"
    seconds = {name: [] for name in encoders}
    for _ in range(rounds):
        for name, enc in encoders.items():
            started = time.perf_counter()
            enc.encode(sentences, batch_size=batch_size)
            seconds[name].append(time.perf_counter() - started)
    rates = {name: [len(sentences) / t for t in ts] for name, ts in seconds.items()}
    return {"sentences": len(sentences), "batch_size": batch_size, "rounds": rounds, "torch": torch.__version__,
            "sentences_per_s": {name: {"median": round(statistics.median(r), 1), "min": round(min(r), 1),
                                       "max": round(max(r), 1)} for name, r in rates.items()},
            "round_sentences_per_s": {name: [round(x, 1) for x in r] for name, r in rates.items()}}


def speed_table(results: list[dict]) -> list[str]:
    lines = ["", "Speed of Int8Linear's kernels: the same integers, so the same embeddings (checked), summed by "
             "each kernel with a fast path on the CPU; fp32 as speed.load_encoder runs it. Sentences per second, "
             "median [min, max] of interleaved rounds in one process (`python experiments/x86_int8.py --speed`)."]
    for r in results:
        rates = r["sentences_per_s"]
        fp32 = rates["fp32 (speed.load_encoder)"]["median"]
        lines += ["", f"{r['cpu']}; {r['sentences']} STS-B test sentences, batch {r['batch_size']}, "
                  f"{r['rounds']} rounds:", "", "| encoder | sentences/s | × fp32 |", "| --- | ---: | ---: |"]
        lines += [f"| {name} | {v['median']:.1f} [{v['min']:.1f}, {v['max']:.1f}] | {v['median'] / fp32:.2f} |"
                  for name, v in rates.items()]
        rounds = r.get("round_sentences_per_s")  # kept since the Zen 4 run
        if rounds and "int8, onednn" in rounds:
            ratios = [b / a for a, b in zip(rounds["int8, onednn"], rounds["int8, fbgemm"])]
            lines += ["", f"FBGEMM against oneDNN round by round: {statistics.median(ratios):.2f}× (median), "
                      f"{min(ratios):.2f}-{max(ratios):.2f}; faster in {sum(x > 1 for x in ratios)} of {len(ratios)} rounds."]
    return lines


def table(results: dict[str, dict], speeds: list[dict]) -> str:
    lines = ["int8 linear layers on PyTorch's quantized engines (dynamic: inputs per tensor, 7-bit), with "
             "this project's calibration (speed/quant.py: SmoothQuant over quant.CALIBRATION). Against the fp32 "
             "encoder (STS-B test 83.42) in the same process; quant.Int8Linear (per-token inputs) scores 83.70 "
             "(experiments/int8_layers.md). The integers do not depend on the CPU; the speed does (below, per CPU).", "",
             "| route | fp32 layers (of 72) | fixture min cos to fp32 | to sentence-transformers | STS-B min cos | "
             "STS-B test |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['fp32_layers']} | {r['fixture_min_cos']:.5f} | {r['fixture_min_cos_st']:.5f} "
                     f"| {r['stsb_min_cos']:.5f} | {r['stsb_test_spearman']:.2f} |")
    cpus = sorted({r["cpu"] for r in results.values()})
    lines += ["", "Targets (issue #31): fixture min cosine to sentence-transformers >= 0.98, STS-B test >= 83.1.",
              f"CPU: {'; '.join(cpus)}. Generated by `python experiments/x86_int8.py` (deterministic: no seed)."]
    if speeds:
        lines += speed_table(speeds)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--speed", action="store_true", help="also time Int8Linear's kernels on this CPU")
    parser.add_argument("--sentences", type=int, default=512, help="--speed: the first N unique STS-B test sentences")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if args.speed and not args.table_only:
        pairs = read_stsb("test", None)
        sentences = list(dict.fromkeys(s for p in pairs for s in p[:2]))[:args.sentences]
        speed = cell(RESULTS, f"speed-{cpu_type()}", lambda: time_kernels(sentences, args.rounds, batch_size=32))
        print(speed, flush=True)
    if not args.table_only:
        pairs, reference = read_stsb("test", None), None
        for name, (engine, per_channel, alpha, keep) in CELLS.items():
            if (RESULTS / f"{slug(name)}.json").is_file():
                continue
            if reference is None:
                reference = int8_layers.fp32_reference(REFERENCE["sentences"], pairs)
            r = cell(RESULTS, slug(name), lambda: measure(engine, per_channel, alpha, keep, reference, pairs))
            print(f"{name}: {r}", flush=True)
    results = {name: json.loads(p.read_text()) for name in CELLS if (p := RESULTS / f"{slug(name)}.json").is_file()}
    speeds = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("speed-*.json"))]
    if results:
        text = table(results, speeds)
        (HERE / "x86_int8.md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
