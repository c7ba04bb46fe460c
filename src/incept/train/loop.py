"""`incept train`: the training loop, top to bottom.

One call of `train()` is one run, in named steps over one `Run` object:

    set_up       join the replicas, open the data once, settle the recipe (named, chosen for
                 the data, or the checkpoint's when the train dir has one), build the model,
                 the optimizer, the schedule, the moving averages, the batches
    train_step   forward under autocast, cross entropy with label smoothing (and class
                 weights) on the main and aux heads plus the L2 term, backward (DDP averages
                 the gradients of all replicas), repeated over `accumulate` micro-batches
                 whose gradients add up, optional clipping, the update, the moving averages
                 of the weights and of the batch-norm statistics
    after_step   log when due, evaluate on the validation split when due (keeping the best
                 checkpoint apart), save when due
    finish       the curves

The first replica logs, evaluates and writes checkpoints; a non-finite loss stops the run
before it touches the weights.

Exact resume: everything random in a step is drawn from generators seeded by (seed, step,
replica), the data order and distortions are functions of (seed, epoch, position), and the
learning rate and the moving averages' decays are functions of the step. So a run killed at
any moment and started again with the same command redoes the steps after its last checkpoint
exactly as the first time. The class weights are kept in the checkpoint, so a resumed run
weighs as the first did whatever became of a weights file.

Gradient accumulation (`accumulate` = N > 1): a step is one update, one schedule step, one
moving-average step and one count of the step counter (so checkpoint, evaluation and log
cadences, max_steps and the learning-rate schedule all count updates), made from N
consecutive loader batches of batch_size (global) each, every one's loss scaled by 1/N, the
L2 term once: the update of a global batch of N x batch_size. An epoch is
train_examples // (N x batch_size) steps, and step k of an epoch reads exactly the images
of step k of a run with batch N x batch_size (the loader keeps each epoch to whole groups
of N batches), so resuming at step s reads batch (s mod steps_per_epoch) x N of its epoch
on. Under DDP the first N-1 backward passes skip the gradient averaging (`no_sync`); the
last averages the sum. Batch norm is the exception to "the same as the large batch": it
normalises each micro-batch over its own images (--sync-bn: over one micro-batch of every
replica), and the moving statistics blend the mean of the micro-batches' statistics once
a step.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from incept import nets
from incept.data import make_loader, open_source
from incept.data.augment import Augment
from incept.errors import UserError
from incept.evaluate import evaluate
from incept.runtime.precision import autocast, grad_scaler, resolve_precision
from incept.runtime.replicas import (
    Replicas,
    broadcast_flag,
    same_everywhere,
    split_batch,
    start_replicas,
    stop_replicas,
    sum_across,
)
from incept.train.batch_norm import MovingStatistics, recompute_statistics
from incept.train.class_weights import class_weights
from incept.train.curves import draw_curves
from incept.train.distributed import convert_to_sync_batch_norm
from incept.train.ema import ExponentialMovingAverage
from incept.train.lock import TrainDirLock
from incept.train.mixing import Mixed, mix_batch, mixing_line, mixing_on
from incept.train.optim import (
    LearningRateSchedule,
    build_optimizer,
    clip_gradients,
    decayed_weights,
    l2_penalty,
)
from incept.train.progress import Progress
from incept.train.recipe import Recipe
from incept.train.settle import settle_recipe
from incept.train.transfer import (
    freeze_batch_norm_of_frozen_layers,
    initialise_from,
    restrict_training,
    source_semantics,
    split_globs,
)
from incept.weights.checkpoint import (
    BEST_DIR,
    CHECKPOINTS_DIR,
    Checkpoint,
    latest_checkpoint,
    read_checkpoint,
    save_checkpoint,
)


class LossNotFinite(UserError):
    """The loss became NaN or infinite; the run stopped before applying that step."""


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of one replica's step: dropout draws the same masks in a resumed run."""
    return (seed * 1_000_003 + step * 4_099 + rank) % (2**63)


@dataclass
class Data:
    """What a run knows of its data before it reads a batch."""

    path: str
    class_names: list[str]
    train_examples: int
    validation_examples: int
    class_counts: list[int]  # training examples per class


