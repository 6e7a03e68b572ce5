"""The verifier: one checker, one error type (ValidationError, DeadlockError) and one
wording for compute orders (from schedule files, CSVs, lowering) and for programs
(complete, ordered, matched transfers, deadlock-free).
"""

from ppc.verify.order import check_order, index_order
from ppc.verify.program import check, validate

__all__ = ["check", "check_order", "index_order", "validate"]
