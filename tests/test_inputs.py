"""Inputs are parsed, never trusted: user files, language limits, sizes and CSVs (issue 15).

Each reproducer of the issue runs through the CLI entry point and must end in exit 2
with one positioned line (plus a source excerpt), never a traceback.
"""

from __future__ import annotations

import pytest

from ppc.cli import main
from ppc.errors import InputError, ScheduleError, SourcePos
from ppc.inputs import MAX_INPUT_BYTES, decode, read_text
from ppc.lang import load_schedule
from ppc.lang.csv_format import parse_csv
from ppc.lang.expand import expand
from ppc.lang.limits import MAX_NESTING, MAX_OPS_X_RANKS, MAX_ORDER_OPS, MAX_SCHEDULE_BYTES
from ppc.lang.parser import parse
from ppc.lang.placement import Layout, vshape


def ppc(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    out, err = capsys.readouterr()
    return done.value.code, out, err


def body(statements: str, header: str = "") -> str:
    return f"schedule t\n{header}per rank r {{\n  {statements}\n  F(r, 0) B(r, 0)\n}}\n"


# ------------------------------------------------------------------ reading files


def test_a_non_utf8_byte_is_reported_at_its_line_and_column(tmp_path, capsys) -> None:
    path = tmp_path / "s.ppc"
    path.write_bytes(b"schedule t\n# h\xc3\xa9llo \xff\n")  # the column counts characters
    code, _, err = ppc(capsys, "compile", str(path), "-r", "2", "-m", "2")
    assert code == 2
    assert err == f"{path}:2:9: not valid UTF-8 (byte 0xff); save the file as UTF-8\n"


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_csv_and_costs_files_are_decoded_the_same_way(tmp_path, capsys, suffix) -> None:
    path = tmp_path / f"x{suffix}"
    path.write_bytes(b'0F0,0B0\n0F1\xe2\x82,' if suffix == ".csv" else b'{"unit": "\xc3"}')
    argv = ["compile", str(path)] if suffix == ".csv" else [
        "simulate", "1f1b", "-r", "2", "-m", "2", "--costs", str(path)]
    code, _, err = ppc(capsys, *argv)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"{path}:2:4: not valid UTF-8" if suffix == ".csv" else f"{path}:1:11: not valid UTF-8")


def test_read_text_refuses_directories_missing_and_oversized_files(tmp_path) -> None:
    with pytest.raises(InputError, match="is a directory"):
        read_text(tmp_path)
    with pytest.raises(ScheduleError, match="no such schedule file"):
        read_text(tmp_path / "none.ppc", error=ScheduleError, what="schedule file")
    big = tmp_path / "big.csv"
    big.write_bytes(b"0" * (MAX_INPUT_BYTES + 1))
    with pytest.raises(InputError, match="larger than 16 MiB"):
        read_text(big)
    assert decode("\ufeffschedule".encode(), "x") == "schedule"  # a byte-order mark is dropped


