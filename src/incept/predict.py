"""A ready-to-use classifier from whatever `--checkpoint` names.

`load_predictor(PATH)` takes a train dir or checkpoint of ours (model, class names and image
size come from its meta.json) or any weights source that `--init-from` takes: `torchvision`,
a .pth/.pt/.bin/.safetensors file, a Keras .h5, a TF-Slim checkpoint. A foreign source names no
model and no classes, so the network is `model_name` (Inception-v3 unless told), the class
count is read off the source's classifier, and a 1000-class head gets the ImageNet class names
(the synsets in sorted order, as torchvision's, Keras's and TF-Slim's ImageNet heads all use,
TF-Slim's background row dropped).

`incept classify`, `incept export` and `incept serve` all start here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from incept import nets
from incept.data.preprocess import to_unit_range
from incept.errors import UserError

IMAGENET_CLASSES = 1000


@dataclass
class Predictor:
    """A model in eval mode with what is needed to use it on images."""

    model: nn.Module
    class_names: list[str]
    image_size: int  # the side of the square input the model was trained at
    architecture: str  # a registered model name
    step: int | None  # the training step of our checkpoints; None for foreign weights
    device: torch.device

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N x classes, float32 on the CPU) of uint8 N x 3 x S x S images
        that already had the evaluation crop and resize."""
        logits = self.model(to_unit_range(images.to(self.device)))
        return torch.softmax(logits.float(), dim=1).cpu()

    def describe(self) -> dict:
        return {
            "architecture": self.architecture,
            "classes": self.class_names,
            "num_classes": len(self.class_names),
            "image_size": self.image_size,
            "input_shape": [3, self.image_size, self.image_size],
            "checkpoint_step": self.step,
        }


def load_predictor(
    source: str | Path,
    *,
    ema: bool = True,
    model_name: str = "inception_v3",
    labels_file: str | Path | None = None,
    device: str | torch.device | None = None,
) -> Predictor:
    """The model `source` describes, ready to classify.

    ema: the moving-average weights when the checkpoint has them. model_name: the network of a
    foreign weights source (ours record theirs). labels_file: class names, one a line, in
    place of those the source gives. device: default the first GPU when there is one.
    """
    from incept.weights.checkpoint import is_checkpoint_source

    if is_checkpoint_source(source):
        model = nets.load(source, ema=ema)
        names = model.class_names
        image_size = model.image_size
        architecture = model.config["model"]
        step = model.step
    else:
        model = _load_foreign(source, model_name, ema)
        names = None
        image_size = model.default_image_size
        architecture = model_name
        step = None
    num_classes = model.num_classes
    if labels_file is not None:
        names = _read_labels(labels_file, num_classes)
    elif names is None:
        names = _default_names(num_classes)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Predictor(model.to(device).eval(), list(names), image_size, architecture, step, device)


def _load_foreign(source, model_name: str, ema: bool) -> nn.Module:
    """A foreign weights file on `model_name`, with as many classes as its classifier has."""
    from incept.weights.sources import load_weights, read_state_dict, semantics_of, source_kind

    semantics = semantics_of(source)
    # Classifying needs no aux head; leaving it out also accepts sources without one (Keras).
    build = dict(aux_logits=False, semantics=semantics)
    model = nets.create(model_name, num_classes=IMAGENET_CLASSES, **build)
    tensors = None
    if source_kind(source) != "torchvision":  # torchvision's are ImageNet weights
        # Read once: the names do not depend on the class count, only the head's shape does.
        tensors = read_state_dict(source, model, ema=ema)
        num_classes = _source_classes(tensors, model, source)
        if num_classes != IMAGENET_CLASSES:
            model = nets.create(model_name, num_classes=num_classes, **build)
    load_weights(model, source, ema=ema, tensors=tensors)
    return model


def _source_classes(tensors: dict, model: nn.Module, source) -> int:
    heads = {id(head) for head in model.classifiers()}
    for name, module in model.named_modules():
        if id(module) in heads and f"{name}.weight" in tensors:
            return int(tensors[f"{name}.weight"].shape[0])
    raise UserError(f"{source} holds no classifier for {model.config['model']}: is it a backbone?")


def _default_names(num_classes: int) -> list[str]:
    if num_classes == IMAGENET_CLASSES:
        return imagenet_class_names()
    return [str(index) for index in range(num_classes)]


def imagenet_class_names() -> list[str]:
    """The 1000 ILSVRC-2012 class names in sorted-synset order (torchvision ships them)."""
    from torchvision.models import Inception_V3_Weights

    return list(Inception_V3_Weights.IMAGENET1K_V1.meta["categories"])


def _read_labels(path: str | Path, num_classes: int) -> list[str]:
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
