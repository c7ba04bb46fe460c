"""make_loader: order, exactly-once evaluation, determinism across workers and replicas."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from incept.data import loader as loader_module
from incept.data import make_loader
from incept.data.example import encode_example
from incept.data.images import decode_rgb
from incept.data.loader import BatchMemory, _Examples
from incept.data.preprocess import center_crop_resize, to_unit_range
from incept.data.tfrecord import write_records
from incept.errors import UserError

CLASSES = ["ant", "bee", "cat"]
SIZE = 75


def jpeg(seed: int, height: int = 48, width: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    data = io.BytesIO()
    Image.fromarray(pixels).save(data, "JPEG", quality=90)
    return data.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An image folder: 3 classes, 9 images each (64 x 48, one portrait)."""
    root = tmp_path_factory.mktemp("folder")
    for label, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(9):
            shape = (64, 48) if i == 4 else (48, 64)
            (root / name / f"{i}.jpg").write_bytes(jpeg(label * 100 + i, *shape))
    return root


def shard_record(i: int, image: bytes) -> bytes:
    """Record i of the `shards` fixture: class i % 3, a box on odd records."""
    label = i % 3
    boxes = [[0.1, 0.2, 0.6, 0.7]] if i % 2 else []
    return encode_example(
        {
            "image/encoded": image,
            "image/format": b"JPEG",
            "image/colorspace": b"RGB",
            "image/channels": 3,
            "image/height": 48,
            "image/width": 64,
            "image/class/label": label + 1,
            "image/class/text": CLASSES[label].encode(),
            "image/filename": f"{i}.jpg".encode(),
            "image/object/bbox/ymin": np.array([b[0] for b in boxes], np.float32),
            "image/object/bbox/xmin": np.array([b[1] for b in boxes], np.float32),
            "image/object/bbox/ymax": np.array([b[2] for b in boxes], np.float32),
            "image/object/bbox/xmax": np.array([b[3] for b in boxes], np.float32),
        }
    )


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two shards in the original's schema (labels 1..3, background 0), some with boxes."""
    root = tmp_path_factory.mktemp("shards")
    records = [shard_record(i, jpeg(1000 + i)) for i in range(20)]
    write_records(root / "train-00000-of-00002", records[:12])
    write_records(root / "train-00001-of-00002", records[12:])
    write_records(root / "validation-00000-of-00001", records[:7])
    (root / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def collect(loader):
    images, labels = [], []
    for x, y in loader:
        images.append(x)
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


def test_evaluation_yields_every_record_once_in_order(folder):
    loader = make_loader(folder, "train", training=False, batch_size=4, image_size=SIZE, workers=2)
    source = loader.source
    images, labels = collect(loader)
    assert len(images) == len(source) == loader.num_examples == 24
    assert [len(x) for x, _ in loader] == [4] * 6  # a second pass gives the same batches
    assert torch.equal(labels, torch.from_numpy(source.labels))
    expected = torch.stack(
        [center_crop_resize(decode_rgb(source.read(i).image), SIZE) for i in range(len(source))]
    )
    expected = to_unit_range(expected)
    # Worker processes resize on one thread, the test on two: a rounding step may differ by one
    # uint8 level (2/255 in [-1, 1]) on a few pixels; each image must still be its own record's.
    assert (images - expected).abs().max() <= 2 / 255 + 1e-6
    nearest = torch.cdist(images.flatten(1), expected.flatten(1)).argmin(1)
    assert torch.equal(nearest, torch.arange(len(source)))
    assert images.dtype == torch.float32 and images.shape[1:] == (3, SIZE, SIZE)
    assert loader.classes == CLASSES and loader.num_classes == 3


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_evaluation_replicas_partition_the_data_set(folder, world_size):
    whole_images, whole_labels = collect(
        make_loader(folder, "validation", training=False, batch_size=2, image_size=SIZE, workers=0)
    )
    parts = [
        make_loader(
            folder,
            "validation",
            training=False,
            batch_size=2,
            image_size=SIZE,
            workers=0,
            rank=rank,
            world_size=world_size,
        )
        for rank in range(world_size)
    ]
    assert sum(p.num_examples for p in parts) == len(whole_labels) == 3
    pieces = [collect(p) for p in parts if p.num_examples]
    assert torch.equal(torch.cat([x for x, _ in pieces]), whole_images)
    assert torch.equal(torch.cat([y for _, y in pieces]), whole_labels)


def test_training_is_the_same_whatever_the_worker_count(shards):
    runs = [
        collect(make_loader(shards, batch_size=4, image_size=SIZE, workers=w, seed=3))
        for w in (0, 2)
    ]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    images, labels = runs[0]
    assert len(images) == 20 // 4 * 4
    assert images.min() >= -1 and images.max() <= 1
    assert set(labels.tolist()) <= {0, 1, 2}


def test_training_replicas_split_each_global_batch(shards):
    """Two replicas of batch 3 see, step by step, the batches one process of batch 6 sees."""
    single = make_loader(shards, batch_size=6, image_size=SIZE, workers=0, seed=1)
    replicas = [
        make_loader(shards, batch_size=3, image_size=SIZE, workers=w, seed=1, rank=r, world_size=2)
        for r, w in ((0, 0), (1, 2))
    ]
    assert len(single) == len(replicas[0]) == len(replicas[1]) == 3
    reads = [list(single.batch_indices())] + [list(r.batch_indices()) for r in replicas]
    for step, whole in enumerate(reads[0]):
        assert np.array_equal(np.concatenate([reads[1][step], reads[2][step]]), whole)
    seen = np.concatenate(reads[1] + reads[2])
    assert len(set(seen.tolist())) == len(seen)  # disjoint, no duplicates
    for (x, y), (x0, y0), (x1, y1) in zip(single, *replicas):
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))