def open_data(data_dir: str) -> Data:
    train = open_source(data_dir, "train")
    try:
        validation = len(open_source(data_dir, "validation"))
    except UserError:  # a shard folder with training shards only
        validation = 0
    counts = np.bincount(train.labels, minlength=len(train.classes)).tolist()
    return Data(data_dir, list(train.classes), len(train), validation, counts)


@dataclass
class LogWindow:
    """Loss, top-1 and step sums since the last log line (checkpoints keep them, summed over
    the replicas, so that a resumed run logs the same averages)."""

    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(3))
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, loss: float, top1: float) -> None:
        self.sums += torch.tensor([loss, top1, 1.0])
        self.steps += 1


class LossWatch:
    """Says once, in a line, when the logged training loss has risen log after log."""

    RISES = 3  # rises in a row
    FACTOR = 1.5  # ... ending this far above the lowest logged loss

    def __init__(self):
        self.losses: list[float] = []
        self.warned = False

    def warning(self, loss: float, lr: float) -> str | None:
        self.losses.append(loss)
        recent = self.losses[-(self.RISES + 1) :]
        rising = len(recent) == self.RISES + 1 and all(a < b for a, b in zip(recent, recent[1:]))
        if self.warned or not rising or loss < self.FACTOR * min(self.losses):
            return None
        self.warned = True
        return (
            f"warning: the training loss rose for {self.RISES} log lines in a row "
            f"({recent[0]:.3g} -> {loss:.3g}): the learning rate ({lr:.3g}) is likely too high "
            "for this data; stop and lower --learning-rate (or add warm-up to the recipe)"
        )


@dataclass
class Run:
    """Everything one run holds, built by `set_up`."""

    recipe: Recipe
    recipe_source: str
    data: Data
    train_dir: Path
    replicas: Replicas
    progress: Progress
    precision: str
    semantics: str | None
    steps_per_epoch: int
    max_steps: int
    model: nn.Module  # the module whose weights are saved
    network: nn.Module  # what the step calls: the model, wrapped by DDP and compile
    trainable: list[nn.Parameter]
    decayed: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: LearningRateSchedule
    scaler: torch.amp.GradScaler | None
    ema: ExponentialMovingAverage | None
    statistics: MovingStatistics
    batches: object  # an endless iterator of (images, labels)
    step: int
    window: LogWindow
    class_weights: torch.Tensor | None = None  # on the device; None: the loss is unweighted
    mixing: bool = False  # mixup or CutMix on (mixing.py)
    best_top1: float | None = None  # the best validation precision@1 so far
    eval_model: nn.Module | None = None  # built at the first evaluation
    loss_watch: LossWatch = field(default_factory=LossWatch)
    last: dict = field(default_factory=dict)  # the last logged metrics
    last_lr: float = 0.0  # the last step's learning rate
    last_images: torch.Tensor | None = None  # the last step's batch, for the image summaries

    @property
    def evaluates(self) -> bool:
        return self.recipe.eval_every > 0 and self.data.validation_examples > 0

    def due(self, every: int) -> bool:
        return every > 0 and (self.step % every == 0 or self.step == self.max_steps)


def train(
    data_dir: str,
    train_dir: str | Path,
    recipe: str | None = None,
    overrides: dict | None = None,
    aux_flag: bool | None = None,
) -> dict:
    """Runs (or resumes) training; returns the last logged metrics.

    recipe: a shipped recipe's name or a .toml path; None lets incept choose one for the data
    (the first line says which and why). overrides: recipe keys given as flags.
    """
    replicas = start_replicas()
    lock = None
    try:
        lock = TrainDirLock(train_dir) if replicas.is_main else None  # one run a train dir
        run = set_up(data_dir, Path(train_dir), recipe, overrides or {}, aux_flag, replicas)
        try:
            while run.step < run.max_steps:
                train_step(run)
                after_step(run)
            finish(run)
            return run.last
        finally:
            run.progress.close()
    finally:
        if lock is not None:
            lock.release()
        stop_replicas(replicas)


