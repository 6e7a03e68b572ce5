"""Per-step metrics: the record, its one-line rendering, and a JSON-lines writer."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["MetricsWriter", "StepMetrics"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StepMetrics:
    step: int
    """1-based step number."""
    steps: int
    loss: float
    """Mean over microbatches of each microbatch's mean token loss."""
    lr: float
    step_time_s: float
    tokens_per_s: float
    grad_norm: float

    @property
    def ppl(self) -> float:
        return math.exp(min(self.loss, 50.0))

    def line(self) -> str:
        return (
            f"| step {self.step}/{self.steps} | lr {self.lr:.1e} | ms/step {self.step_time_s * 1e3:.1f}"
            f" | tokens/s {self.tokens_per_s:,.0f} | loss {self.loss:.2f} | ppl {self.ppl:.1f}"
        )

    def to_json(self) -> dict:
        return {**asdict(self), "ppl": self.ppl}


class MetricsWriter:
    """Appends one JSON object per step to a .jsonl file (truncated unless resuming)."""

    def __init__(self, path: str, *, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a" if append else "w", encoding="utf-8")

    def write(self, record: StepMetrics) -> None:
        self._file.write(json.dumps(record.to_json()) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
