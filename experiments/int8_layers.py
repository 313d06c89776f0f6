"""Which linear layers can run in int8 (quant.py), with what smoothing, without costing the model its quality?

    python experiments/int8_layers.py            # every cell whose result is missing, then the table
    python experiments/int8_layers.py --table-only

Each cell quantises the encoder's linear layers with quant.quantize (smoothing strength alpha; alpha 0
is plain per-token x per-channel int8), keeping some in fp32, then measures against the fp32 encoder
in the same process:
  * the parity fixture's 36 sentences: min and mean cosine to the fp32 embeddings
    (issue target: min >= 0.98);
  * STS-B test: Spearman of the pairs' cosines against the gold scores, all 1,379 pairs
    (fp32: 83.42; target: within 0.3 points, i.e. >= 83.12).
Cells: nothing (the fp32 check); everything with alpha 0 (no smoothing) and 0.5 to 0.7; each layer
kind alone (alpha 0.5) to find the sensitive ones; layer 5's FFN output kept in fp32 (the most
sensitive single layer in a first fixture-only scan); and the FFN output with per-token zero points
(quant.Int8Linear); then with each layer's largest smoothed input channels summed in fp32 (quant.py's
default since: alpha 0.5, 8 channels).
One JSON per cell in experiments/results/int8_layers/; the table goes to experiments/int8_layers.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from cells import cell  # noqa: E402
from data import read_stsb  # noqa: E402
from eval import spearman  # noqa: E402
from speed.hardware import describe  # noqa: E402
from mpnet import SentenceEncoder  # noqa: E402
from speed.quant import LINEAR_NAMES, Int8Linear, linears, quantize  # noqa: E402

ALL = tuple((i, n) for i in range(12) for n in LINEAR_NAMES)

RESULTS = HERE / "results" / "int8_layers"
REFERENCE = json.loads((ROOT / "tests" / "fixtures" / "reference.json").read_text(encoding="utf-8"))


def cells() -> dict[str, tuple[float, tuple, tuple, int]]:
    """cell name -> (alpha, the (layer, name) pairs kept in fp32, the names with per-token zero points, the
    outlier input channels per layer summed in fp32)."""
    out = {"fp32 (nothing quantised)": (0.0, ALL, (), 0)}
    out |= {f"all int8, alpha {a}": (a, (), (), 0) for a in (0.0, 0.5, 0.6, 0.7)}
    out |= {f"only {n} int8, alpha 0.5": (0.5, tuple(p for p in ALL if p[1] != n), (), 0) for n in LINEAR_NAMES}
    out["all but layer 5 ffn_out int8, alpha 0.5"] = (0.5, ((5, "ffn_out"),), (), 0)
    out |= {f"all int8, alpha {a}, ffn_out zero point": (a, (), ("ffn_out",), 0) for a in (0.5, 0.6)}
    out |= {f"all int8, alpha 0.5, ffn_out zero point, {k} outlier channels in fp32": (0.5, (), ("ffn_out",), k)
            for k in (8, 32)}
    return out


def slug(name: str) -> str:
    return name.split(" (")[0].replace(", ", "-").replace(" ", "-").replace(".", "_")


def fp32_reference(fixture: list[str], pairs: list) -> dict:
    """The fp32 encoder's embeddings of the fixture and of both sides of the STS-B pairs."""
    fp32 = SentenceEncoder.from_pretrained()
    return {"fixture": fp32.encode(fixture), "first": fp32.encode([p[0] for p in pairs]),
            "second": fp32.encode([p[1] for p in pairs])}


def measure(alpha: float, keep_float: tuple, zero_point: tuple, reference: dict, fixture: list[str],
            pairs: list, make=Int8Linear, outlier_channels: int = 0) -> dict:
    """Quantise a fresh encoder (make: the int8 layer, as quant.quantize) and compare it with the fp32 reference,
    and with sentence-transformers' fixture embeddings."""
    encoder = SentenceEncoder.from_pretrained()
    quantize(encoder, alpha, keep_float, zero_point, outlier_channels=outlier_channels, make=make)
    swapped = sum(not isinstance(m, nn.Linear) for layer in encoder.model.layers for m in linears(layer).values())
    assert swapped == 72 - len(keep_float), f"{swapped} layers swapped, expected {72 - len(keep_float)}"
    emb = encoder.encode(fixture)
    cos = (emb * reference["fixture"]).sum(1)
    to_st = (emb * torch.tensor(REFERENCE["embeddings"])).sum(1)
    first, second = encoder.encode([p[0] for p in pairs]), encoder.encode([p[1] for p in pairs])
    score = 100 * spearman((first * second).sum(1).numpy(), np.array([p[2] for p in pairs]))
    stsb_cos = torch.cat([(first * reference["first"]).sum(1), (second * reference["second"]).sum(1)])
    return {"alpha": alpha, "fp32_layers": len(keep_float), "outlier_channels": outlier_channels,
            "fixture_min_cos": round(cos.min().item(), 5), "fixture_mean_cos": round(cos.mean().item(), 5),
            "fixture_min_cos_st": round(to_st.min().item(), 5),
            "stsb_min_cos": round(stsb_cos.min().item(), 5), "stsb_test_spearman": round(score, 2)}


def table(results: dict[str, dict]) -> str:
    fp32 = results["fp32 (nothing quantised)"]["stsb_test_spearman"]
    lines = [f"int8 linear layers (quant.py: weights per output channel, inputs per token, SmoothQuant strength "
             f"alpha, calibrated on quant.CALIBRATION). Against the fp32 encoder in the same process; CPU: "
             f"{'; '.join(sorted({r['cpu'] for r in results.values()}))} (each cell's in its result file).", "",
             "| int8 layers | fp32 layers (of 72) | fp32 outlier channels per layer | fixture min cos | fixture mean cos "
             "| STS-B min cos | STS-B test | Δ vs fp32 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['fp32_layers']} | {r.get('outlier_channels', 0)} | {r['fixture_min_cos']:.5f} | {r['fixture_mean_cos']:.5f} | {r['stsb_min_cos']:.5f} "
                     f"| {r['stsb_test_spearman']:.2f} | {r['stsb_test_spearman'] - fp32:+.2f} |")
    lines += ["", "Targets (issue #9): fixture min cos >= 0.98, STS-B test >= 83.12 (fp32 83.42 - 0.3).",
              "", "Generated by `python experiments/int8_layers.py` (one seed-free pass: int8 rounding is deterministic)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    todo = cells()
    if not args.table_only:
        fixture = REFERENCE["sentences"]
        pairs = read_stsb("test", None)
        reference = None
        for name, (alpha, keep, zero, outliers) in todo.items():
            if (RESULTS / f"{slug(name)}.json").is_file():
                continue
            if reference is None:
                reference = fp32_reference(fixture, pairs)
            r = cell(RESULTS, slug(name),
                     lambda: measure(alpha, keep, zero, reference, fixture, pairs, outlier_channels=outliers))
            print(f"{name}: {r}", flush=True)
    results = {name: json.loads(p.read_text()) for name in todo if (p := RESULTS / f"{slug(name)}.json").is_file()}
    if results:
        text = table(results)
        (HERE / "int8_layers.md").write_text(text)
        print(text)
    print(f"CPU: {describe()}")


if __name__ == "__main__":
    main()
