"""`incept train`: the training loop, top to bottom.

One call of `train()` is one run: join the replicas, settle the recipe (resuming from the train
dir's checkpoint when it has one), build the data, the model and the optimizer, then step until
`max_steps`. Each step: forward under autocast, cross entropy with label smoothing on the main
and aux heads plus the L2 term, backward (DDP averages the gradients of all replicas), optional
clipping, the update, the moving average. The first replica logs, evaluates on request and
writes checkpoints; a non-finite loss stops the run before it touches the weights.

Exact resume: everything random in a step is drawn from generators seeded by (seed, step,
replica), the data order and distortions are functions of (seed, epoch, position), and the
learning rate is a function of the step. So a run killed at any moment and started again with
the same command redoes the steps after its last checkpoint exactly as the first time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from incept import nets
from incept.data import make_loader, open_source
from incept.errors import UserError
from incept.evaluate import evaluate
from incept.train.curves import draw_curves
from incept.train.distributed import (
    Replicas,
    broadcast_flag,
    convert_to_sync_batch_norm,
    same_everywhere,
    split_batch,
    start_replicas,
    stop_replicas,
    sum_across,
)
from incept.train.ema import ExponentialMovingAverage
from incept.train.optim import (
    LearningRateSchedule,
    build_optimizer,
    clip_gradients,
    decayed_weights,
    l2_penalty,
)
from incept.train.precision import autocast, grad_scaler, resolve_precision
from incept.train.progress import Progress
from incept.train.recipe import Recipe, recipe_from_dict
from incept.train.transfer import (
    freeze_batch_norm_of_frozen_layers,
    initialise_from,
    restrict_training,
    source_semantics,
    split_globs,
)
from incept.weights.checkpoint import (
    latest_checkpoint,
    read_checkpoint,
    read_meta,
    save_checkpoint,
)

# Keys a resumed run may change: they decide how long and how loudly it runs, not what it
# computes (skip_corrupt: a run stopped by a damaged record goes on past it). Any other key
# given on the command line must agree with the checkpoint.
RESUMABLE_KEYS = {
    "max_steps",
    "epochs",
    "workers",
    "save_every",
    "keep_checkpoints",
    "eval_every",
    "log_every",
    "summary_every",
    "compile",
    "precision",
    "skip_corrupt",
}


class LossNotFinite(UserError):
    """The loss became NaN or infinite; the run stopped before applying that step."""


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of one replica's step: dropout draws the same masks in a resumed run."""
    return (seed * 1_000_003 + step * 4_099 + rank) % (2**63)


@dataclass
class Data:
    class_names: list[str]
    train_examples: int
    steps_per_epoch: int


def resolve_recipe(
    train_dir: Path, command_recipe: Recipe, given_keys: set[str], class_names: list[str]
) -> tuple[Recipe, Path | None]:
    """The recipe this run follows, and the checkpoint it resumes from (None: a fresh run).

    A fresh run follows the command's recipe. A resumed one follows the checkpoint's, with
    the RESUMABLE_KEYS the command gives; any other key given that disagrees stops the run.
    """
    checkpoint = latest_checkpoint(train_dir)
    if checkpoint is None:
        return command_recipe, None
    meta = read_meta(checkpoint)
    stored = recipe_from_dict(meta["recipe"], source=str(checkpoint / "meta.json"))
    stored_values, command_values = _effective(stored), _effective(command_recipe)
    conflicts = [
        f"{key} {stored_values.get(key)!r} (checkpoint) vs {command_values.get(key)!r}"
        for key in sorted(given_keys - RESUMABLE_KEYS)
        if stored_values.get(key) != command_values.get(key)
    ]
    if meta["class_names"] != class_names:
        conflicts.append(
            f"classes {len(meta['class_names'])} (checkpoint) vs {len(class_names)} (--data)"
        )
    if conflicts:
        raise UserError(
            f"{train_dir} holds a checkpoint (step {meta['step']}) made with other settings: "
            f"{'; '.join(conflicts)}. Drop those flags to resume, or use a new --train-dir"
        )
    overrides = {key: command_values.get(key) for key in given_keys & RESUMABLE_KEYS}
    return stored.with_overrides(**overrides), checkpoint


