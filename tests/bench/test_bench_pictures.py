"""Pictures at scale: interleaved 1F1B, R=64, M=512, V=4 (262,144 compute ops), drawn as
PNG (overview + windows) and as the interactive HTML page, and the page's renderer run
in node (load + first draw, and a redraw of the whole step).

Run: .venv/bin/python -m pytest tests/bench/test_bench_pictures.py --benchmark-enable
The figures are recorded in docs/simulator.md (Pictures). Without --benchmark-enable
each case runs once, as a test that rendering at this scale finishes.
"""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
from pathlib import Path

import pytest

R, M, V = 64, 512, 4
HARNESS = Path(__file__).parent.parent / "data" / "timeline_harness.js"


@pytest.fixture(scope="module")
def timeline():
    from ppc.sim.timeline import simulate

    from ppc.compiler.lower import lower
    from ppc.costs import CostModel
    from ppc.lang import load_schedule

    gc.disable()
    try:
        order = load_schedule("interleaved_1f1b").expand(ranks=R, microbatches=M, virtual=V)
        costs = CostModel.uniform(order.stages)
        return simulate(lower(order, costs=costs), costs)
    finally:
        gc.enable()


def test_bench_png_64x512x4(benchmark, timeline, tmp_path):
    from ppc.sim.plot import draw

    path = tmp_path / "big.png"
    benchmark.pedantic(draw, args=([timeline], path), rounds=1, iterations=1)
    assert path.read_bytes().startswith(b"\x89PNG")


def test_bench_html_64x512x4(benchmark, timeline, tmp_path):
    from ppc.sim.html import write_html

    path = tmp_path / "big.html"
    benchmark.pedantic(write_html, args=([timeline], path), rounds=1, iterations=1)
    assert path.stat().st_size < 8_000_000


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_bench_html_renderer_64x512x4(benchmark, timeline, tmp_path):
    from ppc.sim.html import write_html

    path = tmp_path / "big.html"
    write_html([timeline], path)

    def render():
        done = subprocess.run(["node", str(HARNESS), str(path), "400,300"], capture_output=True, text=True,
                              timeout=120, check=True)
        return json.loads(done.stdout)

    stats = benchmark.pedantic(render, rounds=1, iterations=1)
    benchmark.extra_info.update(load_ms=stats["loadMs"], redraw_ms=stats["redrawMs"])
    assert stats["hovers"][0] is not None
    assert sum(s.startswith("rank ") for s in stats["texts"]) >= R
