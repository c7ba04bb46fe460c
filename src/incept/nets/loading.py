"""The one way from a weights source to a model: `load_model(SOURCE, ...)`.

Everything that turns weights into a model comes here: `incept eval`, `incept classify`,
`incept export` and `incept serve` (through `incept.predict.load_predictor`), `incept train
--init-from` (`incept.train.transfer.initialise_from`), `incept.nets.load` and
`create(..., weights=...)`. SOURCE is anything `--init-from` takes (`incept.weights.sources`):
a train dir or checkpoint of ours, `torchvision`, a torchvision/timm .pth/.safetensors file, a
Keras .h5, a TF-Slim checkpoint. Its file is read once.

Ours record the network, its arguments, class names and image size. A foreign source records
none of them: the network is `model_name`, built with the padding rules of the source's
framework and no aux head; its class count is read off the source's classifier; its image size
is the network's default; a 1000-class head gets the ImageNet class names.

A classifier is the source's or nothing: a head nobody trained is made only on request
(`fresh_heads=True`, the start of fine-tuning), so evaluating or classifying with other classes
than the source's is one error naming both counts, never the accuracy of a random head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from incept import nets
from incept.errors import UserError
from incept.spec import SpecNet
from incept.weights.checkpoint import read_meta, resolve_checkpoint
from incept.weights.sources import (
    classes_in,
    load_weights,
    read_source,
    semantics_of,
    source_kind,
)

IMAGENET_CLASSES = 1000


@dataclass
class LoadedModel:
    """A model with its weights and what is known about them."""

    model: SpecNet  # in eval mode, unless it was passed in as `into`
    class_names: list[str]  # the source's, a labels file's, ImageNet's, or "0", "1", ...
    image_size: int  # the side of the square input it was trained at
    architecture: str  # a registered model name
    step: int | None  # the training step of our checkpoints; None for foreign weights
    ema: bool  # the weights are moving averages
    semantics: str  # the padding and pooling rules: "torch" or "tf"
    kind: str  # the source's kind: "incept", "torchvision", "torch", "keras" or "tf"


def load_model(
    source: str | Path,
    *,
    model_name: str = "inception_v3",
    num_classes: int | None = None,
    ema: bool = True,
    labels_file: str | Path | None = None,
    into: SpecNet | None = None,
    fresh_heads: bool = False,
    exclude=(),
    **options,
) -> LoadedModel:
    """The model `source` describes, with its weights (see the module doc).

    model_name: the network of a foreign source (ours record theirs). num_classes: the class
    count the caller needs (its data's); a source with another count is a UserError naming both.
    ema: the moving averages when the source has them. labels_file: class names, one a line, in
    place of the source's. into: a model built already (its architecture and class count rule)
    to load into, in place. fresh_heads: classifier heads whose class count differs from the
    source's, or that the source lacks, keep their fresh initialisation instead of being an
    error (fine-tuning). exclude: globs of parameters left as they are (with fresh_heads only).
    options: `create` arguments overriding the recorded ones or the foreign defaults.
    """
    if exclude and not fresh_heads:
        raise ValueError("exclude leaves parameters untrained: pass fresh_heads=True with it")
    kind = source_kind(source)
    # One look-up of our train dir's latest checkpoint: a run saving meanwhile must not mix one
    # step's settings with another's weights.
    path = resolve_checkpoint(source) if kind == "incept" else source
    meta = read_meta(path) if kind == "incept" else {}
    model = into if into is not None else _build(path, meta, model_name, num_classes, options)
    tensors, averaged = read_source(path, model, ema=ema)
    found = classes_in(tensors, model)
    if into is not None:
        wanted = model.num_classes
    else:
        wanted = num_classes or found or model.num_classes
    if found != wanted and not fresh_heads:
        raise _class_count_error(source, found, wanted, model)
    if into is None and model.num_classes != wanted:
        model.reset_classifier(wanted)  # the heads' names and the rest of the net stay
        model.config = {**model.config, "num_classes": wanted}
    load_weights(model, path, exclude=exclude, tensors=tensors)
    names = meta.get("class_names") if found == wanted else None
    if labels_file is not None:
        names = read_labels(labels_file, wanted or 0)
    recorded_size = meta.get("image_size") or meta.get("recipe", {}).get("image_size")
    return LoadedModel(
        model=model if into is not None else model.eval(),
        class_names=list(names) if names is not None else default_class_names(wanted or 0),
        image_size=recorded_size or model.default_image_size,
        architecture=model.config["model"],
        step=meta.get("step"),
        ema=averaged,
        semantics=model.config["semantics"],
        kind=kind,
    )


def _build(path, meta: dict, model_name: str, num_classes: int | None, options) -> SpecNet:
    if meta:
        return nets.create(meta["model"], **{**meta["model_kwargs"], **options})
    # Classifying needs no aux head; leaving it out also accepts sources without one (Keras).
    # The heads' names do not depend on the class count: ImageNet's until the source says.
    build = {"aux_logits": False, "semantics": semantics_of(path), **options}
    return nets.create(model_name, num_classes=num_classes or IMAGENET_CLASSES, **build)


def _class_count_error(source, found: int | None, wanted: int, model: SpecNet) -> UserError:
    fine_tune = f"fine-tune it onto these classes first (incept train --init-from {source})"
    if found is None:
        return UserError(
            f"{source} holds no classifier for {model.config['model']} (a feature extractor's "
            f"weights?): {fine_tune}"
        )
    return UserError(
        f"{source} was trained on {found} classes, the data has {wanted}: evaluate it on data "
        f"with the same classes, or {fine_tune}"
    )


def default_class_names(num_classes: int) -> list[str]:
    """ImageNet's names for a 1000-class head, else the class indices."""
    if num_classes == IMAGENET_CLASSES:
        return imagenet_class_names()
    return [str(index) for index in range(num_classes)]


def imagenet_class_names() -> list[str]:
    """The 1000 ILSVRC-2012 class names in sorted-synset order, the order torchvision's, Keras's
    and TF-Slim's ImageNet heads all use (TF-Slim's background row dropped); torchvision ships
    them."""
    from torchvision.models import Inception_V3_Weights

    return list(Inception_V3_Weights.IMAGENET1K_V1.meta["categories"])


def read_labels(path: str | Path, num_classes: int) -> list[str]:
    """Class names from a file, one a line, which must name exactly `num_classes`."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read the labels file {path}: {error}") from None
    names = [line.strip() for line in lines if line.strip()]
    if len(names) != num_classes:
        raise UserError(
            f"{path} names {len(names)} classes but the model has {num_classes}: "
            "give one class name a line, in the model's class order"
        )
    return names
