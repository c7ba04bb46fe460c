"""incept: train your own image classifier with the Inception family, on PyTorch."""

import importlib

__version__ = "0.1.0"
__all__ = ["data", "nets", "__version__"]

# Imported on first use (`incept.nets.inception_v3()` works after a bare `import incept`):
# both import torch, which the command line loads only for a command that needs it.
_LAZY_SUBPACKAGES = ("data", "nets")


def __getattr__(name: str):
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"incept.{name}")
    raise AttributeError(f"module 'incept' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_SUBPACKAGES})
