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
  is prepared by one worker, so workers read disjoint parts too. With `accumulate=N` (the
  batches of one update under gradient accumulation) an epoch holds a whole number of groups
  of N batches: group k is exactly global batch k of a loader with batch_size N times as large.
- training with `balanced_sampler`: the epoch's records are drawn instead, with replacement,
  each with a probability proportional to 1 / (records of its class), so every class present
  is drawn equally often on average; as many draws as records (the epoch keeps its length),
  from (seed, epoch), sliced into global batches and replicas as above.
- evaluation: replica r reads the contiguous records [r * n // W, (r + 1) * n // W) in order,
  the last batch may be short; the parts of all replicas are exactly the data set, once.

An example's random distortion depends only on (seed, epoch, record index), so it is the same
whatever the number of workers or replicas, and a run resumed at (epoch, batch) continues
exactly: `make_loader(..., epoch=e, start_batch=k)` or `loader.set_epoch(e, start_batch=k)`.
Under the balanced sampler a record may be drawn twice in an epoch: there the distortion is
keyed by the draw's place in the epoch instead, so the copies are distorted differently.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from incept.data.augment import (
    Augment,
    auto_augment,
    check_augment,
    draw_augment_params,
    random_erase,
)
from incept.data.images import decode_rgb
from incept.data.preprocess import (
    AREA_RANGE,
    center_crop_resize,
    distort_colour,
    distort_geometry,
    example_rng,
    to_unit_range,
)
from incept.data.sources import Source, open_source
from incept.errors import UserError
from incept.limits import MAX_PIXELS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """One batch as the loader hands it out: float images N x 3 x S x S in [-1, 1], int64
    labels N, and in evaluation the name of each record (`image/filename` in shards, the path
    under the folder for an image folder); None in training."""

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str] | None


@dataclass(frozen=True)
class _Example:
    """One record prepared in a worker: uint8 pixels, label, colour parameters (training),
    name (evaluation), and the reasons of the records skipped on the way. `pixels` is None for
    an evaluation record left out under skip_corrupt."""

    pixels: torch.Tensor | None
    label: int
    colour: torch.Tensor | None
    name: str | None
    skipped: list[str]
    augment: torch.Tensor | None = None  # augment.py's row, when the loader augments


class _Collated(NamedTuple):
    """What a worker sends for a batch. A named tuple, so that the pinning thread pins its
    tensors. `images` is None when every record was skipped; (worker, slot) names the
    shared-memory slot the images lie in, (-1, -1) for none."""

    images: torch.Tensor | None
    labels: torch.Tensor | None
    colours: torch.Tensor | None
    names: list[str] | None
    skipped: list[str]
    worker: int
    slot: int
    augments: torch.Tensor | None = None


@dataclass(frozen=True)
class _Failed:
    """A user-facing error met in a worker process, carried to the main process as data:
    PyTorch cannot rebuild our exception types across processes (it prints tracebacks)."""

    message: str


