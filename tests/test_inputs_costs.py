"""Costs JSON and inline `--costs` are checked against a schema (issue 15): known keys
only, finite and non-negative values, one per stage, the path of the bad field."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from ppc.cli import main
from ppc.costs import CostModel, read_costs_json
from ppc.costs_schema import MAX_TIME
from ppc.errors import CostError

DOCS_COSTS = Path(__file__).resolve().parents[1] / "docs" / "costs"


def simulate(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(["simulate", "1f1b", "-r", "4", "-m", "8", *argv])
    out, err = capsys.readouterr()
    return done.value.code, out, err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("latency=nan", "ppc: --costs: latency: must be a finite number, got nan"),
        ("step=nan", "ppc: --costs: step: must be a finite number, got nan"),
        ("F=1e308,I=1e308,W=1e308", "ppc: --costs: F: 1e+308 is above the largest allowed, 1e+15"),
        ("F=1e999", "ppc: --costs: F: must be a finite number, got inf"),
        ("step=-1", "ppc: --costs: step: must be >= 0, got -1"),
        ("Forward=1", "ppc: --costs: unknown key 'Forward' (did you mean 'F'?)"),
        ("latncy=1", "ppc: --costs: unknown key 'latncy' (did you mean 'latency'?)"),
        ("threads=1.5", "ppc: --costs: threads: must be a whole number, got 1.5"),
        ("bandwidth=0", "ppc: --costs: bandwidth: must be >= 0.001, got 0"),
        ("F", "ppc: --costs: cannot read 'F'; expected KEY=NUMBER"),
    ],
)
def test_bad_inline_costs_are_one_line_errors(capsys, spec, message) -> None:
    code, _, err = simulate(capsys, "--costs", spec)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1


def test_latency_is_no_longer_silently_dropped(capsys) -> None:
    code, out, _ = simulate(capsys, "--costs", "latency=1", "--json")
    assert code == 0 and json.loads(out)["makespan"] > 33  # 33 without latency


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1], "must be an object {...}, got a list of 1"),
        ({"F": [1, 2, [3], 4]}, "F[2]: must be a time >= 0, got a list of 1"),
        ({"F": [1, 2, 3]}, "F: needs a number or 4 values (one per stage), got 3"),
        ({"Forward": 1}, "unknown key 'Forward' (did you mean 'F'?)"),
        ({"comm": {"latncy": 1}}, "comm: unknown key 'latncy' (did you mean 'latency'?)"),
        ({"comm": [1]}, "comm: must be an object {...}, got a list of 1"),
        ({"activation_bytes": -1}, "activation_bytes: must be >= 0, got -1"),
        ({"step": [0.1, 0.1, "x", 0.1]}, "step[2]: must be a time >= 0, got 'x'"),
        ({"F": True}, "F: must be a time >= 0, got true"),
        ({"layers": [{"name": "a", "F": {"F": []}}]}, "layers[0].F: must be a time >= 0, got an object"),
        ({"host": {"cores": 2, "threads": 0}}, "host.threads: must be >= 1, got 0"),
    ],
)
def test_bad_costs_files_name_the_bad_field(tmp_path, capsys, doc, message) -> None:
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(doc))
    code, _, err = simulate(capsys, "--costs", str(path))
    assert code == 2 and err == f"ppc: {path}: {message}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'{"F": NaN}', "F: must be a finite number, got nan"),
        (b'{"F": 1e400}', "F: must be a finite number, got inf"),
        (b'{"F": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not a costs file: JSON nested too deep"),
        (b'{"F": ' + b"9" * 5000 + b"}", "not valid JSON: Exceeds the limit"),
        (b'{"F": 1,}', "1:9: not valid JSON"),
    ],
)
def test_json_that_python_reads_loosely_is_refused(tmp_path, text, message) -> None:
    path = tmp_path / "costs.json"
    path.write_bytes(text)
    with pytest.raises(CostError) as caught:
        read_costs_json(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_directory_as_costs_is_refused(tmp_path, capsys) -> None:
    code, _, err = simulate(capsys, "--costs", str(tmp_path))
    assert code == 2 and err == f"ppc: {tmp_path}: is a directory, not a costs file\n"


@pytest.mark.parametrize("path", sorted(DOCS_COSTS.glob("*.json")), ids=lambda p: p.stem)
def test_every_shipped_costs_file_fits_the_schema(path) -> None:
    data = read_costs_json(path)
    stages = len(data["F"])
    costs = CostModel.from_dict(data, stages, source=str(path))
    assert costs.stages == stages and all(f > 0 for f in costs.forward)


def test_the_largest_allowed_times_simulate_and_draw(capsys) -> None:
    code, out, err = simulate(capsys, "--costs", f"F={MAX_TIME:g},I={MAX_TIME:g},W={MAX_TIME:g}")
    assert code == 0, err
    assert "makespan 3.3e+16" in out


def test_the_gantt_chart_skips_non_finite_times() -> None:
    from ppc.sim.gantt import gantt
    from ppc.sim.timeline import simulate as run

    from ppc.compiler.lower import lower
    from ppc.lang import load_schedule

    order = load_schedule("1f1b").expand(ranks=2, microbatches=2)
    costs = CostModel.uniform(2)
    timeline = run(lower(order, costs=costs), costs)
    broken = dataclasses.replace(timeline, makespan=math.inf, start=[math.nan] * len(timeline.start),
                                 end=[math.inf] * len(timeline.end))
    text = gantt(broken, width=20).plain
    assert "makespan inf" in text and "F" not in text.split("\n")[0]


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([{"ph": "X", "ts": "x", "dur": 1}], "slice 0: 'ts' must be a finite number, got 'x'"),
        ([{"ph": "X", "ts": 0, "dur": 1, "args": [1]}], "slice 0: 'args' must be an object"),
        ({"traceEvents": 5}, "not a trace: expected a list of events"),
    ],
)
def test_a_malformed_trace_for_against_is_one_line(tmp_path, capsys, events, message) -> None:
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(events))
    code, _, err = simulate(capsys, "--against", str(path))
    assert code == 2 and err.startswith(f"ppc: {path}") and message in err and err.count("\n") == 1
