"""incept: train your own image classifier with the Inception family, on PyTorch."""

from incept import nets

__version__ = "0.1.0"
__all__ = ["nets", "__version__"]
