"""Image files to TFRecord shards in the original's schema: the engine behind build-data and
build-imagenet, and the build-data planner (an image folder, labels 1..N).

A build is a plan: per split, the input files in a seeded shuffled order, cut into shards
of contiguous runs (as the original did). Each shard is one job for a worker process, so
the output depends on the plan alone, never on the number of workers. A shard is written
under a hidden temporary name and renamed when complete; a sidecar in `.incept-index/`
records the job's fingerprint (files with their sizes and times, labels, flags), so a run
that was killed and started again keeps the shards that match and writes the rest.
`dataset.json` and `labels.txt` are written last.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import os
import random
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from incept.data.example import encode_example
from incept.data.images import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    ImageError,
    ShardImage,
    read_file_bytes,
    to_shard_image,
)
from incept.data.sources import (
    DATASET_FILE,
    FolderListing,
    list_image_folder,
    read_text_lines,
    split_validation,
)
from incept.data.tfrecord import (
    INDEX_FOLDER,
    RecordWriter,
    ShardIndex,
    save_index,
)
from incept.errors import UserError
from incept.files import write_atomically

FORMAT = "incept-shards-1"  # bump when the bytes a job writes change
RECORDS_PER_SHARD = 1024
LABEL_OFFSET = 1  # the original's labels start at 1; 0 is the unused background class
_SHARD_NAME = re.compile(r"^(train|validation)-\d{5}-of-\d{5}$")


@dataclass(frozen=True)
class InputFile:
    """One input image and what its record will say."""

    name: str  # as recorded in dataset.json and image/filename
    path: str  # the file, or the tar archive that holds it
    label: int  # 1..N
    member: tuple[int, int] | None = None  # (offset, size) of the file inside the tar
    synset: str | None = None
    boxes_xml: str | None = None  # a per-image annotation file
    boxes: tuple[tuple[float, float, float, float], ...] | None = None  # ymin, xmin, ymax, xmax


# features(item, image, class text, notes) -> the record's features; a maker appends to
# `notes` what the user should hear about the record (e.g. an unreadable annotation file).
FeatureMaker = Callable[[InputFile, ShardImage, str, list], dict]


@dataclass(frozen=True)
class ShardJob:
    path: str
    files: tuple[InputFile, ...]
    class_texts: tuple[str, ...]
    features: FeatureMaker
    max_pixels: int = MAX_PIXELS
    # Not in the fingerprint: files are stamped with their size, and the listing leaves out
    # those over the limit, so the shard's bytes never depend on it.
    max_file_bytes: int = MAX_FILE_BYTES


@dataclass
class ShardResult:
    shard: str
    names: list[str]  # record order
    labels: list[int]
    reencoded: list[tuple[str, str]]  # (name, what it was)
    skipped: list[tuple[str, str]]  # (name, reason)
    notes: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (name, note)
    reused: bool = False


@dataclass(frozen=True)
class SplitPlan:
    subset: str
    files: list[InputFile]  # in record order
    shards: int


# ---------------------------------------------------------------------------------------------
# One shard (runs in a worker process)


def _stamp(path: str | None) -> list[int] | None:
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def job_fingerprint(job: ShardJob) -> str:
    digest = hashlib.sha256()
    maker = f"{job.features.__module__}.{job.features.__qualname__}"
    digest.update(json.dumps([FORMAT, maker, job.max_pixels, job.class_texts]).encode())
    for item in job.files:
        fields = [dataclasses.astuple(item), _stamp(item.path), _stamp(item.boxes_xml)]
        digest.update(json.dumps(fields).encode())
    return digest.hexdigest()


def _sidecar(shard: Path) -> Path:
    return shard.parent / INDEX_FOLDER / f"{shard.name}.build.json"


def _reusable(job: ShardJob, fingerprint: str) -> ShardResult | None:
    shard = Path(job.path)
    try:
        stored = json.loads(_sidecar(shard).read_text())
    except (OSError, ValueError):
        return None
    if stored.get("fingerprint") != fingerprint or stored.get("stamp") != _stamp(job.path):
        return None
    result = ShardResult(**stored["result"])
    for pairs in (result.reencoded, result.skipped, result.notes):
        pairs[:] = [tuple(pair) for pair in pairs]
    result.reused = True
    return result


def _read_input(item: InputFile, max_bytes: int) -> bytes:
    if item.member is None:
        return read_file_bytes(item.path, max_bytes)
    offset, size = item.member
    fd = os.open(item.path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


_progress_counter = None  # a shared counter of files done, set in each worker


def _init_worker(counter) -> None:
    global _progress_counter
    _progress_counter = counter
    # Ctrl-C reaches the whole process group: the main process alone answers it (it stops
    # the pool and says so in one line), so workers print no traceback of their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_shard(job: ShardJob) -> ShardResult:
    """Write one shard (or find it already written by an identical job)."""
    fingerprint = job_fingerprint(job)
    reused = _reusable(job, fingerprint)
    if reused is not None:
        _count_done(len(job.files))
        return reused
    shard = Path(job.path)
    result = ShardResult(shard.name, [], [], [], [])
    with RecordWriter(shard) as writer:
        for item in job.files:
            try:
                data = _read_input(item, job.max_file_bytes)
                image = to_shard_image(data, max_pixels=job.max_pixels)
            except ImageError as error:
                result.skipped.append((item.name, str(error)))
            except OSError as error:
                result.skipped.append((item.name, f"unreadable: {error.strerror or error}"))
            else:
                notes: list[str] = []
                text = job.class_texts[item.label - LABEL_OFFSET]
                writer.write(encode_example(job.features(item, image, text, notes)))
                result.notes += [(item.name, note) for note in notes]
                result.names.append(item.name)
                result.labels.append(item.label)
                if image.converted_from is not None:
                    result.reencoded.append((item.name, image.converted_from))
            _count_done(1)
        writer.commit()
    # Index first, then the sidecar: a sidecar always describes a complete shard and index.
    save_index(shard, ShardIndex.from_columns(writer.positions, result.labels))
    sidecar = {"fingerprint": fingerprint, "stamp": _stamp(job.path)}
    sidecar["result"] = dataclasses.asdict(result)
    write_atomically(_sidecar(shard), json.dumps(sidecar))
    return result


def _count_done(files: int) -> None:
    if _progress_counter is not None:
        with _progress_counter.get_lock():
            _progress_counter.value += files


# ---------------------------------------------------------------------------------------------
# Progress


class _Progress:
    """A bar on a terminal; off a terminal, a line every `every` seconds."""

    def __init__(self, command: str, total: int, every: float = 10.0):
        self.command, self.total, self.every = command, total, every
        self.start = self.last_line = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="file", desc=command, dynamic_ncols=True)

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if now - self.last_line >= self.every:
            self.last_line = now
            rate = done / max(now - self.start, 1e-9)
            print(
                f"{self.command}: {done:,}/{self.total:,} files "
                f"({100 * done / max(self.total, 1):.0f}%), {rate:,.0f} files/s",
                file=sys.stderr,
                flush=True,
            )

    def close(self, done: int) -> None:
        if self.bar is not None:
            self.update(done)
            self.bar.close()


# ---------------------------------------------------------------------------------------------
# The engine


def shard_ranges(count: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous runs of about equal size, as the original cut its file list."""
    edges = np.linspace(0, count, shards + 1).astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def default_shard_count(files: int) -> int:
    return 0 if files == 0 else max(1, round(files / RECORDS_PER_SHARD))


