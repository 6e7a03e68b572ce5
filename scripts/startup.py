"""Start-up, side by side: `ppc run` against a torch.distributed.pipelining script.

Both train tiny-llama with 1F1B on 4 gloo ranks of this machine, 4 microbatches of one
64-token sequence, for a few steps. The clock starts when the command is started and stops
when each step's line appears on its output: "first step" is everything a user waits for
(launcher, imports, model, plan or stages, rendezvous, one step). Runs alternate, and the
table gives each one's median.

    .venv/bin/python scripts/startup.py            # 3 runs of each, 3 steps
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PPC = [sys.executable, "-m", "ppc", "run", "--model", "tiny-llama", "--schedule", "1f1b", "--ranks", "4",
       "--microbatches", "4", "--microbatch-size", "1", "--seq-len", "64", "--device", "cpu"]
TORCH = [str(BIN / "torchrun"), "--nproc-per-node", "4", str(ROOT / "scripts" / "startup_torch.py"),
         "--microbatches", "4", "--seq-len", "64"]
STEP = re.compile(r"\bstep (\d+)")


def timed(command: list[str]) -> list[float]:
    """Seconds from the start of `command` to each step line it prints, and to its end."""
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "COLUMNS": "200"})
    times = []
    for line in process.stdout:
        if STEP.search(line) and ("loss" in line):
            times.append(time.perf_counter() - began)
    if process.wait() != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode}")
    return [*times, time.perf_counter() - began]


def commands_for(steps: int) -> dict[str, list[str]]:
    """The two commands, each training `steps` steps."""
    warm = ["--warmup", "1"] if steps > 1 else ["--warmup", "0"]
    return {"ppc run": [*PPC, "--steps", str(steps), *warm],
            "torch.distributed.pipelining": [*TORCH, "--steps", str(steps)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    commands = commands_for(args.steps)
    results: dict[str, list[list[float]]] = {name: [] for name in commands}
    for run in range(args.runs):
        for name, command in commands.items():
            results[name].append(timed(command))
            print(f"run {run + 1}/{args.runs} {name}: " + " ".join(f"{t:.2f}" for t in results[name][-1]) + " s",
                  file=sys.stderr)
    print(f"| median of {args.runs} runs, {os.cpu_count()} cores | first step | step {args.steps} | exit |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        first, last, end = (statistics.median(r[i] for r in runs) for i in (0, args.steps - 1, -1))
        print(f"| {name} | {first:.2f} s | {last:.2f} s | {end:.2f} s |")


if __name__ == "__main__":
    main()
