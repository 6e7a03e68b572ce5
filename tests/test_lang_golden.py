"""Golden tests: each tests/golden/lang/*.ppc next to its expected listing or error.

A good file starts with `# ppc-test: R=.. M=.. V=..` and has NAME.out (the per-rank
listing); a bad_*.ppc file has NAME.err holding `row:col: message` (expanded with R=2, M=3).
Regenerate with PPC_REGEN_GOLDEN=1 after a deliberate change, and review the diff.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ppc.errors import PpcError
from ppc.lang import load_schedule
from ppc.lang.listing import format_listing

GOLDEN = Path(__file__).parent / "golden" / "lang"
GOOD = sorted(p for p in GOLDEN.glob("*.ppc") if not p.name.startswith("bad_"))
BAD = sorted(GOLDEN.glob("bad_*.ppc"))


def _sizes(path: Path) -> dict[str, int]:
    match = re.search(r"# ppc-test: R=(\d+) M=(\d+) V=(\d+)", path.read_text())
    assert match, f"{path} lacks a '# ppc-test: R=.. M=.. V=..' line"
    ranks, microbatches, virtual = map(int, match.groups())
    return {"ranks": ranks, "microbatches": microbatches, "virtual": virtual}


def _check(expected_path: Path, actual: str) -> None:
    if os.environ.get("PPC_REGEN_GOLDEN"):
        expected_path.write_text(actual)
    assert actual == expected_path.read_text()


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_listing_matches_golden(path: Path) -> None:
    order = load_schedule(str(path)).expand(**_sizes(path))
    _check(path.with_suffix(".out"), format_listing(order))


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_error_matches_golden(path: Path) -> None:
    with pytest.raises(PpcError) as caught:
        load_schedule(str(path)).expand(ranks=2, microbatches=3)
    error = caught.value
    assert error.pos is not None and error.pos.path == str(path)
    _check(path.with_suffix(".err"), f"{error.pos.line}:{error.pos.col}: {error.message}\n")


def test_golden_inputs_exist() -> None:
    assert len(GOOD) >= 2 and len(BAD) >= 8