def shard_name(subset: str, index: int, count: int) -> str:
    return f"{subset}-{index:05d}-of-{count:05d}"


def _clean_output(output: Path, keep: set[str], command: str) -> None:
    """Remove leftovers: temporary files of killed runs, and shards (with their index and
    sidecar) of another plan, which readers would otherwise take as part of this set."""
    removed = 0
    for entry in output.iterdir():
        stale_temp = entry.name.startswith(".") and entry.name.endswith(".partial")
        stale_shard = _SHARD_NAME.match(entry.name) and entry.name not in keep
        if stale_temp or stale_shard:
            entry.unlink()
            removed += bool(stale_shard)
    index_folder = output / INDEX_FOLDER
    if index_folder.is_dir():
        for entry in index_folder.iterdir():
            shard = entry.name.split(".")[0]
            if _SHARD_NAME.match(shard) and shard not in keep:
                entry.unlink()
    if removed:
        print(
            f"{command}: removed {removed} shards of an earlier build with other settings",
            file=sys.stderr,
        )


def build_shards(
    output: Path,
    splits: Sequence[SplitPlan],
    class_texts: Sequence[str],
    features: FeatureMaker,
    *,
    workers: int,
    command: str,
    max_pixels: int = MAX_PIXELS,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> dict[str, list[ShardResult]]:
    """Write every shard of the plan with `workers` processes; results per split, in order."""
    output.mkdir(parents=True, exist_ok=True)
    jobs = []
    for split in splits:
        for index, (start, end) in enumerate(shard_ranges(len(split.files), split.shards)):
            path = output / shard_name(split.subset, index, split.shards)
            files = tuple(split.files[start:end])
            jobs.append(
                ShardJob(str(path), files, tuple(class_texts), features, max_pixels, max_file_bytes)
            )
    dataset_file = output / DATASET_FILE
    if dataset_file.exists():
        dataset_file.unlink()  # the folder is not a complete set until this build ends
    _clean_output(output, {Path(job.path).name for job in jobs}, command)
    (output / INDEX_FOLDER).mkdir(exist_ok=True)

    progress = _Progress(command, sum(len(job.files) for job in jobs))
    results = _build_in_pool(jobs, workers, progress)
    by_split: dict[str, list[ShardResult]] = collections.defaultdict(list)
    for job in jobs:
        by_split[Path(job.path).name.split("-")[0]].append(results[job.path])
    return dict(by_split)


def _build_in_pool(jobs: list[ShardJob], workers: int, progress: _Progress) -> dict:
    """Shards on worker processes (one process too: the main one only watches progress)."""
    context = multiprocessing.get_context()
    counter = context.Value("q", 0)
    results = {}
    processes = max(1, min(workers, len(jobs)))
    waiting = iter(jobs)
    pending: dict = {}
    with context.Pool(processes, initializer=_init_worker, initargs=(counter,)) as pool:
        while True:
            # A few jobs queued a process, not all: the plan is not copied into the queue.
            for job in itertools.islice(waiting, 2 * processes - len(pending)):
                pending[job.path] = pool.apply_async(build_shard, (job,))
            if not pending:
                break
            for path in [p for p, r in pending.items() if r.ready()]:
                results[path] = pending.pop(path).get()  # re-raises a worker's exception
            progress.update(counter.value)
            time.sleep(0.05)
    progress.close(counter.value)
    return results


def write_dataset_files(
    output: Path,
    classes: Sequence[str],
    results: dict[str, list[ShardResult]],
    extra_skipped: Sequence[dict],
    settings: dict,
    labels_txt: Sequence[str] | None = None,
) -> dict:
    """labels.txt (`labels_txt`, by default the classes) and dataset.json, written last:
    dataset.json marks a complete build."""
    info = {
        "format": FORMAT,
        "classes": list(classes),
        "num_classes": len(classes),
        "label_offset": LABEL_OFFSET,
        **settings,
        "splits": {},
        "records": {},
        "reencoded": [],
        "skipped": list(extra_skipped),
        "notes": [],
    }
    for subset, shard_results in results.items():
        labels = [label for r in shard_results for label in r.labels]
        per_class = np.bincount(
            np.asarray(labels, dtype=np.int64) - LABEL_OFFSET, minlength=len(classes)
        )
        info["splits"][subset] = {
            "records": len(labels),
            "shards": len(shard_results),
            "per_class": dict(zip(classes, per_class.tolist())),
        }
        info["records"][subset] = [name for r in shard_results for name in r.names]
        for r in shard_results:
            info["reencoded"] += [
                {"file": n, "from": what, "split": subset} for n, what in r.reencoded
            ]
            info["skipped"] += [{"file": n, "reason": why, "split": subset} for n, why in r.skipped]
            info["notes"] += [{"file": n, "note": note, "split": subset} for n, note in r.notes]
    lines = classes if labels_txt is None else labels_txt
    # Class names as their folders' names were given: bytes that are not UTF-8 are kept as is.
    labels = "".join(f"{c}\n" for c in lines).encode("utf-8", "surrogateescape")
    write_atomically(output / "labels.txt", labels)
    write_atomically(output / DATASET_FILE, json.dumps(info, indent=1) + "\n")
    return info


def summary_lines(info: dict, results: dict[str, list[ShardResult]], output: Path) -> list[str]:
    parts = []
    for subset, split in info["splits"].items():
        noun = "shard" if split["shards"] == 1 else "shards"
        parts.append(f"{split['records']:,} {subset} records in {split['shards']} {noun}")
    lines = [f"wrote {' and '.join(parts) or 'nothing'} to {output}"]
    reencoded = collections.Counter(entry["from"] for entry in info["reencoded"])
    if reencoded:
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in reencoded.most_common())
        lines.append(f"re-encoded {sum(reencoded.values()):,} files as RGB JPEG ({kinds})")
    skipped = collections.Counter(entry["reason"].split(":")[0] for entry in info["skipped"])
    if skipped:
        reasons = ", ".join(f"{n:,} {reason}" for reason, n in skipped.most_common())
        lines.append(
            f"skipped {sum(skipped.values()):,} files ({reasons}); the list is in {DATASET_FILE}"
        )
    reused = sum(r.reused for shard_results in results.values() for r in shard_results)
    if reused:
        noun = "shard" if reused == 1 else "shards"
        lines.append(f"kept {reused} {noun} written by an earlier identical run")
    return lines


