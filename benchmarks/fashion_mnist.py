"""Fashion-MNIST, as Debian ships it, turned into an image folder for `incept build-data`.

Fashion-MNIST (Zalando Research, 2017; MIT/Expat licence) is 70,000 photographs of Zalando's
articles (shirts, trousers, shoes, bags...), each reduced to 28x28 grayscale, in 10 classes:
60,000 for training and 10,000 for testing, 6,000 and 1,000 per class. Debian's package
`dataset-fashion-mnist` (0.0~git20200523.55506a9-1, 30.9 MB) holds the four IDX files under
/usr/share/datasets/fashion-mnist:

    apt-get install dataset-fashion-mnist

Nothing is downloaded at run time: the files are read from the installed package (or from
--source DIR holding the same four .gz files).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "apt-get install dataset-fashion-mnist (or --source DIR with its four IDX files)"

# The label order of the dataset's README; folder names keep to [A-Za-z0-9_-].
CLASSES = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)

# Fashion-MNIST's own split names: "train" (60,000) and "t10k" (10,000).
SPLITS = ("train", "t10k")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip'd) as a uint8 array: the magic gives the rank, then one size a dim."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, rank = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:  # 0x08: unsigned bytes, the only type the set uses
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{rank}I", data[4 : 4 + 4 * rank])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * rank).reshape(shape)


def load(split: str, source: Path = DEFAULT_SOURCE) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 28 x 28, labels N) of split "train" or "t10k"."""
    images_file = source / f"{split}-images-idx3-ubyte.gz"
    labels_file = source / f"{split}-labels-idx1-ubyte.gz"
    if not images_file.exists() or not labels_file.exists():
        raise SystemExit(f"Fashion-MNIST not found in {source}: {INSTALL_HINT}")
    return read_idx(images_file), read_idx(labels_file)


def write_folder(
    out: Path,
    split: str,
    per_class: int,
    classes: tuple[str, ...] = CLASSES,
    source: Path = DEFAULT_SOURCE,
) -> int:
    """Writes the first `per_class` images of each class in `classes` (file order) of `split`
    as out/<class>/<split>_<index>.png, the index being the record's position in the IDX
    file. Returns the number of files written."""
    from PIL import Image

    images, labels = load(split, source)
    written = 0
    for name in classes:
        label = CLASSES.index(name)
        indices = np.flatnonzero(labels == label)[:per_class]
        if len(indices) < per_class:
            raise SystemExit(f"{split} has only {len(indices)} images of {name}")
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in indices:
            Image.fromarray(images[index], mode="L").save(folder / f"{split}_{index:05d}.png")
        written += len(indices)
    return written
