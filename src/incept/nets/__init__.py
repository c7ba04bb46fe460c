"""The Inception family, each network a short file in the spec language.

`create(name, ...)` builds any of them, `names()` lists them, and each has a function of its
own (`inception_v3(...)`) taking the same arguments.
"""

from functools import partial

from incept.nets import inception_v3 as _inception_v3  # noqa: F401  (registers the model)
from incept.nets import registry
from incept.nets.registry import create, load, names

inception_v3 = partial(create, "inception_v3")
inception_v3.__doc__ = "Inception-v3. " + (create.__doc__ or "")

__all__ = [
    "create",
    "inception_v3",
    "load",
    "names",
    "registry",
]
