"""ppc: a declarative pipeline-parallel schedule compiler for PyTorch.

Importing ppc never imports torch; only ppc.frontend and ppc.exec do (`ppc.Pipeline`,
the Python API, is loaded from ppc.exec.api on first use).
"""

__version__ = "0.1.0"
__all__ = ["Pipeline", "__version__"]


def __getattr__(name: str):
    if name == "Pipeline":
        from ppc.exec.api import Pipeline

        return Pipeline
    raise AttributeError(f"module 'ppc' has no attribute {name!r}")