def test_batch_memory_is_reused_only_when_no_tensor_holds_it():
    memory = BatchMemory(keep=2)
    first = memory.empty((2, 3)).fill_(1)
    address = first.data_ptr()
    view = first[0]
    del first
    second = memory.empty((2, 3)).fill_(2)  # the view still holds the first map
    assert second.data_ptr() != address and (view == 1).all()
    del view
    again = memory.empty((2, 3))
    assert again.data_ptr() == address  # nothing holds the first map any more: reused
    extra = memory.empty((2, 3))  # both kept maps in use: a plain new tensor
    assert extra.data_ptr() not in (address, second.data_ptr())


def test_batches_kept_by_the_caller_are_never_overwritten(folder):
    loader = make_loader(folder, batch_size=3, image_size=SIZE, workers=0)
    kept = list(loader)  # every batch held: the loader must not write into any of them
    loader.set_epoch(0)
    copies = [(x.clone(), y) for x, y in loader]  # each dropped at once: memory reused
    assert len(kept) == len(copies) == 8
    for (x, y), (x_copy, y_copy) in zip(kept, copies):
        assert torch.equal(x, x_copy) and torch.equal(y, y_copy)


def test_workers_read_disjoint_parts(shards, tmp_path, monkeypatch):
    """Each record of an epoch is read by exactly one worker (logged from inside the workers)."""
    read = _Examples.__getitem__

    def logged(self, key):
        worker = torch.utils.data.get_worker_info().id
        with open(tmp_path / f"worker{worker}.txt", "a") as log:
            log.write(f"{key[1]}\n")
        return read(self, key)

    monkeypatch.setattr(_Examples, "__getitem__", logged)
    loader = make_loader(shards, batch_size=4, image_size=SIZE, workers=2, seed=5)
    collect(loader)
    parts = [[int(v) for v in (tmp_path / f"worker{w}.txt").read_text().split()] for w in range(2)]
    assert parts[0] and parts[1]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(np.concatenate(list(loader_indices(shards))))


def loader_indices(shards):
    return make_loader(shards, batch_size=4, image_size=SIZE, workers=0, seed=5).batch_indices()


def test_epochs_shuffle_differently_and_advance(folder):
    loader = make_loader(folder, batch_size=5, image_size=SIZE, workers=0, seed=0)
    first = np.concatenate(list(loader.batch_indices()))
    collect(loader)
    assert loader.epoch == 1
    second = np.concatenate(list(loader.batch_indices()))
    assert not np.array_equal(first, second)
    loader.set_epoch(0)
    assert np.array_equal(np.concatenate(list(loader.batch_indices())), first)
    assert sorted(first.tolist()) != list(range(len(first)))  # shuffled


def test_resume_mid_epoch_continues_exactly(shards):
    full = list(make_loader(shards, batch_size=4, image_size=SIZE, workers=0, seed=2, epoch=1))
    resumed = make_loader(shards, batch_size=4, image_size=SIZE, workers=2, seed=2)
    resumed.set_epoch(1, start_batch=3)
    assert len(resumed) == 2
    tail = list(resumed)
    assert len(tail) == 2
    for (x, y), (x_full, y_full) in zip(tail, full[3:]):
        assert torch.equal(x, x_full) and torch.equal(y, y_full)
    assert resumed.epoch == 2 and resumed.start_batch == 0
    again = make_loader(
        shards, batch_size=4, image_size=SIZE, workers=0, seed=2, epoch=1, start_batch=4
    )
    ((x, y),) = list(again)
    assert torch.equal(x, full[4][0])