class _SharedBatches:
    """Shared-memory image batches that worker processes fill again once the main process is
    done with them.

    A fresh shared-memory batch costs its worker about 0.3 ms an image in page faults (more
    than the resize), so each worker keeps a few batch buffers, and a flag per buffer in a
    shared table (workers x slots) says whether it is free (0) or on its way to, or in use by,
    the main process (1). A worker claims a free slot, stacks the images into it and sends the
    slot's number with the batch; the main process clears the flag once it has turned the
    uint8 images into its own float batch. A worker that finds no free slot (batches dropped
    by an abandoned pass never come back) stacks into fresh shared memory, as torch would.
    """

    def __init__(self, workers: int, slots: int):
        self.flags = torch.zeros((workers, slots), dtype=torch.uint8).share_memory_()
        self._buffers: dict[int, torch.Tensor] = {}  # this worker's, made on first use

    def __getstate__(self):
        return {"flags": self.flags}  # each worker process makes its own buffers

    def __setstate__(self, state):
        self.flags, self._buffers = state["flags"], {}

    def stack(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
        """The images stacked into a claimed slot of this worker: (batch, slot), slot -1 when
        none was free."""
        flags = self.flags[get_worker_info().id]
        shape, dtype = (len(images), *images[0].shape), images[0].dtype
        size = math.prod(shape)
        free = [slot for slot in range(len(flags)) if flags[slot] == 0]
        if not free:
            return torch.stack(images, out=torch.empty(shape, dtype=dtype).share_memory_()), -1
        slot = free[0]
        buffer = self._buffers.get(slot)
        if buffer is None or buffer.numel() < size:
            buffer = self._buffers[slot] = torch.empty(size, dtype=dtype).share_memory_()
        flags[slot] = 1
        return torch.stack(images, out=buffer[:size].view(shape)), slot

    def release(self, worker: int, slot: int) -> None:
        if slot >= 0:
            self.flags[worker, slot] = 0


class _Collate:
    """`_Example`s -> a `_Collated` batch, or the first `_Failed` item."""

    def __init__(self, shared: _SharedBatches | None):
        self.shared = shared

    def __call__(self, items: list) -> _Collated | _Failed:
        failed = next((item for item in items if isinstance(item, _Failed)), None)
        if failed is not None:
            return failed
        skipped = [reason for item in items for reason in item.skipped]
        items = [item for item in items if item.pixels is not None]
        if not items:
            return _Collated(None, None, None, None, skipped, -1, -1)
        worker = get_worker_info()
        pixels = [item.pixels for item in items]
        if worker is None or self.shared is None:  # in the main process: plain memory
            images, worker_id, slot = torch.stack(pixels), -1, -1
        else:
            (images, slot), worker_id = self.shared.stack(pixels), worker.id
        labels = torch.tensor([item.label for item in items], dtype=torch.int64)
        training = items[0].colour is not None
        colours = default_collate([item.colour for item in items]) if training else None
        names = None if training else [item.name for item in items]
        augments = None
        if training and items[0].augment is not None:
            augments = torch.stack([item.augment for item in items])
        return _Collated(images, labels, colours, names, skipped, worker_id, slot, augments)


class _Examples(Dataset):
    """Record key -> an `_Example`: the preprocessed uint8 image, label, colour parameters
    (training) or name (evaluation), and the reasons of the records skipped on the way.

    Keys are (epoch, index, place) triples, so a persistent worker needs no word about the
    epoch; `place` keys the distortion (the index itself, or the draw's place in the epoch
    under the balanced sampler, which may draw a record twice). A
    record that cannot be read or decoded is a `_Failed` item, or with `skip_corrupt` is passed
    over: in training the next readable record (in index order) takes its place, with the
    distortion drawn for the place, so batches keep their size; in evaluation it is left out
    (an `_Example` without pixels).
    """

    def __init__(
        self,
        source: Source,
        image_size: int,
        training: bool,
        seed: int,
        skip_corrupt: bool,
        max_pixels: int = MAX_PIXELS,
        min_crop_area: float = AREA_RANGE[0],
        augment: Augment | None = None,
        augment_here: bool = True,
    ):
        self.source = source
        self.augment = augment  # None: the original's distortions only
        self.augment_here = augment_here  # the operations here (else on the batch's device)
        self.max_pixels = max_pixels
        self.min_crop_area = min_crop_area
        self.image_size = image_size
        self.training = training
        self.seed = seed
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int, int]) -> _Example | _Failed:
        epoch, index, place = key
        skipped = []
        for attempt in range(min(len(self.source), MAX_REPLACEMENTS + 1)):
            try:
                return self._example(epoch, place, (index + attempt) % len(self.source), skipped)
            except UserError as error:  # a corrupt record, an undecodable image
                if not self.skip_corrupt:
                    return _Failed(str(error))
                skipped.append(str(error))
                if not self.training:
                    return _Example(None, -1, None, None, skipped)
        return _Failed(
            f"{len(skipped)} records in a row from record {index} on are unreadable "
            f"(last: {skipped[-1]}); check the data"
        )

    def _example(self, epoch: int, place: int, index: int, skipped: list[str]) -> _Example:
        record = self.source.read(index)
        try:
            image = decode_rgb(record.image, max_pixels=self.max_pixels)
        except UserError as error:
            where = self.source.where(index)
            named = where if record.name in where else f"{where} ({record.name})"
            raise UserError(f"{named}: {error}") from None
        if not self.training:
            pixels = center_crop_resize(image, self.image_size)
            return _Example(pixels, record.label, None, record.name, skipped)
        rng = example_rng(self.seed, epoch, place)
        pixels, colour = distort_geometry(
            image, record.boxes, self.image_size, rng, self.min_crop_area
        )
        extra = None
        if self.augment is not None:
            extra = draw_augment_params(rng, self.augment, self.image_size)
            if self.augment_here and self.augment.layers:
                layers = self.augment.layers
                pixels = auto_augment(pixels[None], extra[None], layers)[0]
        return _Example(pixels, record.label, colour, None, skipped, extra)