# ---------------------------------------------------------------------------------------------
# build-data: an image folder


def folder_features(item: InputFile, image: ShardImage, class_text: str, notes: list) -> dict:
    """The keys of the original's build_image_data.py."""
    return {
        "image/height": image.height,
        "image/width": image.width,
        "image/colorspace": b"RGB",
        "image/channels": 3,
        "image/class/label": item.label,
        "image/class/text": os.fsencode(class_text),  # the name's bytes, UTF-8 or not
        "image/format": b"JPEG",
        "image/filename": os.fsencode(item.name),
        "image/encoded": image.jpeg,
    }


def read_labels_file(path: str | os.PathLike) -> list[str]:
    names = read_text_lines(path, "labels file")
    if not names:
        raise UserError(f"labels file {path} names no classes (one class name a line)")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"labels file {path} names {duplicates[0]!r} twice")
    return names


def _inputs(listing: FolderListing, files: list[list[str]]) -> list[InputFile]:
    return [
        InputFile(name=name, path=str(listing.root / name), label=label)
        for label, per_class in enumerate(files, start=LABEL_OFFSET)
        for name in per_class
    ]


def seeded_order(files: list[InputFile], seed: int) -> list[InputFile]:
    """The files in a shuffled order fixed by the seed (so classes mix across shards)."""
    ordered = sorted(files, key=lambda f: f.name)
    random.Random(seed).shuffle(ordered)
    return ordered


