"""The schedule language: grammar, parser, AST and expansion to compute orders.

    load_schedule(spec) -> Schedule      spec: built-in name, .ppc path or .csv path
    Schedule.expand(ranks=, microbatches=, virtual=, placement=, params=) -> ComputeOrder
    builtin_schedules() -> {name: path}
"""

from ppc.lang.registry import Schedule, builtin_schedules, load_schedule

__all__ = ["Schedule", "builtin_schedules", "load_schedule"]