def set_up(data_dir, train_dir, recipe_name, overrides, aux_flag, replicas: Replicas) -> Run:
    data = open_data(data_dir)
    settled = settle_recipe(
        train_dir,
        recipe_name,
        overrides,
        class_names=data.class_names,
        train_examples=data.train_examples,
        accelerator=replicas.device.type != "cpu",
        aux_flag=aux_flag,
    )
    recipe = settled.recipe
    step_images = recipe.batch_size * recipe.accumulate
    steps_per_epoch = data.train_examples // step_images
    if steps_per_epoch == 0:
        batch, lower = f"{recipe.batch_size}", "--batch-size"
        if recipe.accumulate > 1:
            batch += f" x --accumulate {recipe.accumulate} = {step_images}"
            lower += " or --accumulate"
        raise UserError(
            f"{data_dir} has {data.train_examples} training examples, fewer than one batch "
            f"of {batch}: lower {lower}"
        )
    max_steps = recipe.max_steps
    if recipe.epochs > 0:
        max_steps = math.ceil(recipe.epochs * steps_per_epoch)
    # A damaged newest checkpoint gives way to the one before (said once progress is up).
    checkpoint = read_checkpoint(settled.checkpoint, fall_back=True) if settled.checkpoint else None
    step = checkpoint.state["step"] if checkpoint else 0
    weights = checkpoint.state.get("class_weights") if checkpoint else None  # as first run
    if weights is None:  # a weights file's mistake stops the run before it writes anything
        weights = class_weights(recipe.class_weights, data.class_counts, data.class_names)
    if step > max_steps:
        raise UserError(
            f"{checkpoint.path} is at step {step}, past this run's length of {max_steps} steps: "
            f"nothing would run; give --max-steps above {step} to go on, or a new --train-dir"
        )
    if split_batch(recipe.batch_size, replicas) < 2:
        raise UserError(
            f"--batch-size {recipe.batch_size} leaves one image a replica: batch norm needs "
            f"two; use {2 * replicas.world_size} or more"
        )
    if replicas.is_main:
        train_dir.mkdir(parents=True, exist_ok=True)
    if not same_everywhere(step, replicas):
        raise UserError(
            f"the replicas found different checkpoints in {train_dir}: put the train dir on "
            "storage that every machine shares"
        )
    progress = Progress(train_dir, step, max_steps, enabled=replicas.is_main)
    try:
        progress.say(settled.line)
        if checkpoint is not None and checkpoint.damaged:
            progress.say(checkpoint.damaged)
        run = _build(recipe, settled.source, data, train_dir, replicas, progress, checkpoint)
    except BaseException:
        progress.close()
        raise
    run.steps_per_epoch, run.max_steps = steps_per_epoch, max_steps
    if weights is not None:
        run.class_weights = torch.tensor(weights, dtype=torch.float32, device=replicas.device)
    run.schedule = LearningRateSchedule.from_recipe(recipe, steps_per_epoch, max_steps)
    run.batches = training_batches(run)
    accumulated = (
        f" x {recipe.accumulate} accumulated ({step_images} images a step)"
        if recipe.accumulate > 1
        else ""
    )
    progress.say(
        f"training {recipe.model} (width {recipe.width}) on {data.train_examples} examples, "
        f"{len(data.class_names)} classes; {replicas.world_size} replica(s), global batch "
        f"{recipe.batch_size}{accumulated}, {run.precision}, "
        f"{'channels_last' if recipe.channels_last else 'NCHW'}; steps {run.step} -> "
        f"{max_steps} ({steps_per_epoch} a epoch)"
    )
    if run.class_weights is not None:
        weights = run.class_weights.tolist()
        progress.say(
            f"class weights ({recipe.class_weights}): {min(weights):.4g} to {max(weights):.4g}"
        )
    if recipe.balanced_sampler:
        progress.say("balanced sampler: each class drawn equally often (with replacement)")
    augment = Augment(
        recipe.auto_augment, recipe.ra_num_ops, recipe.ra_magnitude, recipe.random_erase
    )
    if augment.enabled:
        progress.say(f"augmentation: {augment.describe()}")
    run.mixing = mixing_on(recipe)
    if run.mixing:
        progress.say(mixing_line(recipe))
    if recipe.eval_every > 0 and not data.validation_examples:
        progress.say(f"{data_dir} has no validation split: no validation while training")
    return run