# With skip_corrupt, how many records after a corrupt training record are tried in its place.
MAX_REPLACEMENTS = 100


def _prepare_worker(worker_id: int) -> None:
    # One thread per worker: the workers are the parallelism, more threads only contend.
    torch.set_num_threads(1)


class BatchMemory:
    """Float batches on the CPU whose memory is used again once no tensor holds it any more.

    A fresh 34 MB batch (32 x 3 x 299 x 299) costs more in page faults than the whole colour
    distortion written into it, so the last few batches' memory is kept. Each batch is a
    tensor over an anonymous memory map of ours, lent through a memoryview that only the
    tensor's storage holds: torch keeps the storage for as long as any tensor, view, numpy
    array or autograd record uses it, and when it lets go the memoryview goes too, whose weak
    reference callback releases the map. A map is written again only after that release.
    """

    def __init__(self, keep: int = 3):
        self.keep = keep
        self._maps: list[mmap.mmap] = []
        self._lent: dict[int, weakref.ref] = {}  # map index -> the lent memoryview

    def empty(self, shape: tuple[int, ...]) -> torch.Tensor:
        size = 4 * math.prod(shape)
        for index, memory in enumerate(self._maps):
            if len(memory) == size and index not in self._lent:
                return self._lend(index, shape)
        if len(self._maps) == self.keep:
            return torch.empty(shape, dtype=torch.float32)
        self._maps.append(mmap.mmap(-1, size))
        return self._lend(len(self._maps) - 1, shape)

    def _lend(self, index: int, shape: tuple[int, ...]) -> torch.Tensor:
        view = memoryview(self._maps[index])
        self._lent[index] = weakref.ref(view, lambda _: self._release(index))
        return torch.frombuffer(view, dtype=torch.float32).view(shape)

    def _release(self, index: int) -> None:
        del self._lent[index]


