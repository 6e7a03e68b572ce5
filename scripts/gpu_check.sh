#!/usr/bin/env bash
# The device checks in one go (one GPU, NCCL world size 1): the executor benchmark against
# a plain loop, profiled costs of the same split, and the simulator's prediction for them.
# Writes everything under $OUT (default out/gpu).
set -uo pipefail
OUT=${OUT:-out/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
echo "== benchmark"; date
$PY -m ppc.exec.benchmark --out "$OUT/bench.json" --steps 10 2>&1 | tail -5
echo "== profile"; date
$PY -m ppc profile --model llama-3.2-1b --stages 4 --seq-len 1024 --device cuda --no-layers \
    -o "$OUT/costs_llama1b_h_1x4.json" 2>&1 | tail -12
echo "== simulate"; date
$PY -m ppc simulate interleaved_1f1b --ranks 1 --virtual 4 --microbatches 8 \
    --costs "$OUT/costs_llama1b_h_1x4.json" --json > "$OUT/sim.json" && head -c 400 "$OUT/sim.json"; echo
echo "== torch.profiler"; date
$PY scripts/gpu_profile_step.py "$OUT" 2>&1 | tail -3
date
