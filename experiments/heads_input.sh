#!/usr/bin/env bash
# Should the heads read the L2-normalised or the raw mean-pooled embedding? And do balanced
# class weights help? Full fine-tuning on the embedded reviews set, defaults otherwise
# (3 epochs, batch 16, bf16 autocast where supported), three seeds each.
set -euo pipefail
cd "$(dirname "$0")/.."
for seed in 0 1 2; do
  python train.py --seed $seed --out runs/heads-raw-$seed | tail -1
  python train.py --seed $seed --normalize --out runs/heads-normalized-$seed | tail -1
  python train.py --seed $seed --class-weights --out runs/heads-classweights-$seed | tail -1
done