def _effective(recipe: Recipe) -> dict:
    """The recipe's values as a run uses them: a size left to the model is the model's."""
    return {**recipe.to_dict(), "image_size": recipe.input_size}


def open_data(data_dir: str, recipe: Recipe) -> Data:
    train = open_source(data_dir, "train")
    steps_per_epoch = len(train) // recipe.batch_size
    if steps_per_epoch == 0:
        raise UserError(
            f"{data_dir} has {len(train)} training examples, fewer than one batch "
            f"of {recipe.batch_size}: lower --batch-size"
        )
    return Data(list(train.classes), len(train), steps_per_epoch)


def _loader_device(replicas: Replicas) -> torch.device | None:
    # On an accelerator the loader finishes each batch there (colour distortion, scaling).
    return replicas.device if replicas.device.type == "cuda" else None


def training_batches(data_dir: str, recipe: Recipe, replicas: Replicas, data: Data, step: int):
    """The batches from `step` on, forever: each replica its share of every global batch."""
    loader = make_loader(
        data_dir,
        subset="train",
        training=True,
        batch_size=split_batch(recipe.batch_size, replicas),
        image_size=recipe.input_size,
        workers=recipe.workers,
        seed=recipe.seed,
        epoch=step // data.steps_per_epoch,
        start_batch=step % data.steps_per_epoch,
        device=_loader_device(replicas),
        skip_corrupt=recipe.skip_corrupt,
    )
    while True:
        yield from loader  # each full pass moves the loader on to the next epoch


def evaluation_batches(data_dir: str, recipe: Recipe, replicas: Replicas):
    return make_loader(
        data_dir,
        subset="validation",
        training=False,
        batch_size=split_batch(recipe.batch_size, replicas),
        image_size=recipe.input_size,
        workers=recipe.workers,
        device=_loader_device(replicas),
        skip_corrupt=recipe.skip_corrupt,
    )


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


def compute_loss(
    outputs, labels: torch.Tensor, recipe: Recipe
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross entropy with label smoothing on the main head, plus aux_weight times the aux
    head's; returns (loss, main logits)."""
    logits, aux_logits = outputs if isinstance(outputs, tuple) else (outputs, None)
    logits = logits.float()
    loss = F.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing)
    if aux_logits is not None:
        aux_loss = F.cross_entropy(
            aux_logits.float(), labels, label_smoothing=recipe.label_smoothing
        )
        loss = loss + recipe.aux_weight * aux_loss
    return loss, logits


def train(
    data_dir: str,
    train_dir: str | Path,
    recipe: Recipe,
    given_keys: set[str] | frozenset[str] = frozenset(),
    recipe_source: str = "",
) -> dict:
    """Runs (or resumes) training; returns the last logged metrics."""
    replicas = start_replicas()
    try:
        return _train(data_dir, Path(train_dir), recipe, set(given_keys), recipe_source, replicas)
    finally:
        stop_replicas(replicas)


