"""Images/s per core of the training input pipeline: JPEG bytes -> distorted [-1, 1] batch.

Side by side on the same JPEG bytes of real photographs:
- JPEG decoding alone (torchvision's libjpeg-turbo), the floor every pipeline pays;
- incept: decode, TF's bounding-box-aware distorted crop, resize with a random method, flip,
  the colour distortion in the original's two orders (batched; on a CPU the compiled loop of
  incept.data.colour_kernel), clip, [-1, 1];
- torchvision.transforms.v2 with the same distortions (RandomResizedCrop with the original's
  area and aspect ranges, flip, ColorJitter brightness/contrast/saturation/hue, [-1, 1]);
- TensorFlow's original tf.image pipeline (research/inception image_processing.py, run by
  tf.data one image at a time), when a Python with tensorflow is at hand (--tf-python): it
  runs in a child process of its own, on the same bytes, as TensorFlow and torch do not share
  a process well (each brings its own threads and its own copy of the JPEG and math kernels);
- incept's `make_loader` end to end (worker processes, batches in shared memory), charged
  the CPU time of the main process and of its workers, in the steady state.
Each in-process pipeline runs on one thread and is charged the CPU time of the whole process
(time.process_time), so "per core" means images per CPU-second.

The photographs: the Debian package mate-backgrounds ships real photos
(/usr/share/backgrounds/mate/nature, `apt-get install mate-backgrounds`); the benchmark cuts
them into ImageNet-like JPEGs (random windows, longest side 400-500 pixels, quality 88-95,
about 30 KB each), since synthetic images decode unrealistically fast.

    python benchmarks/pipeline.py [--photos DIR] [--images 256] [--seconds 8]

(with incept installed, or PYTHONPATH=src). About 2 minutes on two cores.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 299
BATCH = 32
DEFAULT_PHOTOS = "/usr/share/backgrounds/mate/nature"
DEFAULT_TF_PYTHON = "/opt/tfenv/bin/python"


def make_photo_set(folder: Path, count: int) -> list[bytes]:
    """ImageNet-like JPEGs cut from the real photographs in `folder` (deterministic)."""
    from PIL import Image

    sources = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not sources:
        sys.exit(f"no JPEG photographs in {folder}; apt-get install mate-backgrounds or --photos")
    rng = np.random.default_rng(0)
    photos = [Image.open(p).convert("RGB") for p in sources]
    result = []
    for i in range(count):
        photo = photos[i % len(photos)]
        width, height = photo.size
        area = rng.uniform(0.05, 0.5) * width * height
        aspect = rng.uniform(0.75, 1.33)
        w = int(min(width, (area * aspect) ** 0.5))
        h = int(min(height, (area / aspect) ** 0.5))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        scale = int(rng.integers(400, 501)) / max(w, h)
        window = photo.crop((x, y, x + w, y + h))
        window = window.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
        encoded = io.BytesIO()
        window.save(encoded, "JPEG", quality=int(rng.integers(88, 96)))
        result.append(encoded.getvalue())
    return result


def measure(run_pass, images: int, seconds: float) -> float:
    """Images per CPU-second: whole passes over the set until `seconds` of CPU time."""
    run_pass()  # warm up: first-call allocations, kernel selection
    done, start = 0, time.process_time()
    while True:
        run_pass()
        done += images
        spent = time.process_time() - start
        if spent >= seconds:
            return done / spent


def batches(items: list, size: int = BATCH):
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- torch side -----------------------------------------------------------------------------


def torch_pipelines(jpegs: list[bytes]) -> dict:
    import torch
    from torchvision.io import decode_jpeg
    from torchvision.transforms import v2

    from incept.data.images import decode_rgb
    from incept.data.loader import BatchMemory
    from incept.data.preprocess import distort_colour, distort_geometry, example_rng

    torch.set_num_threads(1)
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in jpegs]
    no_boxes = np.zeros((0, 4), np.float32)

    def decode_only():
        for data in encoded:
            decode_jpeg(data)

    epoch = [0]
    memory = BatchMemory()  # as make_loader recycles its output batches

    def worker_side():
        """What a loader worker does for a batch: all but the colour pass."""
        epoch[0] += 1
        for group in batches(list(enumerate(jpegs))):
            examples = [
                distort_geometry(decode_rgb(data), no_boxes, SIZE, example_rng(0, epoch[0], i))
                for i, data in group
            ]
            yield torch.stack([e[0] for e in examples]), torch.stack([e[1] for e in examples])

    def incept_worker_side():
        for _ in worker_side():
            pass

    def incept_pass():
        for images, colours in worker_side():
            distort_colour(images, colours, memory.empty(images.shape))

    # The same distortions in torchvision's vocabulary. Its brightness is a factor, not an
    # offset: 1 +- 0.125 is the original's +-32/255 for a mid-grey pixel.
    torchvision_transform = v2.Compose(
        [
            v2.RandomResizedCrop(SIZE, scale=(0.05, 1.0), ratio=(0.75, 1.33), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.2),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
        ]
    )

    def torchvision_pass():
        for group in batches(encoded):
            torch.stack([torchvision_transform(decode_jpeg(data)) for data in group])

    return {
        "decode only (torchvision decode_jpeg)": decode_only,
        "incept (decode, crop, resize, flip, colour)": incept_pass,
        "  of which worker side (all but the colour pass)": incept_worker_side,
        "torchvision.transforms.v2": torchvision_pass,
    }


def _children_cpu_seconds() -> float:
    """User + system CPU time of this process's live child processes (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == os.getpid():  # fields: state, ppid, ..., utime (12), stime (13)
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def loader_throughput(jpegs: list[bytes], workers: int, seconds: float) -> float:
    """make_loader over an image folder of the photos: images per CPU-second of all processes.

    Steady state: after a first epoch (worker start-up), the CPU time of the main process and
    of its worker processes while whole epochs run for about `seconds` of wall time.
    """
    import torch

    from incept.data import make_loader

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        for i, data in enumerate(jpegs):
            path = Path(folder, f"class{i % 2}", f"{i:05d}.jpg")
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
        loader = make_loader(
            folder,
            "train",
            batch_size=BATCH,
            image_size=SIZE,
            workers=workers,
            validation_fraction=0.0,
        )
        for _ in loader:
            pass
        done, start = 0, time.perf_counter()
        cpu = time.process_time() + _children_cpu_seconds()
        while time.perf_counter() - start < seconds:
            for images, _ in loader:
                done += len(images)
        cpu = time.process_time() + _children_cpu_seconds() - cpu
    return done / cpu


