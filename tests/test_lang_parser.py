"""The parser and expression evaluator: AST shape, positions, and error translation."""

from __future__ import annotations

import pytest

from ppc.errors import ConstraintError, ScheduleError
from ppc.lang import ast, builtin_schedules, load_schedule
from ppc.lang.evaluate import BASE_FUNCTIONS, Scope, evaluate
from ppc.lang.expand import expand
from ppc.lang.parser import parse

HEADER = "schedule t\n"


def value(expr: str, **names: int) -> int:
    definition = parse(f"{HEADER}param x = {expr}\nper rank r {{ }}\n")
    return evaluate(definition.params[0].default, Scope(names=names, functions=BASE_FUNCTIONS))


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 // 2 % 3", 0),
        ("-7 // 2", -4),
        ("min(3, 1, 2) + max(4, 5)", 6),
        ("abs(0 - 5)", 5),
        ("1 < 2 and not 3 == 4", 1),
        ("0 or 2 >= 3", 0),
        ("true + false", 1),
        ("R - 1 - 2", 3),
    ],
)
def test_expressions_follow_python_precedence(expr: str, expected: int) -> None:
    assert value(expr, R=6) == expected


def test_ast_nodes_carry_positions() -> None:
    definition = parse('"""Doc\n  string."""\nschedule t\nper rank r {\n  F(r, 0)\n}\n', "t.ppc")
    assert definition.doc == "Doc string."
    op = definition.body.body[0]
    assert isinstance(op, ast.Op)
    assert (op.pos.path, op.pos.line, op.pos.col, op.pos.source_line) == ("t.ppc", 5, 3, "  F(r, 0)")
    assert op.stage.pos.col == 5


def test_unexpected_end_of_file() -> None:
    with pytest.raises(ScheduleError) as caught:
        parse(HEADER + "per rank r {\n  F(r, 0)\n", "e.ppc")
    assert caught.value.message.startswith("unexpected end of file, expected")
    assert "Token" not in str(caught.value) and "lark" not in str(caught.value)


def test_unknown_placement_and_two_placements() -> None:
    with pytest.raises(ScheduleError, match="unknown placement 'zigzag'"):
        parse(HEADER + "placement zigzag\nper rank r { }\n")
    with pytest.raises(ScheduleError, match="at most one placement"):
        parse(HEADER + "placement loop\nplacement vshape\nper rank r { }\n")


def test_explicit_placement_is_checked() -> None:
    src = HEADER + "placement [0, 1, 1]\nper rank r { }\n"
    with pytest.raises(ScheduleError, match="lists 3 stages but R\\*V = 4"):
        expand(parse(src), ranks=2, microbatches=1, virtual=2)
    src = HEADER + "placement [0, 0, 1, 1]\nper rank r { }\n"
    with pytest.raises(ScheduleError, match=r"gives rank 0 2 stages, expected V = 1"):
        expand(parse(src), ranks=4, microbatches=1)


def test_downward_loop_and_implicit_microbatch() -> None:
    src = HEADER + "per rank r {\n  for m in 0 .. M { F(r) }\n  for m in reversed(0 .. M) { B(r, m) }\n}\n"
    order = expand(parse(src), ranks=1, microbatches=3)
    assert [str(a) for a in order.compute[0]] == ["0F0", "0F1", "0F2", "0B2", "0B1", "0B0"]
    assert order.origins[0][0].line == 3 and order.origins[0][3].line == 4


def test_placement_override_changes_stage_function() -> None:
    order = load_schedule("looped_bfs").expand(ranks=2, microbatches=1, virtual=2, placement="v")
    assert order.placement == (0, 1, 1, 0)
    assert [str(a) for a in order.compute[0]] == ["0F0", "3F0", "3B0", "0B0"]


def test_params_defaults_overrides_and_constraints() -> None:
    src = HEADER + 'param k = R + 1\nrequire k > R : "k must exceed R"\nper rank r { }\n'
    definition = parse(src, "p.ppc")
    with pytest.raises(ConstraintError) as caught:
        expand(definition, ranks=2, microbatches=1, params={"k": 2})
    assert str(caught.value).startswith("p.ppc:3:1: k must exceed R (R=2, M=1, V=1)")
    with pytest.raises(ScheduleError, match="no parameter 'j' \\(its parameters: k\\)"):
        expand(definition, ranks=2, microbatches=1, params={"j": 2})


def test_stage_function_reports_bad_local_index() -> None:
    src = HEADER + "per rank r {\n  F(stage(r, 1), 0)\n}\n"
    with pytest.raises(ScheduleError, match=r"stage\(\): rank 0 has no local stage 1") as caught:
        expand(parse(src, "s.ppc"), ranks=2, microbatches=1)
    assert caught.value.pos.line == 3


@pytest.mark.parametrize("name", sorted(builtin_schedules()))
def test_builtin_file_names_match_their_schedule_names(name: str) -> None:
    schedule = load_schedule(name)
    assert schedule.name == name and schedule.doc and schedule.path.name == f"{name}.ppc"
