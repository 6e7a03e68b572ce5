"""`ppc simulate`: JSON, tables, comparisons, pictures, traces, and errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ppc.cli import main


def simulate(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", *args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_json_report(capsys):
    code, out, _ = simulate(capsys, "1f1b", "--ranks", "4", "--microbatches", "8", "--json")
    assert code == 0
    doc = json.loads(out)
    assert {k: doc[k] for k in ("schedule", "ranks", "stages", "microbatches", "makespan")} == {
        "schedule": "1f1b", "ranks": 4, "stages": 4, "microbatches": 8, "makespan": 33.0,
    }
    assert doc["bubble"] == pytest.approx(3 / 11)
    assert [r["peak_activations"] for r in doc["per_rank"]] == [4, 3, 2, 1]
    assert set(doc["per_rank"][0]) == {"rank", "busy", "idle", "bubble", "peak_activations", "peak_bytes"}
    assert doc["critical_path"][0] == {"rank": 0, "op": "0F0", "start": 0.0, "end": 1.0}


def test_inline_costs_and_costs_file(capsys, tmp_path):
    code, out, _ = simulate(capsys, "1f1b", "-r", "2", "-m", "2", "--costs", "F=1,B=4", "--json")
    assert code == 0 and json.loads(out)["makespan"] == pytest.approx(15.0)
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"F": [1, 1], "I": 1, "W": 1, "activation_bytes": [10, 20]}))
    code, out, _ = simulate(capsys, "1f1b", "-r", "2", "-m", "2", "--costs", str(costs), "--json")
    assert [r["peak_bytes"] for r in json.loads(out)["per_rank"]] == [20, 20]


def test_default_output_has_table_and_gantt(capsys):
    code, out, _ = simulate(capsys, "zb_h1", "--ranks", "2", "--microbatches", "3", "--width", "40")
    assert code == 0
    assert "peak activations" in out and "bubble" in out
    assert "rank 0" in out and "rank 1" in out
    assert "makespan 10" in out


def test_compare(capsys):
    code, out, _ = simulate(capsys, "1f1b", "zb_h1", "gpipe", "-r", "4", "-m", "8", "--compare")
    assert code == 0
    lines = [line for line in out.splitlines() if "1f1b" in line or "zb_h1" in line or "gpipe" in line]
    assert len(lines) == 3 and "27.27%" in lines[0] and "11.11%" in lines[1]
    code, out, _ = simulate(capsys, "1f1b", "zb_h1", "-r", "4", "-m", "8", "--compare", "--json")
    rows = json.loads(out)
    assert [r["schedule"] for r in rows] == ["1f1b", "zb_h1"]
    assert [r["peak_activations"] for r in rows] == [4, 4]  # zb_h1 at 1F1B's peak


def test_compare_counts_peaks_in_one_unit_across_virtual_stages(capsys):
    code, out, _ = simulate(capsys, "1f1b", "zbv:2", "dualpipev:2", "-r", "4", "-m", "8", "--compare", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["peak_stage_equivalents"] for r in rows] == [r["peak_activations"] / v for r, v in zip(rows, (1, 2, 2))]


@pytest.mark.parametrize("suffix", [".svg", ".png", ".html"])
def test_out_picture(capsys, tmp_path, suffix):
    path = tmp_path / f"timeline{suffix}"
    code, _, err = simulate(capsys, "interleaved_1f1b", "-r", "2", "-m", "4", "--virtual", "2", "--out", str(path))
    assert code == 0
    assert err.splitlines()[-1] == f"wrote {path}"
    data = path.read_bytes()
    expected = {".png": b"\x89PNG", ".svg": b"<svg", ".html": b"<canvas"}[suffix]
    assert data.startswith(expected) if suffix == ".png" else expected in data
    if suffix == ".svg":
        assert b"interleaved_1f1b" in data


def test_out_trace(capsys, tmp_path):
    path = tmp_path / "trace.json"
    code, _, _ = simulate(capsys, "1f1b", "-r", "2", "-m", "2", "--out", str(path))
    assert code == 0
    events = json.loads(path.read_text())["traceEvents"]
    slices = [e for e in events if e["ph"] == "X"]
    assert sorted(e["name"] for e in slices if e["cat"] in "FBIW") == sorted(
        ["0F0", "0F1", "0B0", "0B1", "1F0", "1F1", "1B0", "1B1"]
    )
    b0 = next(e for e in slices if e["name"] == "1B0")
    assert (b0["tid"], b0["ts"], b0["dur"]) == (1, 2000.0, 2000.0)


MALFORMED = {
    "deadlock": ("0F0,0B0,0F1,0B1\n1F0,1F1,1B0,1B1\n", "deadlock: rank 0 waits at 0B0 for 1B0; rank 1 waits at 1F1 for 0F1"),
    "missing": ("0F0,0F1,0B0\n1F0,1B0,1F1,1B1\n", "0B1"),
    "duplicate": ("0F0,0F0,0B0\n1F0,1B0\n", "0F0"),
    "backward_first": ("0B0,0F0\n1F0,1B0\n", "0B0"),
    "unknown": ("0F0,0X0,0B0\n1F0,1B0\n", "unknown action '0X0'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_csv_fails_with_exit_2_and_one_line(capsys, tmp_path, case):
    text, expected = MALFORMED[case]
    path = tmp_path / f"{case}.csv"
    path.write_text(text)
    code, out, err = simulate(capsys, str(path))
    assert code == 2
    assert out == ""
    assert expected in err
    assert err.startswith(("ppc: ", str(path)))
    assert len([line for line in err.splitlines() if line.strip()]) <= 3  # message (+ excerpt)
    assert "Traceback" not in err


def test_several_schedules_need_compare(capsys):
    code, _, err = simulate(capsys, "1f1b", "gpipe", "-r", "2", "-m", "2")
    assert code == 2 and "--compare" in err


def test_bad_costs_exit_2(capsys):
    code, _, err = simulate(capsys, "1f1b", "-r", "2", "-m", "2", "--costs", "F=x")
    assert code == 2 and err.strip() == "ppc: --costs: F needs a number, got 'x'"


def test_simulate_does_not_import_torch():
    code = (
        "import sys\n"
        "from ppc.cli import main\n"
        "try:\n"
        "    main(['simulate', 'interleaved_1f1b', '-r', '2', '-m', '4', '--virtual', '2', '--json'])\n"
        "except SystemExit as done:\n"
        "    print('exit', done.code, 'torch', 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # the simulation succeeded (a report was printed) and torch was never imported
    assert result.stdout.strip().splitlines()[-1] == "exit 0 torch False"
    assert '"bubble"' in result.stdout