# --- TensorFlow side (runs in the child process) ----------------------------------------------


def tensorflow_pipeline(jpegs: list[bytes]):
    """research/inception image_processing.py's training path, as tf.data runs it."""
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    methods = ["bilinear", "nearest", "bicubic", "area"]

    def distort_color(image, ordering):
        def saturation_first():
            x = tf.image.random_brightness(image, max_delta=32.0 / 255.0)
            x = tf.image.random_saturation(x, lower=0.5, upper=1.5)
            x = tf.image.random_hue(x, max_delta=0.2)
            return tf.image.random_contrast(x, lower=0.5, upper=1.5)

        def contrast_first():
            x = tf.image.random_brightness(image, max_delta=32.0 / 255.0)
            x = tf.image.random_contrast(x, lower=0.5, upper=1.5)
            x = tf.image.random_saturation(x, lower=0.5, upper=1.5)
            return tf.image.random_hue(x, max_delta=0.2)

        return tf.clip_by_value(tf.cond(ordering == 0, saturation_first, contrast_first), 0, 1)

    def preprocess(jpeg, index):
        image = tf.image.convert_image_dtype(tf.io.decode_jpeg(jpeg, channels=3), tf.float32)
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.zeros([1, 0, 4]),
            min_object_covered=0.1,
            aspect_ratio_range=[0.75, 1.33],
            area_range=[0.05, 1.0],
            max_attempts=100,
            use_image_if_no_bounding_boxes=True,
        )
        image = tf.slice(image, begin, size)
        # The original picked the method by preprocessing thread; here by image.
        branches = [(lambda m=m: tf.image.resize(image, [SIZE, SIZE], method=m)) for m in methods]
        image = tf.switch_case(tf.cast(index % 4, tf.int32), branches)
        image = tf.image.random_flip_left_right(image)
        image = distort_color(image, index % 2)
        return (image - 0.5) * 2.0

    dataset = tf.data.Dataset.from_tensor_slices((jpegs, np.arange(len(jpegs))))
    dataset = dataset.map(preprocess).batch(BATCH)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    dataset = dataset.with_options(options)

    def tf_pass():
        for _ in dataset:
            pass

    return tf_pass