def _build(recipe, recipe_source, data, train_dir, replicas, progress, checkpoint) -> Run:
    """The model, optimizer and moving averages, from scratch, --init-from or a checkpoint."""
    device = replicas.device
    semantics = (
        checkpoint.meta["model_kwargs"]["semantics"]
        if checkpoint
        else source_semantics(recipe.init_from)
    )
    torch.manual_seed(recipe.seed)  # the same initial weights on every replica
    model = build_model(recipe, len(data.class_names), semantics)
    if checkpoint is None and recipe.init_from:
        initialise_from(model, recipe.init_from, split_globs(recipe.exclude), progress.say)
    restrict_training(model, split_globs(recipe.trainable), progress.say)
    if checkpoint is not None:
        model.load_state_dict(checkpoint.model)
    model.to(device)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    if recipe.sync_bn and replicas.distributed:
        model = convert_to_sync_batch_norm(model, replicas)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(recipe, trainable)
    precision = resolve_precision(recipe.precision, device)
    scaler = grad_scaler(precision, device)
    ema = ExponentialMovingAverage(model, recipe.ema_decay) if recipe.ema_decay > 0 else None
    run = Run(
        recipe=recipe,
        recipe_source=recipe_source,
        data=data,
        train_dir=train_dir,
        replicas=replicas,
        progress=progress,
        precision=precision,
        semantics=semantics,
        steps_per_epoch=0,  # set_up fills in the length, the schedule and the batches
        max_steps=0,
        model=model,
        network=_wrap(model, recipe, replicas),
        trainable=trainable,
        decayed=decayed_weights(model),
        optimizer=optimizer,
        schedule=None,
        scaler=scaler,
        ema=ema,
        statistics=MovingStatistics(model, recipe.bn_decay),
        batches=None,
        step=0,
        window=LogWindow(),
    )
    if checkpoint is not None:
        _restore(run, checkpoint)
    run.network.train()
    if recipe.freeze_bn:
        freeze_batch_norm_of_frozen_layers(run.network)
    return run


def _wrap(model: nn.Module, recipe: Recipe, replicas: Replicas) -> nn.Module:
    network = model
    if replicas.distributed:
        device = replicas.device
        network = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True,  # no second copy of the gradients
        )
    if recipe.compile:
        network = torch.compile(network)
    return network


def _restore(run: Run, checkpoint: Checkpoint) -> None:
    state = checkpoint.state
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scaler is not None and "grad_scaler" in state:
        run.scaler.load_state_dict(state["grad_scaler"])
    if run.ema is not None and checkpoint.ema is not None:
        run.ema.load_state_dict(checkpoint.ema)
    run.step = state["step"]
    run.best_top1 = state.get("best_top1")
    if run.replicas.is_main and "log_window" in state:
        run.window.sums = state["log_window"].clone()  # sums over all replicas: once
    run.progress.say(f"resuming from {checkpoint.path} at step {run.step}")


def build_model(recipe: Recipe, num_classes: int, semantics: str | None) -> nn.Module:
    return nets.create(
        recipe.model,
        num_classes=num_classes,
        aux_logits=recipe.aux_logits,
        width=recipe.width,
        min_depth=recipe.min_depth,
        dropout=recipe.dropout,
        bn_momentum=1.0 - recipe.bn_decay,
        semantics=semantics,
    )


def _loader_device(replicas: Replicas) -> torch.device | None:
    # On an accelerator the loader finishes each batch there (colour distortion, scaling).
    return replicas.device if replicas.device.type == "cuda" else None


def _loader(run: Run, subset: str, **order):
    """The loader of `subset` with the run's batch share, size, workers and fault policy;
    `order` is make_loader's training keys (training, seed, epoch, start_batch)."""
    recipe = run.recipe
    return make_loader(
        run.data.path,
        subset=subset,
        training=order.pop("training", False),
        batch_size=order.pop("batch_size", split_batch(recipe.batch_size, run.replicas)),
        image_size=recipe.input_size,
        workers=order.pop("workers", recipe.workers),
        device=_loader_device(run.replicas),
        skip_corrupt=recipe.skip_corrupt,
        max_image_pixels=recipe.max_image_pixels,
        min_crop_area=recipe.min_crop_area,
        balanced_sampler=recipe.balanced_sampler,  # training only: evaluation reads each once
        auto_augment=recipe.auto_augment,  # these four: training only too
        ra_num_ops=recipe.ra_num_ops,
        ra_magnitude=recipe.ra_magnitude,
        random_erase=recipe.random_erase,
        **order,
    )