def _train(
    data_dir: str,
    train_dir: Path,
    command_recipe: Recipe,
    given_keys: set[str],
    recipe_source: str,
    replicas: Replicas,
) -> dict:
    data = open_data(data_dir, command_recipe)
    recipe, resume_from = resolve_recipe(train_dir, command_recipe, given_keys, data.class_names)
    data = open_data(data_dir, recipe)  # the checkpoint's batch size may differ from the flags'
    checkpoint = read_checkpoint(resume_from) if resume_from else None
    max_steps = recipe.max_steps
    if recipe.epochs > 0:
        max_steps = math.ceil(recipe.epochs * data.steps_per_epoch)
    if replicas.is_main:
        train_dir.mkdir(parents=True, exist_ok=True)
    start_step = checkpoint.state["step"] if checkpoint else 0
    if not same_everywhere(start_step, replicas):
        raise UserError(
            f"the replicas found different checkpoints in {train_dir}: put the train dir on "
            "storage that every machine shares"
        )
    progress = Progress(train_dir, start_step, max_steps, enabled=replicas.is_main)
    try:
        return _run(
            data_dir, train_dir, recipe, recipe_source, checkpoint, data, max_steps, replicas,
            progress,
        )  # fmt: skip
    finally:
        progress.close()


def _run(
    data_dir, train_dir, recipe, recipe_source, checkpoint, data, max_steps, replicas, progress,
) -> dict:  # fmt: skip
    say = progress.say
    device = replicas.device
    precision = resolve_precision(recipe.precision, device)
    semantics = (
        checkpoint.meta["model_kwargs"]["semantics"]
        if checkpoint
        else source_semantics(recipe.init_from)
    )

    torch.manual_seed(recipe.seed)  # the same initial weights on every replica
    model = build_model(recipe, len(data.class_names), semantics)
    if checkpoint is None and recipe.init_from:
        initialise_from(model, recipe.init_from, split_globs(recipe.exclude), say)
    restrict_training(model, split_globs(recipe.trainable), say)
    if checkpoint is not None:
        model.load_state_dict(checkpoint.model)
    model.to(device)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    if recipe.sync_bn and replicas.distributed:
        model = convert_to_sync_batch_norm(model, replicas)

    trainable = [p for p in model.parameters() if p.requires_grad]
    decayed = decayed_weights(model)
    optimizer = build_optimizer(recipe, trainable)
    schedule = LearningRateSchedule.from_recipe(recipe, data.steps_per_epoch, max_steps)
    scaler = grad_scaler(precision, device)
    ema = ExponentialMovingAverage(model, recipe.ema_decay) if recipe.ema_decay > 0 else None
    step = 0
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint.state["optimizer"])
        if scaler is not None and "grad_scaler" in checkpoint.state:
            scaler.load_state_dict(checkpoint.state["grad_scaler"])
        if ema is not None and checkpoint.ema is not None:
            ema.load_state_dict(checkpoint.ema)
        step = checkpoint.state["step"]
        say(f"resuming from {checkpoint.path} at step {step}")

    network = model
    if replicas.distributed:
        network = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True,  # no second copy of the gradients
        )
    if recipe.compile:
        network = torch.compile(network)

    say(
        f"training {recipe.model} (width {recipe.width}) on {data.train_examples} examples, "
        f"{len(data.class_names)} classes; {replicas.world_size} replica(s), global batch "
        f"{recipe.batch_size}, {precision}, {'channels_last' if recipe.channels_last else 'NCHW'}"
        f"; steps {step} -> {max_steps} ({data.steps_per_epoch} a epoch)"
    )

    def save(at_step: int, log_window: torch.Tensor) -> None:
        # The open logging window (loss, top-1 and step sums since the last log line, all
        # replicas), so that a resumed run logs the same averages.
        log_window = sum_across(log_window, replicas)
        if not replicas.is_main:
            return
        state = {
            "step": at_step,
            "log_window": log_window.clone(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "data": {
                "epoch": at_step // data.steps_per_epoch,
                "batch": at_step % data.steps_per_epoch,
                "steps_per_epoch": data.steps_per_epoch,
            },
            "seed": recipe.seed,
        }
        if scaler is not None:
            state["grad_scaler"] = scaler.state_dict()
        meta = {
            "model": recipe.model,
            "model_kwargs": {k: v for k, v in model.config.items() if k != "model"},
            "class_names": data.class_names,
            "image_size": recipe.input_size,
            "recipe": recipe.to_dict(),
            "recipe_source": recipe_source,
            "world_size": replicas.world_size,
            "precision": precision,
        }
        path = save_checkpoint(
            train_dir,
            at_step,
            model.state_dict(),
            state,
            meta,
            ema_state=ema.state_dict() if ema is not None else None,
            keep=recipe.keep_checkpoints,
        )
        say(f"saved {path}")

    eval_model = None

    def run_evaluation(at_step: int) -> None:
        nonlocal eval_model
        if eval_model is None:
            eval_model = build_model(recipe, len(data.class_names), semantics).to(device)
            if recipe.channels_last:
                eval_model.to(memory_format=torch.channels_last)
        eval_model.load_state_dict(ema.state_dict() if ema is not None else model.state_dict())
        batches = evaluation_batches(data_dir, recipe, replicas)
        result = evaluate(eval_model, batches, replicas, precision, recipe.channels_last)
        progress.log_eval(at_step, result)

    last = {}
    batches = training_batches(data_dir, recipe, replicas, data, step)
    window_start, window_steps, window_sums = time.perf_counter(), 0, torch.zeros(3)
    if checkpoint is not None and replicas.is_main and "log_window" in checkpoint.state:
        window_sums = checkpoint.state["log_window"].clone()  # sums over all replicas: once
    network.train()
    if recipe.freeze_bn:
        freeze_batch_norm_of_frozen_layers(network)
    while step < max_steps:
        images, labels = next(batches)
        images = images.to(device, non_blocking=True)
        if recipe.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        torch.manual_seed(step_seed(recipe.seed, step, replicas.rank))
        lr = schedule.apply(optimizer, step)

        with autocast(precision, device):
            outputs = network(images)
        loss, logits = compute_loss(outputs, labels, recipe)
        total_loss = loss + l2_penalty(decayed, recipe.weight_decay)
        value = total_loss.item()
        if broadcast_flag(not math.isfinite(value), replicas):
            shown = value if not math.isfinite(value) else "not finite on another replica"
            previous = latest_checkpoint(train_dir)
            raise LossNotFinite(
                f"loss is {shown} at step {step + 1}: training stopped; the last good "
                f"checkpoint is {previous or 'none (none was saved)'}. "
                "Lower --learning-rate or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total_loss).backward()
            scaler.unscale_(optimizer)
            clip_gradients(trainable, recipe.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            total_loss.backward()
            clip_gradients(trainable, recipe.clip_grad_norm)
            optimizer.step()
        if ema is not None:
            ema.update(model, step)
        step += 1

        with torch.no_grad():
            top1 = (logits.argmax(dim=1) == labels).float().mean()
        window_sums += torch.tensor([value, top1.item(), 1.0])
        window_steps += 1
        progress.advance(step)
        if step % recipe.log_every == 0 or step == max_steps:
            sums = sum_across(window_sums, replicas)
            elapsed = time.perf_counter() - window_start
            last = {
                "step": step,
                "epoch": round(step / data.steps_per_epoch, 4),
                "loss": sums[0].item() / sums[2].item(),
                "lr": lr,
                "top1": sums[1].item() / sums[2].item(),
                "examples_per_sec": recipe.batch_size * window_steps / elapsed,
                "sec_per_batch": elapsed / window_steps,
            }
            progress.log_step(last)
            window_start, window_steps, window_sums = time.perf_counter(), 0, torch.zeros(3)
        if recipe.summary_every and (step % recipe.summary_every == 0 or step == 1):
            progress.log_images(step, images)
        if recipe.eval_every and (step % recipe.eval_every == 0 or step == max_steps):
            run_evaluation(step)
            network.train()
            if recipe.freeze_bn:
                freeze_batch_norm_of_frozen_layers(network)
        if step % recipe.save_every == 0 or step == max_steps:
            save(step, window_sums)
    if replicas.is_main:
        say(f"curves: {draw_curves(train_dir)}")
    return last