def test_a_schedule_file_is_held_to_its_own_smaller_limit(tmp_path) -> None:
    path = tmp_path / "huge.ppc"
    path.write_text(body("let x = 1 " * (MAX_SCHEDULE_BYTES // 10)))
    with pytest.raises(ScheduleError, match="larger than 64 KiB, too large for a schedule file"):
        load_schedule(str(path))


# ------------------------------------------------------------------ language limits


@pytest.mark.parametrize(
    ("expr", "col"),
    [
        ("1" + "+1" * (MAX_NESTING + 1), 11 + 2 * (MAX_NESTING + 1)),  # at the operand past it
        ("-" * (MAX_NESTING + 1) + "1", 11),  # at the outermost level
        ("min(" * (MAX_NESTING + 1) + "1" + ")" * (MAX_NESTING + 1), 11),
    ],
)
def test_expressions_nested_past_the_limit_are_refused_with_a_position(expr, col) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse(body(f"let x = {expr}"), "t.ppc")
    assert "nested deeper than 64 levels" in caught.value.message
    assert (caught.value.pos.line, caught.value.pos.col) == (3, col)


def test_nesting_up_to_the_limit_expands_and_parentheses_are_free() -> None:
    deep = "1" + "+1" * (MAX_NESTING - 1)
    parens = "(" * 5000 + "0" + ")" * 5000
    blocks = "if 1 { " * MAX_NESTING + f"let y = {deep} " + "}" * MAX_NESTING
    schedule = parse(body(f"let x = {parens} {blocks}"))
    order = expand(schedule, ranks=2, microbatches=1)
    assert [str(a) for a in order.compute[1]] == ["1F0", "1B0"]


@pytest.mark.parametrize("nest", ["if 1 { ", "for q in 0 .. 1 { "])
def test_blocks_nested_past_the_limit_are_refused(nest) -> None:
    text = body(nest * (MAX_NESTING + 1) + "}" * (MAX_NESTING + 1))
    with pytest.raises(ScheduleError, match="blocks nested deeper than 64"):
        parse(text)


def test_an_elif_chain_counts_as_nesting() -> None:
    with pytest.raises(ScheduleError, match="blocks nested deeper"):
        parse(body("if 0 { }" + " elif 0 { }" * (MAX_NESTING + 1)))


def test_deep_input_never_reaches_a_recursion_limit(tmp_path, capsys) -> None:
    path = tmp_path / "deep.ppc"
    path.write_text(body("let x = " + "(" * 30_000 + "1" + ")" * 29_999))  # 60 KB, under the limit
    code, _, err = ppc(capsys, "compile", str(path), "-r", "2", "-m", "1")
    assert code == 2 and err.startswith(f"{path}:4:3: unexpected 'F', expected ')'")


@pytest.mark.parametrize(
    ("statements", "message"),
    [
        ("let x = 1234567890123456789", "number with 19 digits: at most 18"),
        ("let x = 999999999 * 999999999 * 999999999", "product out of range"),
        ("for q in 0 .. 999999999999 { }", "is a loop bound wrong?"),
        ("for q in 0 .. 100000 { for p in 0 .. 100000 { let z = 1 } }", "is a loop bound wrong?"),
    ],
)
def test_big_numbers_and_runaway_loops_end_in_a_positioned_error(statements, message) -> None:
    with pytest.raises(ScheduleError) as caught:
        schedule = parse(body(statements), "t.ppc")
        expand(schedule, ranks=2, microbatches=2)
    assert message in caught.value.message and caught.value.pos.line == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("schedule t\nparam R = 3\nper rank r { }\n", "R is reserved: the language binds R, M, V, S"),
        (body("let M = 1"), "M is reserved"),
        (body("for S in 0 .. 2 { }"), "S is reserved"),
        (body("if 1 { let r = 0 }"), "r is reserved: it is the rank variable of `per rank`"),
        ("schedule t\nparam r = 1\nper rank r { }\n", "r is reserved"),
        ("schedule t\nparam r = 1\npolicy { prefer B, F }\n", "r is reserved: it is the rank in policy limits"),
        ("schedule t\nper rank V { }\n", "V is reserved"),
    ],
)
def test_names_the_language_binds_are_reserved(text, message) -> None:
    with pytest.raises(ScheduleError, match=message.replace("`", ".")):
        parse(text)


def test_policy_hint_says_which_policy_never_runs_the_kind() -> None:
    split = parse("schedule t\npolicy {\n  split backward\n  prefer B, F\n}\n")
    with pytest.raises(ScheduleError, match="which a policy with `split backward` never runs"):
        expand(split, ranks=2, microbatches=2)
    full = parse("schedule t\npolicy {\n  prefer W, F\n}\n")
    with pytest.raises(ScheduleError, match="which a policy without `split backward` never runs"):
        expand(full, ranks=2, microbatches=2)


def test_a_long_source_line_is_cut_around_the_column_in_the_excerpt() -> None:
    pos = SourcePos(path="x", line=1, col=5000, source_line="a" * 4999 + "(" + "b" * 5000)
    _, line, caret = pos.excerpt().split("\n")
    assert len(line) < 120 and line.strip().startswith("...") and line.endswith("...")
    assert line[caret.index("^")] == "("


# ------------------------------------------------------------------ sizes


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["1f1b", "--ranks", "100000", "-m", "8"], "makes an order of 1,600,000 ops (S x M x 2); the limit is 500,000"),
        (["1f1b", "-r", "4", "-m", "10000000"], "makes an order of 80,000,000 ops"),
        (["1f1b", "--ranks", "100000", "-m", "2"], "400,000 ops x 100,000 ranks = 40,000,000,000"),
        (["zbv", "-r", "500", "-m", "100"], "300,000 ops x 500 ranks"),
    ],
)
def test_orders_too_large_are_refused_before_they_are_built(capsys, argv, message) -> None:
    code, _, err = ppc(capsys, "compile", *argv)
    assert code == 2 and message in err and err.count("\n") == 1


def test_the_stated_limits_admit_the_documented_large_case() -> None:
    ops = 64 * 4 * 512 * 2  # interleaved_1f1b R=64 M=512 V=4 (docs/simulator.md)
    assert ops <= MAX_ORDER_OPS and ops * 64 <= MAX_OPS_X_RANKS


def test_layout_is_built_in_one_pass_over_the_stages() -> None:
    ranks = 300_000  # quadratic would be 1.8e11 steps; one pass is 6e5
    layout = Layout.of(vshape(ranks, 2), ranks)
    assert layout.local[0] == (0, 2 * ranks - 1) and layout.local[ranks - 1] == (ranks - 1, ranks)
    assert layout.stage(7, 1) == 2 * ranks - 8 and layout.rank(2 * ranks - 8) == 7


# ------------------------------------------------------------------ CSV


def test_trailing_blank_lines_add_no_ranks() -> None:
    order = parse_csv("0F0,1F0,1B0,0B0\n\n  \n\n")
    assert order.ranks == 1 and order.stages == 2


def test_an_empty_row_between_ranks_is_refused() -> None:
    with pytest.raises(ScheduleError, match="row 1 holds no actions"):
        parse_csv("0F0,0B0\n,,\n1F0,1B0\n", "x.csv")


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("9999999999F0", "names stage 9999999999, but the CSV holds only 3 actions"),
        ("0F9999999999", "names microbatch 9999999999"),
        ("1F" + "9" * 5000, "a cell of 5002 characters is not an action"),
    ],
)
def test_csv_indices_are_checked_before_anything_is_sized_by_them(cell, message) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_csv(f"0F0,0B0,{cell}\n", "x.csv")
    assert message in caught.value.message
    assert (caught.value.pos.line, caught.value.pos.col) == (1, 9)


def test_a_malformed_csv_is_a_positioned_error() -> None:
    with pytest.raises(ScheduleError, match="not a readable CSV") as caught:
        parse_csv('0F0,0B0\n1F0,"1B0' + "x" * 200_000 + "\n", "x.csv")
    assert caught.value.pos.path == "x.csv"


def test_csv_round_trip_still_holds_with_crlf_line_ends() -> None:
    order = load_schedule("1f1b").expand(ranks=2, microbatches=2)
    text = "".join(",".join(str(a) for a in row) + "\r\n" for row in order.compute)
    assert parse_csv(text).compute == order.compute
