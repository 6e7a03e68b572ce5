"""ppc.frontend: trace a model with torch.fx and split it into pipeline stages (imports torch)."""

from ppc.frontend.materialize import build_split, materialize_stage
from ppc.frontend.models import PRESETS, build_model
from ppc.frontend.split import SplitModel, StageModule, split
from ppc.frontend.tracer import trace

__all__ = [
    "PRESETS",
    "SplitModel",
    "StageModule",
    "build_model",
    "build_split",
    "materialize_stage",
    "split",
    "trace",
]