def _check_output(source: Path, output: Path) -> None:
    if output.resolve() == source.resolve() or output.resolve().is_relative_to(source.resolve()):
        raise UserError(f"output folder {output} is inside the source {source}; put it elsewhere")
    if output.exists() and not output.is_dir():
        raise UserError(f"output {output} exists and is not a folder")


def build_data(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    labels_file: str | os.PathLike | None = None,
    validation_dir: str | os.PathLike | None = None,
    validation_fraction: float = 0.1,
    train_shards: int | None = None,
    validation_shards: int | None = None,
    workers: int = 1,
    seed: int = 0,
    max_pixels: int = MAX_PIXELS,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> tuple[dict, list[str]]:
    """An image folder to shards; returns dataset.json's content and the summary lines.

    Files over `max_file_bytes` or images over `max_pixels` are skipped with the reason."""
    source, output = Path(source), Path(output)
    if not source.is_dir():
        raise UserError(f"no such directory: {source}")
    _check_output(source, output)
    for flag, value in (
        ("--train-shards", train_shards),
        ("--validation-shards", validation_shards),
    ):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    classes = read_labels_file(labels_file) if labels_file else None
    seen: dict = {}  # shared by both listings: no file in both splits
    listing = list_image_folder(source, classes, max_file_bytes=max_file_bytes, seen=seen)
    classes = listing.classes
    skipped = [{"file": name, "reason": why} for name, why in listing.strays]
    if validation_dir is not None:
        validation_dir = Path(validation_dir)
        _check_output(validation_dir, output)
        held_out = list_image_folder(
            validation_dir, classes, max_file_bytes=max_file_bytes, seen=seen
        )
        train = _inputs(listing, listing.files)
        validation = _inputs(held_out, held_out.files)
        skipped += [
            {"file": name, "reason": why, "split": "validation"} for name, why in held_out.strays
        ]
        settings = {"validation_dir": str(validation_dir.resolve())}
    else:
        train_files, validation_files = split_validation(listing, validation_fraction, seed)
        train = _inputs(listing, train_files)
        validation = _inputs(listing, validation_files)
        settings = {"validation_fraction": validation_fraction}
    settings = {"source": str(source.resolve()), "seed": seed, **settings}
    settings |= {"max_image_pixels": max_pixels, "max_file_bytes": max_file_bytes}
    splits = [
        SplitPlan(
            "train", seeded_order(train, seed), train_shards or default_shard_count(len(train))
        ),
        SplitPlan(
            "validation",
            seeded_order(validation, seed),
            validation_shards or default_shard_count(len(validation)),
        ),
    ]
    splits = [split for split in splits if split.shards > 0]
    results = build_shards(
        output,
        splits,
        classes,
        folder_features,
        workers=workers,
        command="build-data",
        max_pixels=max_pixels,
        max_file_bytes=max_file_bytes,
    )
    info = write_dataset_files(output, classes, results, skipped, settings)
    return info, summary_lines(info, results, output)
