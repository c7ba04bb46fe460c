"""The model registry: `create(name, ...)` builds any registered network from its spec.

Every model takes the same arguments (see `create`); each model file registers its spec
function with the few defaults that differ between models.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

from incept.errors import UserError
from incept.spec import SpecNet, build
from incept.spec.nodes import BN_MOMENTUM

# "torch": PyTorch's padding (symmetric) and average pooling that counts the padding, as
# torchvision's ports; "tf": TensorFlow's (SAME pads the extra row after and depends on the
# input size at stride 2; average pooling leaves the padding out of the count).
SEMANTICS = {
    "torch": {"same_padding": "symmetric", "count_pad": True},
    "tf": {"same_padding": "tf", "count_pad": False},
}


@dataclass(frozen=True)
class Entry:
    spec: object  # spec(num_classes, dropout, **defaults) -> Net
    has_aux: bool
    image_size: int
    semantics: str = "torch"
    dropout: float = 0.2
    defaults: dict = field(default_factory=dict)


_REGISTRY: dict[str, Entry] = {}


def register(name: str, spec, *, has_aux: bool, image_size: int, **entry) -> None:
    defaults = {k: entry.pop(k) for k in list(entry) if k not in ("semantics", "dropout")}
    _REGISTRY[name] = Entry(spec, has_aux, image_size, defaults=defaults, **entry)


def names() -> list[str]:
    """The registered model names."""
    return sorted(_REGISTRY)


def entry(name: str) -> Entry:
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}: choose one of {', '.join(names())}")
    return _REGISTRY[name]


def create(
    name: str,
    *,
    num_classes: int | None = 1000,
    aux_logits: bool | None = None,
    width: float = 1.0,
    min_depth: int = 16,
    dropout: float | None = None,
    weights=None,
    semantics: str | None = None,
    bn_momentum: float = BN_MOMENTUM,
    final_endpoint: str | None = None,
) -> SpecNet:
    """Builds model `name`.

    num_classes: real classes (no background class); None or 0: no logits layer and no aux
    head, `model(x)` gives the pooled features (N x C). aux_logits: the training-only aux head
    (default: on where the model has one and builds its logits). width, min_depth: every conv
    gets max(int(c * width), min_depth) channels. dropout: drop probability before the
    classifier (default: the model's, 0.2 for v3 as keep 0.8 in the original). weights:
    anything `--init-from` takes. semantics: "torch" or "tf" padding/pooling rules (default:
    the weights' framework, else the model's). bn_momentum: PyTorch's convention, 1 - TF's
    decay. final_endpoint: build up to this end point only, no heads (TF-Slim's *_base);
    `model(x)` gives its map. A bad argument raises a ValueError (a UserError).
    """
    model_entry = entry(name)
    num_classes = _class_count(num_classes)
    headless = num_classes == 0 or final_endpoint is not None
    if aux_logits is None:
        aux_logits = model_entry.has_aux and not headless
    if aux_logits and not model_entry.has_aux:
        raise UserError(f"{name} has no aux head: drop aux_logits (or pass aux_logits=False)")
    if aux_logits and headless:
        cut = "final_endpoint" if final_endpoint is not None else "num_classes=0"
        raise UserError(f"{name} built with {cut} has no aux head (it needs the logits): "
                        "drop aux_logits")  # fmt: skip
    if not _is_number(width) or not width > 0:
        raise UserError(f"width must be greater than 0, got {width!r}")
    if not _is_whole(min_depth) or min_depth < 1:
        raise UserError(f"min_depth must be a whole number of at least 1, got {min_depth!r}")
    if dropout is None:
        dropout = model_entry.dropout
    if not _is_number(dropout) or not 0 <= dropout < 1:
        raise UserError(f"dropout is a drop probability in [0, 1), got {dropout!r}")
    if semantics is None:
        semantics = _weights_semantics(weights) or model_entry.semantics
    if semantics not in SEMANTICS:
        raise UserError(f"semantics must be 'torch' or 'tf', got {semantics!r}")
    net = model_entry.spec(
        num_classes=num_classes,
        dropout=dropout,
        bn_momentum=bn_momentum,
        **SEMANTICS[semantics],
        **model_entry.defaults,
    )
    try:
        model = build(
            net,
            width=width,
            min_depth=min_depth,
            final_endpoint=final_endpoint,
            aux_logits=aux_logits,
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    model.config = {
        "model": name,
        "num_classes": num_classes,
        "aux_logits": aux_logits,
        "width": width,
        "min_depth": min_depth,
        "dropout": dropout,
        "semantics": semantics,
        "bn_momentum": bn_momentum,
        "final_endpoint": final_endpoint,
    }
    model.default_image_size = model_entry.image_size
    if weights is not None:
        from incept.nets import loading

        # As --init-from: heads whose class count differs from the source's start fresh.
        loading.load_model(weights, into=model, fresh_heads=True)
    return model


def _class_count(num_classes) -> int:
    """num_classes as an int; None (TF-Slim's and timm's "no logits") becomes 0."""
    if num_classes is None:
        return 0
    if not _is_whole(num_classes):
        raise UserError(f"num_classes must be a whole number (or None: no logits), got "
                        f"{num_classes!r}")  # fmt: skip
    if num_classes < 0:
        raise UserError(f"num_classes must be at least 0 (0 or None: no logits), got {num_classes}")
    return int(num_classes)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _weights_semantics(weights) -> str | None:
    if weights is None:
        return None
    from incept.weights.sources import semantics_of

    return semantics_of(weights)


def load(source, *, ema: bool = True, model_name: str = "inception_v3", **options) -> SpecNet:
    """The model a train dir or checkpoint of ours records, with its weights (the moving
    averages when it has them, unless `ema=False`), in eval mode. `model.class_names`,
    `model.image_size` and `model.step` come from the checkpoint too.

    Any other source `weights=` takes works as well: the network is then `model_name` (with
    `create` arguments in `options`), with as many classes as the source's classifier.
    """
    from incept.nets import loading

    loaded = loading.load_model(source, ema=ema, model_name=model_name, **options)
    model = loaded.model
    model.class_names, model.image_size, model.step = (
        loaded.class_names,
        loaded.image_size,
        loaded.step,
    )
    return model