class _Plan(Sampler):
    """Which records each batch of this replica holds, for the current epoch and start batch.

    Batches are lists of (epoch, index, place) keys for `_Examples`. Training: `accumulate`
    batches make one step (an epoch holds whole steps only); `labels` (one per record) switch
    on the class-balanced draw.
    """

    def __init__(
        self,
        count: int,
        batch_size: int,
        training: bool,
        seed: int,
        rank: int,
        world_size: int,
        accumulate: int = 1,
        labels: np.ndarray | None = None,
    ):
        self.count = count
        self.batch_size = batch_size
        self.training = training
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0
        self.draw = None if labels is None else _balanced_probabilities(labels)
        if training:
            steps = count // (batch_size * world_size * accumulate)
            self.steps_per_epoch = steps * accumulate
            self.num_examples = self.steps_per_epoch * batch_size
        else:
            first, last = self._evaluation_part()
            self.num_examples = last - first
            self.steps_per_epoch = -(-self.num_examples // batch_size)

    def _evaluation_part(self) -> tuple[int, int]:
        count, rank, world = self.count, self.rank, self.world_size
        return rank * count // world, (rank + 1) * count // world

    def _epoch_order(self) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's records in the order they are read, and the place keying each one's
        distortion: a permutation keyed by record, or the balanced draw keyed by its place."""
        rng = np.random.default_rng((self.seed, self.epoch))
        if self.draw is None:
            order = rng.permutation(self.count)
            return order, order
        return rng.choice(self.count, size=self.count, p=self.draw), np.arange(self.count)

    def _batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(record indices, places) of each batch of the pass."""
        size = self.batch_size
        if self.training:
            order, places = self._epoch_order()
            global_batch = size * self.world_size
            for step in range(self.start_batch, self.steps_per_epoch):
                first = step * global_batch + self.rank * size
                yield order[first : first + size], places[first : first + size]
        else:
            first, last = self._evaluation_part()
            for start in range(first + self.start_batch * size, last, size):
                indices = np.arange(start, min(start + size, last))
                yield indices, indices

    def batch_indices(self) -> Iterator[np.ndarray]:
        return (indices for indices, _ in self._batches())

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        epoch = self.epoch
        for indices, places in self._batches():
            yield [(epoch, int(i), int(p)) for i, p in zip(indices, places)]


def _balanced_probabilities(labels: np.ndarray) -> np.ndarray:
    """Each record's chance in the class-balanced draw: 1 / (records of its class), scaled
    to sum to 1, so that every class present is drawn with the same probability."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    return weights / weights.sum()


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
    `rank`, `world_size`, `epoch`, `start_batch`, `steps_per_epoch` (batches a full epoch
    yields), `num_examples` (records this replica yields in a full epoch), `accumulate`,
    `balanced_sampler`, `skip_corrupt`, `max_image_pixels`, `min_crop_area`, `augment` (an
    `incept.data.augment.Augment`, None when off), `skipped` (the
    reason for each record passed over so far). A full pass over a training loader moves it to
    the next epoch; `set_epoch` chooses the epoch and the batch to start at.
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
        skip_corrupt: bool = False,
        max_image_pixels: int = MAX_PIXELS,
        accumulate: int = 1,
        balanced_sampler: bool = False,
        min_crop_area: float = AREA_RANGE[0],
        augment: Augment | None = None,
    ):
        self.source = source
        self.min_crop_area = min_crop_area
        self.augment = augment if training and augment is not None and augment.enabled else None
        # On a CUDA device the operations run on the whole batch there; elsewhere in the
        # workers, image by image, beside the decoding.
        self._augment_on_device = device is not None and device.type == "cuda"
        self.accumulate = accumulate
        self.balanced_sampler = balanced_sampler
        self.skip_corrupt = skip_corrupt
        self.max_image_pixels = max_image_pixels
        self.skipped: list[str] = []  # with skip_corrupt: why each passed-over record was
        self.training = training
        self.batch_size = batch_size
        self.image_size = image_size
        self.device = device
        self._memory = BatchMemory() if device is None or device.type == "cpu" else None
        labels = source.labels if training and balanced_sampler else None
        self._plan = _Plan(
            len(source), batch_size, training, seed, rank, world_size, accumulate, labels
        )
        if training and self._plan.steps_per_epoch == 0:
            grouped = f" x {accumulate} accumulated" if accumulate > 1 else ""
            raise UserError(
                f"{len(source)} training records are fewer than one global batch of "
                f"{batch_size * world_size}{grouped}; lower the batch size"
            )
        self.set_epoch(epoch, start_batch)
        # Slots per worker: its prefetched batches, the one the main process is using, one
        # spare.
        self._shared = _SharedBatches(workers, prefetch_factor + 2) if workers else None
        self._batches = DataLoader(
            _Examples(
                source,
                image_size,
                training,
                seed,
                skip_corrupt,
                max_image_pixels,
                min_crop_area,
                self.augment,
                augment_here=not self._augment_on_device,
            ),
            batch_sampler=self._plan,
            num_workers=workers,
            collate_fn=_Collate(self._shared),
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
        for batch in self.batches():
            yield batch.images, batch.labels

    def batches(self) -> Iterator[Batch]:
        """The next pass as `Batch`es: what iterating yields, with the records' names in
        evaluation (to say which files were misclassified)."""
        for collated in self._batches:
            if isinstance(collated, _Failed):
                raise UserError(f"{collated.message} (--skip-corrupt passes over such records)")
            for reason in collated.skipped:
                log.warning("skipped a corrupt record: %s", reason)
            self.skipped.extend(collated.skipped)
            if collated.images is None:  # every record of this batch was skipped
                continue
            # Asynchronous only from pinned memory (CUDA): otherwise the copy has read the
            # batch when it returns, which the release below relies on.
            pinned = self.device is not None and self.device.type == "cuda"
            images, labels, names = collated.images, collated.labels, collated.names
            if self.device is not None:
                images = images.to(self.device, non_blocking=pinned)
                labels = labels.to(self.device, non_blocking=pinned)
            out = self._memory.empty(images.shape) if self._memory else None
            if self.training:
                colours = collated.colours.to(images.device, non_blocking=pinned)
                augments = collated.augments
                if augments is not None and self._augment_on_device:
                    images = auto_augment(images, augments, self.augment.layers)
                result = distort_colour(images, colours, out)
                if augments is not None and self.augment.random_erase > 0:
                    random_erase(result, augments, self.augment.layers)
            else:
                result = to_unit_range(images, out)
            # The worker may refill its uint8 batch from now on: nothing here reads it any more
            # (a pinned batch is a copy made by the pinning thread).
            del images
            if self._shared is not None:
                self._shared.release(collated.worker, collated.slot)
            del collated
            yield Batch(result, labels, names)
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
    skip_corrupt: bool = False,
    max_image_pixels: int = MAX_PIXELS,
    accumulate: int = 1,
    balanced_sampler: bool = False,
    min_crop_area: float = AREA_RANGE[0],
    auto_augment: str = "",
    ra_num_ops: int = 2,
    ra_magnitude: int = 9,
    random_erase: float = 0.0,
) -> ImageLoader:
    """Batches of `subset` of `data` (a shard folder, ours or the original's, or an image folder).

    training=True: shuffled per epoch from (seed, epoch), the original's distortions, the last
    partial batch dropped. training=False: the evaluation preprocessing, every record of this
    replica's part exactly once, in order. `batch_size` is per replica. `device`: where the
    batches are made float and distorted (the accelerator the model runs on; default the CPU).
    `rank`/`world_size` default to torch.distributed's (or torchrun's environment). Each of
    `workers` processes holds at most `prefetch_factor` batches in flight. For an image folder,
    `validation_fraction` and `split_seed` choose the split as `incept build-data` does.

    A record that cannot be read (a checksum error) or decoded stops the pass with a
    `UserError` naming it. With `skip_corrupt=True` it is passed over instead, logged as a
    warning and its reason appended to `loader.skipped`: in training the next readable record
    takes its place (batches keep their size), in evaluation it is left out of the count.
    An image whose header shows more than `max_image_pixels` pixels (the decompression-bomb
    limit every command shares, at most Pillow's own) counts as one that cannot be decoded.

    Training only: `accumulate=N` rounds each epoch down to whole groups of N batches (the
    batches of one update under gradient accumulation), so that group k holds exactly the
    records of batch k of a loader with N times the batch size. `balanced_sampler=True`
    draws each epoch's records with replacement, each with a probability proportional to
    1 / (records of its class): the classes come out equally often on average, the epoch
    keeps its length, and the draw is a function of (seed, epoch) like the permutation.
    `min_crop_area`: the smallest random crop, as a fraction of the image's area (the
    original's 0.05; more keeps more of each object, which short runs on small data learn from
    sooner). `auto_augment` ("ra": RandAugment with `ra_num_ops` operations at magnitude
    `ra_magnitude` of 31; "ta_wide": TrivialAugment Wide; "": off) and `random_erase` (the
    chance that an image has a rectangle erased): torchvision's augmentations, after the
    original's geometry (see incept.data.augment); all off by default.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    image_size = _check_int("image_size", image_size, 1)
    workers = _check_int("workers", workers, 0)
    seed = _check_int("seed", seed, 0)
    prefetch_factor = _check_int("prefetch_factor", prefetch_factor, 1)
    max_image_pixels = _check_int("max_image_pixels", max_image_pixels, 1)
    accumulate = _check_int("accumulate", accumulate, 1)
    if max_image_pixels > MAX_PIXELS:
        raise UserError(
            f"max_image_pixels must be at most {MAX_PIXELS:,} (Pillow's own limit), "
            f"got {max_image_pixels:,}"
        )
    if not (isinstance(min_crop_area, (int, float)) and 0.01 <= min_crop_area <= 1):
        raise UserError(f"min_crop_area must be between 0.01 and 1, got {min_crop_area!r}")
    augment = Augment(auto_augment, ra_num_ops, ra_magnitude, random_erase)
    check_augment(augment)
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
        skip_corrupt=bool(skip_corrupt),
        max_image_pixels=max_image_pixels,
        accumulate=accumulate,
        balanced_sampler=bool(balanced_sampler),
        min_crop_area=float(min_crop_area),
        augment=augment,
    )