def run_tensorflow_child(photo_file: str, seconds: float) -> None:
    stored = np.load(photo_file)
    data, offsets = stored["data"].tobytes(), stored["offsets"]
    jpegs = [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    rate = measure(tensorflow_pipeline(jpegs), len(jpegs), seconds)
    print(json.dumps({"rate": rate}))


def tensorflow_rate(python: str, jpegs: list[bytes], seconds: float) -> float | None:
    with tempfile.TemporaryDirectory() as folder:
        photo_file = os.path.join(folder, "photos.npz")
        offsets = np.cumsum([0] + [len(d) for d in jpegs])
        np.savez(photo_file, data=np.frombuffer(b"".join(jpegs), np.uint8), offsets=offsets)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
        child = subprocess.run(
            [python, __file__, "--tensorflow-child", photo_file, "--seconds", str(seconds)],
            capture_output=True,
            text=True,
            env=env,
        )
    if child.returncode != 0:
        print(f"TensorFlow run failed:\n{child.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(child.stdout.strip().splitlines()[-1])["rate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", default=DEFAULT_PHOTOS, help="folder of real JPEG photos")
    parser.add_argument("--images", type=int, default=256, help="images in the set")
    parser.add_argument("--seconds", type=float, default=8.0, help="CPU seconds per pipeline")
    parser.add_argument(
        "--tf-python",
        default=DEFAULT_TF_PYTHON,
        help="a Python with tensorflow for the reference ('' to skip)",
    )
    parser.add_argument(
        "--loader-workers",
        type=int,
        default=2,
        help="workers for the make_loader line (0 to skip it)",
    )
    parser.add_argument("--tensorflow-child", metavar="PHOTO_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tensorflow_child:
        run_tensorflow_child(args.tensorflow_child, args.seconds)
        return

    jpegs = make_photo_set(Path(args.photos), args.images)
    mean_kb = sum(map(len, jpegs)) / len(jpegs) / 1024
    print(
        f"{len(jpegs)} JPEGs from {args.photos}, {mean_kb:.1f} KB on average; "
        f"output {BATCH} x 3 x {SIZE} x {SIZE}; images per CPU-second (one core)"
    )
    rates = {
        name: measure(run, len(jpegs), args.seconds) for name, run in torch_pipelines(jpegs).items()
    }
    if args.tf_python and Path(args.tf_python).exists():
        rate = tensorflow_rate(args.tf_python, jpegs, args.seconds)
        if rate is not None:
            rates["tensorflow tf.image (the original)"] = rate
    if args.loader_workers:
        name = f"incept make_loader, {args.loader_workers} workers, all processes"
        rates[name] = loader_throughput(jpegs, args.loader_workers, args.seconds)

    ours = rates["incept (decode, crop, resize, flip, colour)"]
    for name, rate in rates.items():
        competitor = name.startswith(("torchvision", "tensorflow"))
        ratio = f"  incept is {ours / rate:.2f}x" if competitor else ""
        print(f"{name:52s} {rate:8.0f} img/s{ratio}")


if __name__ == "__main__":
    main()
