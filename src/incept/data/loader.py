"""`make_loader`: batches of preprocessed images from shards or an image folder.

Worker processes (a torch DataLoader) read, decode, crop and resize each image in uint8 and
draw its colour parameters; the batch travels as uint8 (a quarter of float's bytes, pinned
for a CUDA device) and becomes float where it lands: the colour distortion and the scaling to
[-1, 1] run there, on the whole batch at once.

Which records a replica reads:
- training: every epoch is a permutation of the records drawn from (seed, epoch); global
  batch k is its slice [k * G, (k + 1) * G) with G = batch_size * world_size, and replica r
  takes the r-th contiguous batch_size of it. So N replicas together see the batches one
  process with batch size G sees, and the last partial global batch is dropped. Each batch
  is prepared by one worker, so workers read disjoint parts too.
- evaluation: replica r reads the contiguous records [r * n // W, (r + 1) * n // W) in order,
  the last batch may be short; the parts of all replicas are exactly the data set, once.

An example's random distortion depends only on (seed, epoch, record index), so it is the same
whatever the number of workers or replicas, and a run resumed at (epoch, batch) continues
exactly: `make_loader(..., epoch=e, start_batch=k)` or `loader.set_epoch(e, start_batch=k)`.
"""

from __future__ import annotations

import math
import mmap
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from incept.data.images import decode_rgb
from incept.data.preprocess import (
    center_crop_resize,
    distort_colour,
    distort_geometry,
    example_rng,
    to_unit_range,
)
from incept.data.sources import Source, open_source
from incept.errors import UserError


@dataclass(frozen=True)
class _Failed:
    """A user-facing error met in a worker process, carried to the main process as data:
    PyTorch cannot rebuild our exception types across processes (it prints tracebacks)."""

    message: str


def _collate(items: list):
    failed = next((item for item in items if isinstance(item, _Failed)), None)
    return failed if failed is not None else default_collate(items)


class _Examples(Dataset):
    """Record index -> preprocessed uint8 image, label (and colour parameters when training).

    Keys are (epoch, index) pairs, so a persistent worker needs no word about the epoch.
    """

    def __init__(self, source: Source, image_size: int, training: bool, seed: int):
        self.source = source
        self.image_size = image_size
        self.training = training
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]):
        try:
            return self._example(key)
        except UserError as error:  # a corrupt record, an undecodable image
            return _Failed(str(error))

    def _example(self, key: tuple[int, int]):
        epoch, index = key
        record = self.source.read(index)
        image = decode_rgb(record.image)
        if not self.training:
            return center_crop_resize(image, self.image_size), record.label
        rng = example_rng(self.seed, epoch, index)
        pixels, colour = distort_geometry(image, record.boxes, self.image_size, rng)
        return pixels, record.label, colour


def _prepare_worker(worker_id: int) -> None:
    # One thread per worker: the workers are the parallelism, more threads only contend.
    torch.set_num_threads(1)


class BatchMemory:
    """Float batches on the CPU whose memory is used again once no tensor holds it any more.

    A fresh 34 MB batch (32 x 3 x 299 x 299) costs more in page faults than the whole colour
    distortion written into it, so the last few batches' memory is kept. Each batch is a
    tensor over an anonymous memory map of ours; torch keeps a reference to the map for as long
    as any tensor, view, numpy array or autograd record uses its memory, so the reference count
    tells exactly when a map is free to be written again.
    """

    def __init__(self, keep: int = 3):
        self.keep = keep
        self._maps: list[mmap.mmap] = []

    def empty(self, shape: tuple[int, ...]) -> torch.Tensor:
        size = 4 * math.prod(shape)
        for memory in self._maps:
            # The list, the loop variable and getrefcount's own argument: no tensor uses it.
            if len(memory) == size and sys.getrefcount(memory) == 3:
                return torch.frombuffer(memory, dtype=torch.float32).view(shape)
        if len(self._maps) == self.keep:
            return torch.empty(shape, dtype=torch.float32)
        memory = mmap.mmap(-1, size)
        self._maps.append(memory)
        return torch.frombuffer(memory, dtype=torch.float32).view(shape)


class _Plan(Sampler):
    """Which records each batch of this replica holds, for the current epoch and start batch.

    Batches are lists of (epoch, index) keys for `_Examples`.
    """

    def __init__(
        self, count: int, batch_size: int, training: bool, seed: int, rank: int, world_size: int
    ):
        self.count = count
        self.batch_size = batch_size
        self.training = training
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0
        if training:
            self.steps_per_epoch = count // (batch_size * world_size)
            self.num_examples = self.steps_per_epoch * batch_size
        else:
            first, last = self._evaluation_part()
            self.num_examples = last - first
            self.steps_per_epoch = -(-self.num_examples // batch_size)

    def _evaluation_part(self) -> tuple[int, int]:
        count, rank, world = self.count, self.rank, self.world_size
        return rank * count // world, (rank + 1) * count // world

    def batch_indices(self) -> Iterator[np.ndarray]:
        size = self.batch_size
        if self.training:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.count)
            global_batch = size * self.world_size
            for step in range(self.start_batch, self.steps_per_epoch):
                first = step * global_batch + self.rank * size
                yield order[first : first + size]
        else:
            first, last = self._evaluation_part()
            for start in range(first + self.start_batch * size, last, size):
                yield np.arange(start, min(start + size, last))

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        for indices in self.batch_indices():
            yield [(epoch, int(i)) for i in indices]


