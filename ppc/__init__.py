"""ppc: a declarative pipeline-parallel schedule compiler for PyTorch.

Importing ppc never imports torch; only ppc.frontend and ppc.exec do.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
