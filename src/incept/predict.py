"""A ready-to-use classifier from whatever `--checkpoint` names.

`load_predictor(PATH)` takes a train dir or checkpoint of ours or any weights source that
`--init-from` takes, loaded by `incept.nets.loading.load_model` (which says where the network,
the class names and the image size of each kind of source come from), and puts it on a device.

`incept classify`, `incept export` and `incept serve` all start here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from incept.data.preprocess import to_unit_range
from incept.nets import loading


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
    """The model `source` describes, ready to classify (`incept.nets.loading.load_model`).

    ema: the moving-average weights when the checkpoint has them. model_name: the network of a
    foreign weights source (ours record theirs). labels_file: class names, one a line, in
    place of those the source gives. device: default the first GPU when there is one.
    """
    loaded = loading.load_model(source, ema=ema, model_name=model_name, labels_file=labels_file)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Predictor(
        loaded.model.to(device).eval(),
        loaded.class_names,
        loaded.image_size,
        loaded.architecture,
        loaded.step,
        device,
    )
