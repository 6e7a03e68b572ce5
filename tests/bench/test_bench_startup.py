"""Start-up benchmark: `ppc run` against a torch.distributed.pipelining script, to the
first step (scripts/startup.py; figures in docs/results.md).

It times whole processes (seconds each), so it runs only when benchmarks are enabled:
    .venv/bin/python -m pytest tests/bench/test_bench_startup.py --benchmark-enable
"""


import pytest
from conftest import load_script


@pytest.mark.slow
@pytest.mark.parametrize("who", ["ppc run", "torch.distributed.pipelining"])
def test_bench_time_to_first_step(benchmark, who):
    if benchmark.disabled:
        pytest.skip("times whole runs; enable with --benchmark-enable")
    startup = load_script("startup")
    command = startup.commands_for(2)[who]
    times = benchmark.pedantic(startup.timed, args=(command,), rounds=3, iterations=1)
    assert len(times) == 3  # two step lines and the exit
    benchmark.extra_info["first_step_s"] = times[0]
