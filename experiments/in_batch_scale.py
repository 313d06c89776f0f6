"""What batch size and scale do to the in-batch-negatives loss: all-mpnet-base-v2 as it comes, on the
STS-B training pairs scored 4 or more (positive pairs), split into batches in a seeded order.

    python experiments/in_batch_scale.py          # ~2 min on 2 cores: one cell
    python experiments/in_batch_scale.py --table-only

For each batch size B (scale 20): the mean loss, its ceiling log(B) (the loss of an encoder that cannot
tell its positive from the other B - 1), and accuracy@1 (anchor's nearest positive in the batch is its
own). For each scale (B 32): the loss and the hardest negative's share of the gradient the negatives
get (softmax weight of the most similar wrong positive / sum over the wrong positives). The numbers
behind docs/contrastive.md; one JSON in experiments/results/in_batch_scale/, the table in
experiments/in_batch_scale.md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from cells import cell  # noqa: E402

RESULTS = HERE / "results" / "in_batch_scale"
BATCHES, SCALES = (2, 8, 32, 128), (1.0, 5.0, 20.0, 50.0)


def compute() -> dict:
    import torch
    import torch.nn.functional as F

    import data
    from heads import MultiTaskModel, in_batch_negatives_loss
    from mpnet import SentenceEncoder

    pairs = data.load_stsb("train")
    rows = [i for i, s in enumerate(pairs.scores) if s >= 4.0]
    encoder = SentenceEncoder.from_pretrained()
    emb = MultiTaskModel(encoder.model, {}).encode(encoder.tokenizer, [pairs.first[i] for i in rows] +
                                                   [pairs.second[i] for i in rows])
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
    anchors, positives = emb[:len(rows)][order], emb[len(rows):][order]

    def batches(size: int):
        for start in range(0, len(rows) - size + 1, size):  # whole batches only
            yield anchors[start:start + size], positives[start:start + size]

    by_batch = []
    for size in BATCHES:
        losses, hits = [], []
        for a, p in batches(size):
            losses.append(float(in_batch_negatives_loss(a, p, scale=20.0)))
            sims = F.normalize(a, dim=-1) @ F.normalize(p, dim=-1).T
            hits.append(float((sims.argmax(1) == torch.arange(size)).float().mean()))
        by_batch.append({"batch": size, "batches": len(losses), "loss": sum(losses) / len(losses),
                         "ceiling": math.log(size), "acc1": 100 * sum(hits) / len(hits)})
    by_scale = []
    for scale in SCALES:
        losses, shares = [], []
        for a, p in batches(32):
            losses.append(float(in_batch_negatives_loss(a, p, scale=scale)))
            weights = (scale * F.normalize(a, dim=-1) @ F.normalize(p, dim=-1).T).softmax(-1)
            wrong = weights.masked_fill(torch.eye(32, dtype=torch.bool), 0.0)
            shares.append(float((wrong.max(1).values / wrong.sum(1)).mean()))
        by_scale.append({"scale": scale, "loss": sum(losses) / len(losses), "hardest_share": sum(shares) / len(shares)})
    return {"pairs": len(rows), "by_batch": by_batch, "by_scale": by_scale}


def table(result: dict) -> str:
    lines = [f"all-mpnet-base-v2 before any fine-tuning, {result['pairs']} STS-B training pairs scored >= 4, "
             f"one seeded order; CPU: {result['cpu']} (the figures do not depend on it)", "",
             "| batch B (scale 20) | batches | loss | log B (a blind encoder's loss) | accuracy@1 in the batch |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {r['batches']} | {r['loss']:.3g} | {r['ceiling']:.3f} | {r['acc1']:.1f} |"
              for r in result["by_batch"]]
    lines += ["", "| scale (B 32) | temperature 1/scale | loss | hardest negative's share of the negatives' gradient |",
              "|---:|---:|---:|---:|"]
    lines += [f"| {r['scale']:g} | {1 / r['scale']:.3g} | {r['loss']:.3g} | {r['hardest_share']:.2f} |"
              for r in result["by_scale"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    path = RESULTS / "base-stsb-train.json"
    if args.table_only and not path.is_file():
        sys.exit(f"no {path} yet: run python experiments/in_batch_scale.py")
    text = table(json.loads(path.read_text()) if args.table_only else cell(RESULTS, "base-stsb-train", compute))
    (HERE / "in_batch_scale.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