def test_shards_with_boxes_and_explicit_device(shards):
    loader = make_loader(
        shards, "validation", training=False, batch_size=3, image_size=91, workers=0, device="cpu"
    )
    images, labels = collect(loader)
    assert images.shape == (7, 3, 91, 91) and images.device.type == "cpu"
    assert labels.tolist() == [i % 3 for i in range(7)]
    assert loader.classes == CLASSES


def test_torchrun_environment_picks_the_part(folder, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = make_loader(folder, batch_size=4, image_size=SIZE, workers=0)
    assert (loader.rank, loader.world_size) == (1, 2)


@pytest.mark.parametrize(
    "arguments, words",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"workers": -1}, "workers"),
        ({"image_size": 2.5}, "image_size"),
        ({"seed": -3}, "seed"),
        ({"device": "warp-drive"}, "device"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"rank": 0}, "world_size"),
        ({"batch_size": 25}, "fewer than one global batch"),
        ({"start_batch": 99}, "start_batch"),
    ],
)
def test_bad_arguments_are_user_errors(folder, arguments, words):
    options = {"batch_size": 4, "image_size": SIZE, "workers": 0, **arguments}
    with pytest.raises(UserError, match=words):
        make_loader(folder, **options)


def test_missing_data_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        make_loader(tmp_path / "nowhere")


def test_worker_batch_slots_are_reused_and_never_overwritten_in_use(folder, monkeypatch):
    """Workers refill the shared-memory batches the main process has released, and only those:
    across passes, an abandoned pass included, the batches equal the in-process loader's."""
    released = []
    original = loader_module._SharedBatches.release
    monkeypatch.setattr(
        loader_module._SharedBatches,
        "release",
        lambda self, worker, slot: (released.append((worker, slot)), original(self, worker, slot)),
    )
    reference = make_loader(folder, batch_size=3, image_size=SIZE, workers=0, seed=4)
    pooled = make_loader(
        folder, batch_size=3, image_size=SIZE, workers=2, seed=4, prefetch_factor=1
    )
    for epoch in range(3):
        for loader in (reference, pooled):
            loader.set_epoch(epoch)
        if epoch == 1:  # abandon a pass after two batches; its prefetched batches are dropped
            for _, _ in zip(range(2), pooled):
                pass
            pooled.set_epoch(epoch)
        for (x, y), (x_pooled, y_pooled) in zip(reference, pooled, strict=True):
            assert torch.equal(x, x_pooled) and torch.equal(y, y_pooled)
    # 3 full passes of 8 batches and 2 batches of the abandoned one, all from pooled slots of
    # the two workers (prefetch 1: 3 slots each), each slot used again and again.
    assert len(reference) == 8 and len(released) == 3 * 8 + 2
    assert {worker for worker, _ in released} == {0, 1}
    assert {slot for _, slot in released} <= {0, 1, 2} and -1 not in {s for _, s in released}
    assert (pooled._shared.flags == 0).sum() >= 2  # every slot not dropped with the pass is free