def training_batches(run: Run):
    """The batches from the run's step on, forever: each replica its share of every global
    batch, `accumulate` batches a step."""
    accumulate = run.recipe.accumulate
    loader = _loader(
        run,
        "train",
        training=True,
        seed=run.recipe.seed,
        epoch=run.step // run.steps_per_epoch,
        start_batch=run.step % run.steps_per_epoch * accumulate,
        accumulate=accumulate,
    )
    while True:
        yield from loader  # each full pass moves the loader on to the next epoch


def compute_loss(
    outputs,
    labels: torch.Tensor,
    recipe: Recipe,
    weights: torch.Tensor | None = None,
    mixed: Mixed | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross entropy with label smoothing on the main head, plus aux_weight times the aux
    head's; returns (loss, main logits). `weights` (one a class): each image's loss times its
    class's weight, averaged over the images (see class_weights.py). `mixed`: a mixup or
    CutMix batch, whose loss is share x that of its labels + (1 - share) x its partners'."""
    logits, aux_logits = outputs if isinstance(outputs, tuple) else (outputs, None)
    logits = logits.float()
    loss = _mixed_cross_entropy(logits, labels, recipe, weights, mixed)
    if aux_logits is not None:
        aux_loss = _mixed_cross_entropy(aux_logits.float(), labels, recipe, weights, mixed)
        loss = loss + recipe.aux_weight * aux_loss
    return loss, logits


def _mixed_cross_entropy(logits, labels, recipe, weights, mixed: Mixed | None):
    smoothing = recipe.label_smoothing
    if mixed is None:
        return _cross_entropy(logits, labels, smoothing, weights)
    return mixed.share * _cross_entropy(logits, mixed.labels, smoothing, weights) + (
        1.0 - mixed.share
    ) * _cross_entropy(logits, mixed.partners, smoothing, weights)


def _cross_entropy(logits, labels, smoothing: float, weights: torch.Tensor | None):
    if weights is None:
        return F.cross_entropy(logits, labels, label_smoothing=smoothing)
    each = F.cross_entropy(logits, labels, label_smoothing=smoothing, reduction="none")
    return (weights[labels] * each).mean()


def train_step(run: Run) -> None:
    """One update of every replica from one global batch: `accumulate` micro-batches, each
    one's loss scaled by 1/accumulate, their gradients summed before the update."""
    recipe, replicas = run.recipe, run.replicas
    count = recipe.accumulate
    lr = run.schedule.apply(run.optimizer, run.step)
    run.optimizer.zero_grad(set_to_none=True)
    run.statistics.before_forward()
    value, top1 = 0.0, 0.0
    for index in range(count):
        last = index == count - 1
        images, labels = _next_batch(run)
        mixed = None
        if run.mixing:
            images, mixed = mix_batch(images, labels, recipe, run.step, replicas.rank, index)
        if index == 0:
            # Seeded after the step's first batch: a new epoch's loader draws its base seed
            # from torch's generator (an epoch starts on a step's first batch only).
            torch.manual_seed(step_seed(recipe.seed, run.step, replicas.rank))
        with _gradient_sync(run.network, last):
            with autocast(run.precision, replicas.device):
                outputs = run.network(images)
            loss, logits = compute_loss(outputs, labels, recipe, run.class_weights, mixed)
            if count > 1:
                loss = loss / count
            if last:  # the L2 term once a step, as in the large batch
                loss = loss + l2_penalty(run.decayed, recipe.weight_decay)
            part = loss.item()
            _stop_unless_finite(run, part)
            backward = run.scaler.scale(loss) if run.scaler is not None else loss
            backward.backward()
        run.statistics.collect(index, count)  # after backward: it may read the buffers
        value += part
        with torch.no_grad():
            top1 += _batch_top1(logits, labels, mixed) / count
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
        clip_gradients(run.trainable, recipe.clip_grad_norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        clip_gradients(run.trainable, recipe.clip_grad_norm)
        run.optimizer.step()
    run.statistics.after_forward(run.step)
    if run.ema is not None:
        run.ema.update(run.model, run.step)
    run.step += 1

    run.window.add(value, top1)
    run.last_lr, run.last_images = lr, images
    run.progress.advance(run.step)


def _batch_top1(logits: torch.Tensor, labels: torch.Tensor, mixed: Mixed | None) -> float:
    """The batch's training precision@1; of a mixed batch, credited as its targets are: share
    for predicting the image's label, 1 - share for the partner's."""
    predicted = logits.argmax(dim=1)
    if mixed is None:
        return (predicted == labels).float().mean().item()
    right = mixed.share * (predicted == mixed.labels).float()
    return (right + (1.0 - mixed.share) * (predicted == mixed.partners).float()).mean().item()


def _next_batch(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = next(run.batches)
    device = run.replicas.device
    images = images.to(device, non_blocking=True)
    if run.recipe.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def _gradient_sync(network: nn.Module, last: bool):
    """Where DDP averages the gradients: on a step's last micro-batch only (the sum of all
    of them); before it, `no_sync` lets the backward pass add up locally."""
    ddp = getattr(network, "_orig_mod", network)  # under torch.compile, the module inside
    if last or not isinstance(ddp, DistributedDataParallel):
        return contextlib.nullcontext()
    return ddp.no_sync()


def _stop_unless_finite(run: Run, value: float) -> None:
    """A non-finite loss on any replica stops every replica before its backward pass."""
    if broadcast_flag(not math.isfinite(value), run.replicas):
        shown = value if not math.isfinite(value) else "not finite on another replica"
        previous = latest_checkpoint(run.train_dir)
        raise LossNotFinite(
            f"loss is {shown} at step {run.step + 1}: training stopped; the last good "
            f"checkpoint is {previous or 'none (none was saved)'}. "
            "Lower --learning-rate or check the data"
        )


def after_step(run: Run) -> None:
    """What is due after a step: the log line, images, evaluation, a checkpoint."""
    recipe = run.recipe
    if run.due(recipe.log_every):
        log_window(run)
    if recipe.summary_every and (run.step % recipe.summary_every == 0 or run.step == 1):
        run.progress.log_images(run.step, run.last_images)
    evaluating = run.evaluates and run.due(recipe.eval_every)
    saving = run.due(recipe.save_every)
    if (evaluating or saving) and recipe.precise_bn:
        refresh_statistics(run)
    if evaluating:
        evaluate_now(run)
    if saving:
        save(run)


def refresh_statistics(run: Run) -> None:
    """Precise batch norm: the statistics of `precise_bn` training images under the current
    weights replace the moving averages, of the model and of its moving average of weights,
    so that what is evaluated and saved normalises as training does. The images are a
    function of the seed and the step, so a resumed run recomputes the same values."""
    recipe, replicas = run.recipe, run.replicas
    # Twice the training batch: a pass without gradients keeps no activations, so it fits
    # where training fits, and larger batches give better statistics (see batch_norm.py).
    share = split_batch(recipe.batch_size, replicas)
    size = 2 * share if 2 * recipe.batch_size <= run.data.train_examples else share
    batches = math.ceil(recipe.precise_bn / (size * replicas.world_size))

    def images():
        loader = _loader(
            run,
            "train",
            training=True,
            workers=0,
            batch_size=size,
            seed=step_seed(recipe.seed, run.step, 0),
        )
        for index, (pixels, _) in enumerate(loader):
            if index == batches:
                break
            pixels = pixels.to(replicas.device, non_blocking=True)
            if recipe.channels_last:
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            yield pixels

    def reduce(sums):
        return sum_across(sums, replicas)

    def forward_with(model):
        def forward(pixels):
            with autocast(run.precision, replicas.device):
                model(pixels)

        return forward

    recompute_statistics(run.model, images(), forward_with(run.model), reduce)
    if run.ema is not None:
        averaged = _eval_model(run)
        averaged.load_state_dict(run.ema.state_dict())
        for mine, theirs in zip(averaged.modules(), run.model.modules()):
            mine.train(theirs.training)  # frozen layers stay frozen
        recompute_statistics(averaged, images(), forward_with(averaged), reduce)
        averaged.eval()
        shadow = run.ema.state_dict()
        with torch.no_grad():
            for name, value in averaged.state_dict().items():
                if name.endswith(("running_mean", "running_var")):
                    shadow[name].copy_(value)


def log_window(run: Run) -> None:
    window = run.window
    sums = sum_across(window.sums, run.replicas)
    elapsed = time.perf_counter() - window.start
    run.last = {
        "step": run.step,
        "epoch": round(run.step / run.steps_per_epoch, 4),
        "loss": sums[0].item() / sums[2].item(),
        "lr": run.last_lr,
        "top1": sums[1].item() / sums[2].item(),
        "examples_per_sec": run.recipe.batch_size * run.recipe.accumulate * window.steps / elapsed,
        "sec_per_batch": elapsed / window.steps,
    }
    run.progress.log_step(run.last)
    warning = run.loss_watch.warning(run.last["loss"], run.last_lr)
    if warning:
        run.progress.say(warning)
    run.window = LogWindow()


def evaluate_now(run: Run) -> dict:
    """Validation precision of the weights evaluation uses (the moving averages when the run
    keeps them); a new best is saved apart, in TRAIN_DIR/best."""
    recipe = run.recipe
    weights = run.ema.state_dict() if run.ema is not None else run.model.state_dict()
    _eval_model(run).load_state_dict(weights)
    batches = _loader(run, "validation")
    result = evaluate(run.eval_model, batches, run.replicas, run.precision, recipe.channels_last)
    run.progress.log_eval(run.step, result)
    if run.best_top1 is None or result["top1"] > run.best_top1:
        run.best_top1 = result["top1"]  # the same sums on every replica: the same decision
        save(run, folder=BEST_DIR, keep=1, evaluation=result)
    return result


def _eval_model(run: Run) -> nn.Module:
    """A second copy of the network, built at the first use, for the averaged weights."""
    if run.eval_model is None:
        recipe = run.recipe
        run.eval_model = build_model(recipe, len(run.data.class_names), run.semantics)
        run.eval_model.to(run.replicas.device)
        if recipe.channels_last:
            run.eval_model.to(memory_format=torch.channels_last)
    return run.eval_model


def save(run: Run, folder: str = CHECKPOINTS_DIR, keep: int | None = None, evaluation=None) -> None:
    """A checkpoint of this step (every replica calls it: the log window is summed)."""
    log_sums = sum_across(run.window.sums, run.replicas)
    if not run.replicas.is_main:
        return
    recipe, data = run.recipe, run.data
    state = {
        "step": run.step,
        "log_window": log_sums.clone(),
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
        "data": {
            "epoch": run.step // run.steps_per_epoch,
            "batch": run.step % run.steps_per_epoch,
            "steps_per_epoch": run.steps_per_epoch,
        },
        "seed": recipe.seed,
    }
    if run.best_top1 is not None:
        state["best_top1"] = run.best_top1
    if run.class_weights is not None:
        state["class_weights"] = run.class_weights.tolist()
    if run.scaler is not None:
        state["grad_scaler"] = run.scaler.state_dict()
    meta = {
        "model": recipe.model,
        "model_kwargs": {k: v for k, v in run.model.config.items() if k != "model"},
        "class_names": data.class_names,
        "image_size": recipe.input_size,
        "recipe": recipe.to_dict(),
        "recipe_source": run.recipe_source,
        "world_size": run.replicas.world_size,
        "precision": run.precision,
    }
    if evaluation is not None:
        meta["evaluation"] = evaluation
    path = save_checkpoint(
        run.train_dir,
        run.step,
        run.model.state_dict(),
        state,
        meta,
        ema_state=run.ema.state_dict() if run.ema is not None else None,
        keep=keep or recipe.keep_checkpoints,
        folder=folder,
    )
    run.progress.say(f"saved {path}")


def finish(run: Run) -> None:
    if run.replicas.is_main:
        run.progress.say(f"curves: {draw_curves(run.train_dir)}")
