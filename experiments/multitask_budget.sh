#!/usr/bin/env bash
# Joint vs single-task training on the real benchmark (Task A = Banking77, Task B = SST-2)
# under one fixed CPU budget: 300 optimizer steps of 32 examples each, bf16 autocast, seed 0.
# Each run's last output line is a JSON object of test (Banking77) / dev (SST-2) accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
common="--epochs 1 --max-steps 300 --batch-size 32 --max-train 20000 --seed 0 --log-every 50"
python train.py --task-a banking77 --task-b sst2 --out runs/joint $common | tail -1
python train.py --task-a banking77 --task-b none --out runs/single-banking77 $common | tail -1
python train.py --task-a sst2 --task-b none --out runs/single-sst2 $common | tail -1
