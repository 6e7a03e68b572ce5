"""`ppc compile` and `ppc schedules` end to end, in subprocesses (the real entry point)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ppc

from ppc.lang import builtin_schedules


def test_json_output_has_the_agreed_record() -> None:
    result = ppc("compile", "1f1b", "--ranks", "4", "--microbatches", "8", "--format", "json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert set(record) == {"schedule", "ranks", "stages", "microbatches", "placement", "compute",
                           "program", "graph"}
    assert [i["op"] for i in record["program"]["instructions"][3][:3]] == ["RECV_F", "F", "B"]
    assert (record["ranks"], record["stages"], record["microbatches"]) == (4, 4, 8)
    assert record["placement"] == [0, 1, 2, 3]
    assert record["compute"][3][:4] == ["3F0", "3B0", "3F1", "3B1"]


def test_text_and_csv_formats() -> None:
    text = ppc("compile", "zbv", "-r", "2", "-m", "4", "--virtual", "2")
    assert text.returncode == 0
    assert text.stdout.splitlines()[1].startswith("rank 0 [stages 0, 3]: 0F0 0F1")
    csv = ppc("compile", "zbv", "-r", "2", "-m", "4", "--virtual", "2", "--format", "csv")
    assert len(csv.stdout.splitlines()) == 2 and csv.stdout.startswith("0F0,0F1,")


def test_csv_path_is_accepted_and_sizes_are_checked(tmp_path: Path) -> None:
    csv = ppc("compile", "interleaved_1f1b", "-r", "2", "-m", "4", "--virtual", "2", "--format", "csv")
    path = tmp_path / "mine.csv"
    path.write_text(csv.stdout)
    again = ppc("compile", str(path), "--format", "csv")
    assert again.returncode == 0 and again.stdout == csv.stdout
    wrong = ppc("compile", str(path), "--ranks", "4")
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == f"ppc: {path} has 2 ranks but --ranks 4 was given"


def test_copied_builtin_can_be_changed_and_compiled(tmp_path: Path) -> None:
    source = builtin_schedules()["1f1b"].read_text()
    changed = (
        source.replace("schedule 1f1b", "schedule my_1f1b\nparam extra = 0")
        .replace("min(R - r - 1, M)", "min(R - r - 1 + extra, M)")
    )
    assert changed.count("extra") == 2
    path = tmp_path / "my_1f1b.ppc"
    path.write_text(changed)
    args = ("compile", str(path), "-r", "4", "-m", "8", "--format", "json")
    plain = json.loads(ppc(*args).stdout)
    deeper = json.loads(ppc(*args, "--param", "extra=1").stdout)
    assert plain["schedule"] == "my_1f1b"
    assert plain["compute"][0][:6] == ["0F0", "0F1", "0F2", "0F3", "0B0", "0F4"]
    assert deeper["compute"][0][:6] == ["0F0", "0F1", "0F2", "0F3", "0F4", "0B0"]


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ppc"
    bad.write_text("schedule bad\nper rank r {\n  F(r 0)\n}\n")
    result = ppc("compile", str(bad), "-r", "2", "-m", "2")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{bad}:3:7: unexpected '0', expected one of")
    assert lines[1:] == ["      F(r 0)", "          ^"]


def test_constraint_unknown_name_and_param_errors() -> None:
    failed = ppc("compile", "interleaved_1f1b", "-r", "4", "-m", "8", "--param", "x=1")
    assert failed.returncode == 2 and "has no parameter 'x'" in failed.stderr
    constraint = ppc("compile", "1f1b", "-r", "4", "-m", "8", "--virtual", "2")
    assert constraint.returncode == 2
    assert "1f1b has one stage per rank; use interleaved_1f1b for V > 1" in constraint.stderr
    unknown = ppc("compile", "nope", "-r", "2", "-m", "2")
    assert unknown.returncode == 2
    assert "built-in schedules: 1f1b, 1f1b_recompute, dualpipev, gpipe, interleaved_1f1b, interleaved_zb, looped_bfs, zb_h1, zb_h2, zbv" in unknown.stderr
    malformed = ppc("compile", "1f1b", "-r", "2", "-m", "2", "--param", "x")
    assert malformed.returncode == 2 and "expected NAME=INTEGER" in malformed.stderr
    missing = ppc("compile", "1f1b")
    assert missing.returncode == 2 and "needs --ranks and --microbatches" in missing.stderr


def test_schedules_lists_every_builtin_with_doc() -> None:
    result = ppc("schedules")
    assert result.returncode == 0
    for name in builtin_schedules():
        assert name in result.stdout
    assert "Zero bubble" in result.stdout


def test_compile_path_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from ppc.cli import main\n"
        "try:\n"
        "    main(['compile', 'zbv', '-r', '8', '-m', '32', '--virtual', '2', '--format', 'json'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('no torch')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("no torch\n")
