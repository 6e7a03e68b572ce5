#!/usr/bin/env bash
# The main job: install ppc, show the built-in schedules and their bubble, then train
# tiny-llama with 1F1B on 4 CPU ranks (gloo) on the embedded corpus; the loss falls.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
PPC=.venv/bin/ppc
mkdir -p out
$PPC schedules
$PPC compile 1f1b --ranks 4 --microbatches 8
$PPC simulate gpipe 1f1b interleaved_1f1b:2 zb_h1 zbv:2 interleaved_zb:2 dualpipev:2 --ranks 4 --microbatches 8 --compare
$PPC run --model tiny-llama --schedule 1f1b --ranks 4 --microbatches 8 --microbatch-size 2 \
    --seq-len 64 --steps 20 --lr 3e-3 --warmup 2 --device cpu --metrics out/demo_metrics.jsonl "$@"
