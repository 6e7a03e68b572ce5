"""Schedule search: the fastest per-rank compute orders for given costs under a memory budget.

    search(SearchRequest(ranks=, microbatches=, costs=, virtual=, placement=, memory=,
                         time_limit=)) -> SearchResult (order, makespan, lower_bound, gap, optimal)

An exact model solved with OR-Tools CP-SAT (imported lazily: `pip install
'ppc-pipeline[search]'`), warm-started with the best built-in that fits. torch-free.
Modules: problem (ops, dependencies, integer times), budget (memory budgets), warm (the
built-ins, start times of an order), cpsat (the model), engine (the whole search).
"""

from ppc.search.budget import MemoryBudget, parse_budget
from ppc.search.engine import SearchRequest, SearchResult, search

__all__ = ["MemoryBudget", "SearchRequest", "SearchResult", "parse_budget", "search"]
