"""Starting from other weights: `--init-from`, `--exclude` and `--trainable`.

`--init-from` takes anything `incept.weights.sources` reads, loaded as every source is by
`incept.nets.loading.load_model`: a train dir or checkpoint of ours (its moving-average weights
when it has them), `torchvision`, torchvision/timm files, Keras HDF5, TF-Slim checkpoints.
Parameters matching an `--exclude` glob keep their fresh initialisation; so do the classifier
heads when their class count differs from the data's (the usual fine-tuning case; training is
the only command that allows it); the sources module says which in a log line. `--trainable` globs
pick the parameters that train; every other parameter stays bit-for-bit as loaded (batch-norm
moving statistics still follow the data, as in TF-Slim's fine-tuning).
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase

from torch import nn

from incept.errors import UserError
from incept.nets import loading
from incept.weights import sources


def split_globs(text: str) -> list[str]:
    return [glob.strip() for glob in text.split(",") if glob.strip()]


def source_semantics(source: str) -> str | None:
    """The padding rules the source's weights were trained with (None: the model's default)."""
    return sources.semantics_of(source) if source else None


def initialise_from(
    model: nn.Module, source: str, exclude: list[str], say: Callable[[str], None]
) -> None:
    """Loads `source` into `model` in place, heads of another class count left fresh."""
    loading.load_model(source, into=model, exclude=exclude, fresh_heads=True)
    left_out = f" (left out: {', '.join(exclude)})" if exclude else ""
    say(f"init-from: weights of {source}{left_out}")


def restrict_training(model: nn.Module, trainable: list[str], say: Callable[[str], None]) -> None:
    """Freezes every parameter no `trainable` glob matches (no globs: all train).

    Parameters frozen by the model itself (TF's BN without gamma) stay frozen either way.
    """
    if not trainable:
        return
    for name, parameter in model.named_parameters():
        if not any(fnmatchcase(name, glob) for glob in trainable):
            parameter.requires_grad_(False)
    count = sum(p.requires_grad for p in model.parameters())
    if count == 0:
        raise UserError(
            f"--trainable {','.join(trainable)} matches no trainable parameter "
            "(names look like Mixed_7c.branch1x1.conv.weight, fc.weight, AuxLogits.fc.weight)"
        )
    say(f"trainable: {count} parameter tensors train, the others stay as loaded")


def freeze_batch_norm_of_frozen_layers(model: nn.Module) -> None:
    """Batch norm layers none of whose parameters train keep their moving statistics too
    (call after every `model.train()`)."""
    for module in model.modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.bias is None:
            continue
        if not module.bias.requires_grad:  # beta decides: TF-style BN never trains gamma
            module.eval()
