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
echo "== executor on NCCL, world 1: checkpoint, resume under another schedule, a compiled program"; date
DEVICE=${DEVICE:-cuda}
RUN="$PY -m ppc run --model tiny-llama --ranks 1 --microbatches 4 --seq-len 64 --steps 4 --warmup 1 --device $DEVICE --quiet"
$RUN --schedule 1f1b --checkpoint-every 2 --checkpoint-dir "$OUT/ck" --metrics "$OUT/full.jsonl" 2>&1 | tail -2
$RUN --schedule gpipe --resume "$OUT/ck/step-000002" --checkpoint-dir "$OUT/ck2" --metrics "$OUT/resumed.jsonl" 2>&1 | tail -2
$PY -m ppc compile 1f1b -r 1 -m 4 --model tiny-llama --seq-len 64 --format json > "$OUT/p.json"
$RUN --schedule "$OUT/p.json" --metrics "$OUT/program.jsonl" 2>&1 | tail -2
$PY - "$OUT" <<'PYEOF'
import json, sys
out = sys.argv[1]
loss = lambda f: [json.loads(x)["loss"] for x in open(f"{out}/{f}")]
full, resumed, program = loss("full.jsonl"), loss("resumed.jsonl"), loss("program.jsonl")
print("resume steps 3-4:", resumed, "vs", full[2:], "equal" if resumed == full[2:] else "DIFFER")
print("program file:", program == full and "equal to 1f1b" or f"DIFFER {program} vs {full}")
PYEOF
echo "== cpu prediction (4 gloo ranks)"; date
OUT="$OUT/predict" PPC="$PY -m ppc" scripts/predict_cpu.sh 2>&1 | tail -4
if [ "${PROFILE:-0}" = 1 ]; then
  echo "== torch.profiler"; date
  $PY scripts/gpu_profile_step.py "$OUT" 2>&1 | tail -3
fi
date
