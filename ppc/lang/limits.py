"""Sizes the language refuses before it builds anything (documented in docs/language.md).

Each limit keeps one cost bounded: Python's recursion (nesting), the memory of a compute
order and the program lowered from it (ops), the time of the passes that visit every
rank once per event or every stage once per rank (ops x ranks), and runaway loops
(statements run per op).
"""

from __future__ import annotations

from ppc.errors import ScheduleError, SourcePos

MAX_SCHEDULE_BYTES = 64 * 2**10
"""Largest .ppc file (the built-in schedules are under 2 KB; parsing runs at 25-150 us
a token, so this bounds a parse to a few seconds)."""

MAX_NESTING = 64
"""Deepest nesting of blocks (for, if, elif) and of expressions (operators, unary
operators, calls; `a + b + c` is two levels, parentheses alone add none)."""

MAX_ORDER_OPS = 500_000
"""Most compute ops in one order: S x M x 2 with a full backward, x 3 with I and W.
Lowering and simulating cost about 1.3 KB per op, so this bounds memory near 650 MB."""

MAX_OPS_X_RANKS = 50_000_000
"""Most ops x ranks of an order. The policy list scheduler visits every rank at every
event, and lowering and validation look at every stage once per rank (R x S <= ops x R
/ 2): at this size each takes about 10 s on a loaded 2-core machine."""

MAX_VALUE = 2**63
"""Largest magnitude of a product in an expression (values never need more)."""

MAX_LITERAL_DIGITS = 18
"""Longest integer literal."""

STATEMENTS_PER_OP = 16
"""Statements (let, loop iteration, if, op) an expansion may run per op of its order (the
built-in schedules run about 2)."""


def check_order_size(ranks: int, microbatches: int, virtual: int, *, per_pair: int,
                     pos: SourcePos | None = None) -> int:
    """The order's size in ops (S x M x per_pair); raises ScheduleError above the limits."""
    stages = ranks * virtual
    ops = stages * microbatches * per_pair
    sizes = f"R={ranks} M={microbatches} V={virtual}"
    if ops > MAX_ORDER_OPS:
        raise ScheduleError(
            f"{sizes} makes an order of {ops:,} ops (S x M x {per_pair}); the limit is "
            f"{MAX_ORDER_OPS:,}", pos=pos,
        )
    if ops * ranks > MAX_OPS_X_RANKS:
        raise ScheduleError(
            f"{sizes} makes an order of {ops:,} ops x {ranks:,} ranks = {ops * ranks:,}; the "
            f"limit is {MAX_OPS_X_RANKS:,}", pos=pos,
        )
    return ops