@pytest.fixture(scope="module")
def damaged(shards, tmp_path_factory):
    """The shards with two corrupt records: a flipped bit in record 3 (a checksum error) and
    a record 8 whose JPEG is cut short (it reads, but does not decode)."""
    from incept.data.tfrecord import iter_records

    root = tmp_path_factory.mktemp("damaged")
    for path in shards.iterdir():
        if path.is_file():  # not the folder of rebuilt indexes
            (root / path.name).write_bytes(path.read_bytes())
    first = root / "train-00000-of-00002"
    records = list(iter_records(first))
    records[8] = shard_record(8, jpeg(1008)[:200])
    write_records(first, records)
    data = bytearray(first.read_bytes())
    offset = sum(16 + len(record) for record in records[:3])
    data[offset + 12 + len(records[3]) // 2] ^= 0x10  # in the image: the label still reads
    first.write_bytes(bytes(data))
    return root


def test_corrupt_records_stop_the_pass_unless_skipped(damaged, shards):
    for training in (True, False):
        loader = make_loader(damaged, training=training, batch_size=4, image_size=SIZE, workers=0)
        with pytest.raises(UserError, match="train-00000-of-00002"):
            list(loader)
    # Evaluation leaves the two records out, and says why.
    clean = make_loader(shards, training=False, batch_size=4, image_size=SIZE, workers=0)
    kept = make_loader(
        damaged, training=False, batch_size=4, image_size=SIZE, workers=2, skip_corrupt=True
    )
    clean_images, clean_labels = collect(clean)
    images, labels = collect(kept)
    rest = [i for i in range(20) if i not in (3, 8)]
    assert torch.equal(images, clean_images[rest]) and torch.equal(labels, clean_labels[rest])
    assert len(kept.skipped) == 2
    assert "byte offset" in kept.skipped[0] and "checksum" in kept.skipped[0]
    shard = str(damaged / "train-00000-of-00002")
    assert kept.skipped[1].startswith(f"{shard}: record at byte offset ")
    assert "(8.jpg): truncated or corrupt JPEG" in kept.skipped[1]
    # A batch of nothing but bad records yields nothing (batches of one here).
    single = make_loader(
        damaged, training=False, batch_size=1, image_size=SIZE, workers=0, skip_corrupt=True
    )
    batches = list(single)
    assert len(batches) == 18 and len(single.skipped) == 2
    assert torch.equal(torch.cat([x for x, _ in batches]), clean_images[rest])


def test_skipped_training_records_are_replaced_by_the_next_readable_one(damaged, shards):
    kept = make_loader(damaged, batch_size=4, image_size=SIZE, workers=2, seed=1, skip_corrupt=True)
    clean = make_loader(shards, batch_size=4, image_size=SIZE, workers=0, seed=1)
    order = np.concatenate(list(clean.batch_indices()))
    (images, labels), (clean_images, clean_labels) = collect(kept), collect(clean)
    assert len(images) == len(clean_images) == 20 and len(kept.skipped) == 2
    for place, index in enumerate(order):
        if index in (3, 8):  # record 4 or 9 instead, with the distortion drawn for the place
            assert labels[place] == clean_labels[list(order).index(index + 1)]
            assert not torch.equal(images[place], clean_images[place])
        else:
            assert torch.equal(images[place], clean_images[place])


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_batches_name_their_records(shards, folder, damaged, workers):
    """`batches()` gives what iterating gives plus each record's name: `image/filename` in
    shards, the path under the folder for an image folder; a left-out record has no name."""
    loader = make_loader(shards, training=False, batch_size=3, image_size=SIZE, workers=workers)
    batches = list(loader.batches())
    expected = [f"{i}.jpg" for i in range(20)]
    assert [b.names for b in batches] == [expected[k : k + 3] for k in range(0, 20, 3)]
    for batch, (images, labels) in zip(batches, loader, strict=True):
        assert torch.equal(batch.images, images) and torch.equal(batch.labels, labels)
    held_out = make_loader(
        folder, "validation", training=False, batch_size=2, image_size=SIZE, workers=workers
    )
    names = [name for batch in held_out.batches() for name in batch.names]
    assert names and all(n.split("/")[0] in CLASSES and n.endswith(".jpg") for n in names)
    kept = make_loader(
        damaged, training=False, batch_size=4, image_size=SIZE, workers=workers, skip_corrupt=True
    )
    named = [n for b in kept.batches() for n in b.names]
    assert named == [f"{i}.jpg" for i in range(20) if i not in (3, 8)]
    training = make_loader(shards, batch_size=4, image_size=SIZE, workers=workers)
    assert all(b.names is None for b in training.batches())


def test_batch_memory_waits_for_every_holder_of_its_storage():
    """A numpy array over a batch, with every tensor gone, still holds its memory."""
    memory = BatchMemory(keep=1)
    array = memory.empty((4,)).fill_(3).numpy()
    address = array.ctypes.data
    other = memory.empty((4,))  # the only kept map is lent: fresh memory
    assert other.data_ptr() != address and (array == 3).all()
    del array
    assert memory.empty((4,)).data_ptr() == address


@pytest.mark.parametrize("training", [False, True])
def test_images_over_the_pixel_limit_are_refused_naming_the_flag(folder, tmp_path, training):
    # The folder's images are 64 x 48 = 3,072 pixels; one PNG of 100 x 80 = 8,000 joins them.
    large = tmp_path / "folder"
    for name in CLASSES:
        (large / name).mkdir(parents=True)
        for source in sorted((folder / name).iterdir()):
            (large / name / source.name).write_bytes(source.read_bytes())
    Image.new("RGB", (100, 80), (200, 10, 10)).save(large / "ant" / "large.png")
    options = {"training": training, "batch_size": 2, "image_size": SIZE, "workers": 0}
    options |= {"subset": "train", "validation_fraction": 0.0}  # all 28 images
    assert len(collect(make_loader(large, **options))[0]) == 28  # within the default limit
    strict = make_loader(large, max_image_pixels=5_000, **options)
    with pytest.raises(UserError, match=r"large\.png.*100x80 pixels exceeds the limit of 5,000 "):
        collect(strict)
    skipping = make_loader(large, max_image_pixels=5_000, skip_corrupt=True, **options)
    images, _ = collect(skipping)
    assert len(skipping.skipped) == 1 and "--max-image-pixels" in skipping.skipped[0]
    assert len(images) == (27 if not training else 28)  # left out; replaced in training
    for bad in (0, 178_956_971, 2.5):
        with pytest.raises(UserError, match="max_image_pixels"):
            make_loader(large, max_image_pixels=bad, **options)
