#!/usr/bin/env bash
# Predicted vs measured step time on CPU with 4 gloo ranks (tiny-llama; 1f1b and
# interleaved_1f1b with V=2): profile the costs, train with a trace, compare.
# The profile runs as one of 4 ranks sharing this host (--ranks 4), so it also holds on a
# machine with fewer cores than ranks. Measured: the median step of the last STEPS-WARM
# steps (the first steps of a CPU run are slower). Writes to $OUT.
set -uo pipefail
OUT=${OUT:-out/predict}
PPC=${PPC:-ppc}
SEQ=${SEQ:-256}; MBS=${MBS:-4}; M=${M:-8}; STEPS=${STEPS:-30}; WARM=${WARM:-10}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
for spec in 1f1b:1 interleaved_1f1b:2; do
  sched=${spec%:*}; V=${spec#*:}; S=$((4 * V))
  $PPC profile --model tiny-llama --stages $S --seq-len $SEQ --microbatch-size $MBS --no-layers \
      --ranks 4 --p2p --warmup 5 --repeats 15 -o "$OUT/costs_s$S.json" > "$OUT/profile_s$S.txt" 2>&1 || tail -5 "$OUT/profile_s$S.txt"
  $PPC run --model tiny-llama --schedule $sched --ranks 4 --virtual $V --microbatches $M \
      --microbatch-size $MBS --seq-len $SEQ --steps $STEPS --device cpu --quiet \
      --metrics "$OUT/metrics_$sched.jsonl" --trace "$OUT/trace_$sched.json" 2>&1 | tail -3
  $PPC simulate $sched --ranks 4 --virtual $V --microbatches $M --costs "$OUT/costs_s$S.json" \
      --against "$OUT/trace_$sched.json" --json > "$OUT/against_$sched.json"
  python3 - "$OUT" "$sched" "$WARM" <<'PY'
import json, statistics, sys
out, sched, warm = sys.argv[1], sys.argv[2], int(sys.argv[3])
steps = [json.loads(line)["step_time_s"] for line in open(f"{out}/metrics_{sched}.jsonl")]
report = json.load(open(f"{out}/against_{sched}.json"))
predicted = report["makespan"]
measured = statistics.median(steps[warm:])
print(f"{sched}: predicted {predicted:.4f} s, measured median of steps {warm + 1}-{len(steps)} "
      f"{measured:.4f} s (first steps {[round(s, 3) for s in steps[:warm]]}), "
      f"error {predicted / measured - 1:+.1%}")
PY
done
