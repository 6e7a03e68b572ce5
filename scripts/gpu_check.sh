#!/usr/bin/env bash
# The device checks in one go (one GPU, NCCL world size 1): profiled costs of the
# llama-3.2-1b 4-stage split, the executor benchmark against a plain loop, the simulator's
# prediction for it; then the CPU prediction check with 4 gloo ranks on the host's cores.
# Writes everything under $OUT (default out/gpu). PROFILE=1 adds a torch.profiler breakdown.
set -uo pipefail
OUT=${OUT:-out/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers, os; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cpus', os.cpu_count())" | tee -a "$OUT/gpu.txt"
echo "== profile"; date
$PY -m ppc profile --model llama-3.2-1b --stages 4 --seq-len 1024 --device cuda --no-layers \
    -o "$OUT/costs_llama1b_gpu_1x4.json" 2>&1 | tail -9
echo "== simulate"; date
$PY -m ppc simulate interleaved_1f1b --ranks 1 --virtual 4 --microbatches 8 \
    --costs "$OUT/costs_llama1b_gpu_1x4.json" --json > "$OUT/sim.json" && head -c 300 "$OUT/sim.json"; echo
echo "== benchmark"; date
$PY -m ppc.exec.benchmark --out "$OUT/bench.json" --steps 10 2>&1 | tail -3
echo "== cpu prediction (4 gloo ranks)"; date
OUT="$OUT/predict" PPC="$PY -m ppc" scripts/predict_cpu.sh 2>&1 | tail -4
if [ "${PROFILE:-0}" = 1 ]; then
  echo "== torch.profiler"; date
  $PY scripts/gpu_profile_step.py "$OUT" 2>&1 | tail -3
fi
date
