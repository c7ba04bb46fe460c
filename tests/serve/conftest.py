"""The tiny model the serve tests serve, saved as one of our checkpoints, and a photo."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import incept
from incept.predict import load_predictor
from incept.weights.checkpoint import save_checkpoint

CLASSES = ["cat", "dog", "bird"]
IMAGE_SIZE = 80


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = incept.nets.create("inception_v3", num_classes=len(CLASSES), width=0.1)
    # Batch-norm statistics of real activations (a fresh net's shrink the signal to nothing)
    # and a spread-out head: predictions that depend on the image.
    for norm in model.modules():
        if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
            norm.reset_running_stats()
            norm.momentum = None
    with torch.no_grad():  # calibrated on smooth, photo-like inputs: flat colours plus noise
        colours = torch.rand(16, 3, 1, 1) * 2 - 1
        model.train()((colours + 0.3 * torch.randn(16, 3, IMAGE_SIZE, IMAGE_SIZE)).clamp(-1, 1))
        model.fc.weight.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    model = tiny_model()
    meta = {
        "model": "inception_v3",
        "model_kwargs": {k: v for k, v in model.config.items() if k != "model"},
        "class_names": CLASSES,
        "image_size": IMAGE_SIZE,
        "recipe": {},
    }
    train_dir = tmp_path_factory.mktemp("run")
    save_checkpoint(train_dir, 123, model.state_dict(), {}, meta)
    return train_dir


@pytest.fixture(scope="session")
def predictor(run_dir):
    return load_predictor(run_dir, device="cpu")


@pytest.fixture(scope="session")
def photo() -> bytes:
    """A 160 x 120 JPEG with some texture."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:120, 0:160]
    pixels = np.stack([x * 255 // 160, y * 255 // 120, rng.integers(0, 256, x.shape)], -1)
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()