def _distributed_place(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This replica's (rank, world size): given, else torch.distributed's, else torchrun's."""
    if rank is None and world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        rank = int(os.environ.get("RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
    elif rank is None or world_size is None:
        raise UserError("give both rank and world_size, or neither")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside world_size {world_size}; use 0 <= rank < size")
    return rank, world_size


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class ImageLoader:
    """Iterable of (images float N x 3 x S x S in [-1, 1], labels int64 N); see the module.

    Attributes: `source`, `classes`, `num_classes`, `batch_size`, `image_size`, `training`,
    `rank`, `world_size`, `epoch`, `start_batch`, `steps_per_epoch`, `num_examples` (records
    this replica yields in a full epoch). A full pass over a training loader moves it to the
    next epoch; `set_epoch` chooses the epoch and the batch to start at.
    """

    def __init__(
        self,
        source: Source,
        *,
        training: bool,
        batch_size: int,
        image_size: int,
        workers: int,
        seed: int,
        epoch: int,
        start_batch: int,
        device: torch.device | None,
        rank: int,
        world_size: int,
        prefetch_factor: int,
    ):
        self.source = source
        self.training = training
        self.batch_size = batch_size
        self.image_size = image_size
        self.device = device
        self._memory = BatchMemory() if device is None or device.type == "cpu" else None
        self._plan = _Plan(len(source), batch_size, training, seed, rank, world_size)
        if training and self._plan.steps_per_epoch == 0:
            raise UserError(
                f"{len(source)} training records are fewer than one global batch of "
                f"{batch_size * world_size}; lower the batch size"
            )
        self.set_epoch(epoch, start_batch)
        self._batches = DataLoader(
            _Examples(source, image_size, training, seed),
            batch_sampler=self._plan,
            num_workers=workers,
            collate_fn=_collate,  # in a worker it stacks straight into shared memory
            pin_memory=device is not None and device.type == "cuda",
            worker_init_fn=_prepare_worker if workers else None,
            prefetch_factor=prefetch_factor if workers else None,
            persistent_workers=workers > 0,
        )

    classes = property(lambda self: self.source.classes)
    num_classes = property(lambda self: len(self.source.classes))
    rank = property(lambda self: self._plan.rank)
    world_size = property(lambda self: self._plan.world_size)
    seed = property(lambda self: self._plan.seed)
    epoch = property(lambda self: self._plan.epoch)
    start_batch = property(lambda self: self._plan.start_batch)
    steps_per_epoch = property(lambda self: self._plan.steps_per_epoch)
    num_examples = property(lambda self: self._plan.num_examples)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next pass read `epoch` from its batch `start_batch` (0-based) on.

        Resuming after step s of a run: `set_epoch(s // steps_per_epoch, s % steps_per_epoch)`.
        """
        epoch = _check_int("epoch", epoch, 0)
        start_batch = _check_int("start_batch", start_batch, 0)
        if start_batch > self.steps_per_epoch:
            raise UserError(
                f"start_batch {start_batch} is past the {self.steps_per_epoch} batches of an epoch"
            )
        self._plan.epoch = epoch
        self._plan.start_batch = start_batch

    def batch_indices(self) -> Iterator[np.ndarray]:
        """The record indices of each batch the next pass yields, in order."""
        return self._plan.batch_indices()

    def __len__(self) -> int:
        """Batches the next pass yields."""
        return len(self._plan)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self._batches:
            if isinstance(batch, _Failed):
                raise UserError(batch.message)
            images, labels = batch[0], batch[1]
            if self.device is not None:
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
            out = self._memory.empty(images.shape) if self._memory else None
            if self.training:
                colours = batch[2].to(images.device, non_blocking=True)
                yield distort_colour(images, colours, out), labels
            else:
                yield to_unit_range(images, out), labels
        self.set_epoch(self.epoch + 1 if self.training else self.epoch)


def make_loader(
    data: str | os.PathLike,
    subset: str = "train",
    *,
    training: bool = True,
    batch_size: int = 32,
    image_size: int = 299,
    workers: int = 4,
    seed: int = 0,
    epoch: int = 0,
    start_batch: int = 0,
    device: str | torch.device | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    prefetch_factor: int = 2,
    validation_fraction: float = 0.1,
    split_seed: int = 0,
) -> ImageLoader:
    """Batches of `subset` of `data` (a shard folder, ours or the original's, or an image folder).

    training=True: shuffled per epoch from (seed, epoch), the original's distortions, the last
    partial batch dropped. training=False: the evaluation preprocessing, every record of this
    replica's part exactly once, in order. `batch_size` is per replica. `device`: where the
    batches are made float and distorted (the accelerator the model runs on; default the CPU).
    `rank`/`world_size` default to torch.distributed's (or torchrun's environment). Each of
    `workers` processes holds at most `prefetch_factor` batches in flight. For an image folder,
    `validation_fraction` and `split_seed` choose the split as `incept build-data` does.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    image_size = _check_int("image_size", image_size, 1)
    workers = _check_int("workers", workers, 0)
    seed = _check_int("seed", seed, 0)
    prefetch_factor = _check_int("prefetch_factor", prefetch_factor, 1)
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise UserError(f"unknown device {device!r}; use e.g. cpu, cuda or cuda:1") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device {device} asked for, but torch sees no CUDA device here")
    rank, world_size = _distributed_place(rank, world_size)
    source = open_source(data, subset, validation_fraction=validation_fraction, seed=split_seed)
    return ImageLoader(
        source,
        training=training,
        batch_size=batch_size,
        image_size=image_size,
        workers=workers,
        seed=seed,
        epoch=epoch,
        start_batch=start_batch,
        device=device,
        rank=rank,
        world_size=world_size,
        prefetch_factor=prefetch_factor,
    )
