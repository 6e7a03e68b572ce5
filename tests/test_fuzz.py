"""A seeded fuzz of ppc's inputs, in-process and in seconds: a few hundred mutants of the
built-in schedules (byte flips incl. non-UTF-8, deletions, duplications, deep nesting,
long expressions, big numbers), torch CSVs and costs (JSON files and inline `--costs`),
each run through `ppc.cli.main`. Every one ends in exit 0, or exit 2 with a one-line
message (plus a source line and caret), never a traceback or a hang.

The generator and runner live in scripts/fuzz.py, which runs the full-size fuzz
(thousands of mutants, each in a forked child with a hang check and its peak memory).
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest
from conftest import load_script

HANG_S = 30


fuzz = load_script("fuzz")


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang


def test_mutants_are_seeded_and_cover_every_family() -> None:
    first, again = fuzz.mutants(7, 80), fuzz.mutants(7, 80)
    assert [(m.name, m.files) for m in first] == [(m.name, m.files) for m in again]
    assert Counter(m.family for m in first) == {"ppc": 40, "csv": 10, "program": 10, "costs-json": 10,
                                                "costs-inline": 10}
    assert fuzz.mutants(8, 80) != first


def test_fuzzed_inputs_end_in_exit_0_or_a_one_line_error(tmp_path: Path) -> None:
    fuzz.warm_up()
    cases = fuzz.mutants(2026, 300, largest=3000)
    outcomes = Counter()
    failures = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for mutant in cases:
            signal.alarm(HANG_S)
            try:
                outcome = fuzz.run_mutant_in_process(mutant, tmp_path)
            except _Hang:
                failures.append((mutant.family, mutant.name, "hang"))
                continue
            finally:
                signal.alarm(0)
            if outcome.traceback or not fuzz.well_formed(outcome):
                failures.append((mutant.family, mutant.name, outcome.traceback or outcome.stderr))
            outcomes[(mutant.family, outcome.code)] += 1
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert not failures, failures[:3]
    # the mutants reach past the parser: some still compile, most are refused
    assert outcomes[("ppc", 0)] >= 10 and outcomes[("ppc", 2)] >= 100
    assert outcomes[("csv", 2)] >= 25 and outcomes[("costs-inline", 0)] >= 1
    assert outcomes[("program", 2)] >= 10


@pytest.mark.parametrize(
    ("stderr", "ok"),
    [
        ("ppc: --costs: latency: must be a finite number, got nan\n", True),
        ("x.ppc:2:5: unexpected '('\n    F((\n        ^\n", True),
        ("Traceback (most recent call last):\n  File ...\nValueError: x\n", False),
        ("ppc: one\nppc: two\n", False),
    ],
)
def test_well_formed_accepts_one_message_and_an_excerpt_only(stderr: str, ok: bool) -> None:
    assert fuzz.well_formed(fuzz.Outcome(code=2, stderr=stderr)) is ok
    assert fuzz.well_formed(fuzz.Outcome(code=1, stderr=stderr)) is False
