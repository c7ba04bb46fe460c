"""The Inception family, each network a short file in the spec language.

`create(name, ...)` builds any of them, `names()` lists them, and each has a function of its
own (`inception_v3(...)`) taking the same arguments.
"""

from functools import partial

from incept.nets import inception_resnet_v2 as _inception_resnet_v2  # noqa: F401  (registers)
from incept.nets import inception_v1 as _inception_v1  # noqa: F401  (registers the model)
from incept.nets import inception_v2 as _inception_v2  # noqa: F401  (registers the model)
from incept.nets import inception_v3 as _inception_v3  # noqa: F401  (registers the model)
from incept.nets import inception_v4 as _inception_v4  # noqa: F401  (registers the model)
from incept.nets import registry
from incept.nets.registry import create, load, names

inception_v1 = partial(create, "inception_v1")
inception_v1.__doc__ = "Inception-v1 (GoogLeNet with batch norm). " + (create.__doc__ or "")
inception_v2 = partial(create, "inception_v2")
inception_v2.__doc__ = "Inception-v2. " + (create.__doc__ or "")
inception_v3 = partial(create, "inception_v3")
inception_v3.__doc__ = "Inception-v3. " + (create.__doc__ or "")
inception_v4 = partial(create, "inception_v4")
inception_v4.__doc__ = "Inception-v4. " + (create.__doc__ or "")
inception_resnet_v2 = partial(create, "inception_resnet_v2")
inception_resnet_v2.__doc__ = "Inception-ResNet-v2. " + (create.__doc__ or "")

__all__ = [
    "create",
    "inception_resnet_v2",
    "inception_v1",
    "inception_v2",
    "inception_v3",
    "inception_v4",
    "load",
    "names",
    "registry",
]
