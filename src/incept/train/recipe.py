"""Recipes: every training hyper-parameter in one flat, named, documented set.

A recipe is a TOML file of `key = value` lines, each commented with where the value comes from.
Named recipes ship in `incept/train/recipes/`; `--recipe` also takes a path to a file of one's
own. Command-line flags override single keys. The trainer reads nothing that is not a field
here, so a recipe shows everything a run depends on.

`image_size` may be left out: the run then trains at the model's registered size (224 for
Inception-v1 and -v2, 299 for the others), as TF-Slim's train_image_classifier.py falls back on
the network's default_image_size when --train_image_size is not given.

Some keys only matter for one choice (the RMSProp keys for `optimizer = "rmsprop"`, the decay
keys for `lr_schedule = "exponential"`). Those are required exactly when they matter: a recipe
that picks AdamW must say its betas; nothing falls back to a value the file does not show.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from incept.errors import UserError
from incept.limits import MAX_IMAGE_SIZE, MAX_PIXELS, MIN_IMAGE_SIZE

RECIPES_DIR = Path(__file__).with_name("recipes")

OPTIMIZERS = ("rmsprop", "momentum", "adamw")
SCHEDULES = ("constant", "exponential", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTO_AUGMENT = ("", "ra", "ta_wide")  # incept.data.augment.POLICIES (this module needs no torch)


@dataclass(frozen=True)
class Recipe:
    # The model.
    model: str
    width: float
    min_depth: int
    aux_logits: bool
    dropout: float  # drop probability (the original's keep 0.8 is dropout 0.2)
    bn_decay: float  # TF's form: moving = decay * moving + (1 - decay) * batch
    precise_bn: int  # training images whose BN statistics are recomputed before each
    # evaluation and checkpoint (rounded up to whole batches); 0 keeps the moving averages
    # Data and length of the run.
    image_size: int | None = field(default=None, kw_only=True)  # None: the model's (input_size)
    batch_size: int  # global: split across replicas
    max_steps: int  # used when epochs is 0
    epochs: float  # when > 0, the run lasts this many passes over the training set
    workers: int
    seed: int
    # The loss.
    label_smoothing: float
    aux_weight: float
    weight_decay: float  # L2 term wd * sum(w^2) / 2 on conv and linear weights
    # The optimizer.
    optimizer: str
    learning_rate: float
    clip_grad_norm: float  # 0 switches clipping off
    # The learning-rate schedule.
    lr_schedule: str
    warmup_epochs: float
    # Moving average of the weights and BN statistics; 0 switches it off.
    ema_decay: float
    # Speed.
    precision: str
    channels_last: bool
    compile: bool
    sync_bn: bool
    # Checkpoints, evaluation, logging.
    save_every: int
    keep_checkpoints: int
    eval_every: int
    log_every: int
    summary_every: int
    # Transfer learning.
    init_from: str
    exclude: str  # comma-separated globs over parameter names
    trainable: str  # comma-separated globs; empty means everything trains
    freeze_bn: bool  # batch norm of layers that do not train keeps its moving statistics
    # Data faults: pass over records that cannot be read or decoded (each logged) instead of
    # stopping at the first; a training record is replaced by the next readable one.
    skip_corrupt: bool = field(default=False, kw_only=True)
    # The decompression-bomb limit (--max-image-pixels, the one every command has): a record
    # whose image header shows more pixels is refused as undecodable.
    max_image_pixels: int = field(default=MAX_PIXELS, kw_only=True)
    # The smallest random training crop, as a fraction of the image's area: the original's
    # 0.05 (image_processing.py, area_range) unless a recipe says otherwise.
    min_crop_area: float = field(default=0.05, kw_only=True)
    # Gradient accumulation: each step (one update, one schedule and moving-average step)
    # sums the gradients of this many consecutive batches of batch_size, the update of a
    # global batch of accumulate x batch_size; an epoch counts steps of that many images.
    # 1: off, as in every shipped recipe.
    accumulate: int = field(default=1, kw_only=True)
    # Class imbalance, both off in every shipped recipe. class_weights: "" (off), "balanced"
    # (n_total / (num_classes * n_c) from the training split's counts) or a file of one
    # weight a line in class order; each image's loss counts its class's weight.
    # balanced_sampler: each epoch draws its records with replacement, a class's records
    # with probability proportional to 1 / its count, so the classes come equally often.
    class_weights: str = field(default="", kw_only=True)
    balanced_sampler: bool = field(default=False, kw_only=True)
    # Mixup and CutMix on the training batch (timm's keys and meanings; see mixing.py), off
    # in every shipped recipe. mixup, cutmix: the alpha of Beta(alpha, alpha) that draws each
    # batch's share (0: off; timm's usual 0.8 and 1.0); mixup_prob: the chance that a batch is
    # mixed; mixup_switch_prob: with both on, the chance that it is CutMix.
    mixup: float = field(default=0.0, kw_only=True)
    cutmix: float = field(default=0.0, kw_only=True)
    mixup_prob: float = field(default=1.0, kw_only=True)
    mixup_switch_prob: float = field(default=0.5, kw_only=True)
    # Per-image augmentation beyond the original's (torchvision's reference-script names; see
    # incept/data/augment.py), off in every shipped recipe. auto_augment: "ra" (RandAugment:
    # ra_num_ops operations at magnitude bin ra_magnitude of 31), "ta_wide" (TrivialAugment
    # Wide) or "" (off); random_erase: the chance that an image has a rectangle erased.
    auto_augment: str = field(default="", kw_only=True)
    ra_num_ops: int = field(default=2, kw_only=True)
    ra_magnitude: int = field(default=9, kw_only=True)
    random_erase: float = field(default=0.0, kw_only=True)
    # Keys that matter for one optimizer or schedule only (see NEEDED_FOR).
    rmsprop_decay: float | None = None
    momentum: float | None = None
    epsilon: float | None = None
    adam_beta1: float | None = None
    adam_beta2: float | None = None
    adamw_decay: float | None = None
    lr_decay_factor: float | None = None
    lr_decay_epochs: float | None = None
    lr_staircase: bool | None = None
    lr_end: float | None = None

    @property
    def input_size(self) -> int:
        """The side the run trains at: image_size, or the model's registered default."""
        if self.image_size is not None:
            return self.image_size
        from incept.nets.registry import entry  # torch is imported only when a run needs it

        return entry(self.model).image_size

    def to_dict(self) -> dict:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    def with_overrides(self, **overrides) -> Recipe:
        """A copy with the given keys replaced (None values are ignored), validated."""
        changes = {key: value for key, value in overrides.items() if value is not None}
        unknown = sorted(set(changes) - set(_FIELD_TYPES))
        if unknown:
            raise UserError(f"unknown recipe key(s): {', '.join(unknown)}")
        # --max-steps and --epochs each replace the other: the last word on the length wins.
        if "max_steps" in changes and "epochs" not in changes:
            changes["epochs"] = 0.0
        if "epochs" in changes and "max_steps" not in changes:
            changes["max_steps"] = 0
        recipe = dataclasses.replace(self, **{k: _coerce(k, v) for k, v in changes.items()})
        recipe.validate()
        return recipe

    def validate(self) -> None:
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("auto_augment", self.auto_augment, AUTO_AUGMENT)
        for choice in (self.optimizer, self.lr_schedule):
            missing = [key for key in NEEDED_FOR.get(choice, ()) if getattr(self, key) is None]
            if missing:
                raise UserError(
                    f"recipe chooses {choice!r} but does not set {', '.join(missing)}: "
                    "add the key(s) to the recipe file"
                )
        for key, value in self.to_dict().items():
            problem = value_problem(key, value)
            if problem:
                raise UserError(f"{key} {problem}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise UserError("the run has no length: set max_steps or epochs (> 0)")


# Keys a choice needs; the others of this group are ignored for that choice.
NEEDED_FOR = {
    "rmsprop": ("rmsprop_decay", "momentum", "epsilon"),
    "momentum": ("momentum",),
    "adamw": ("adam_beta1", "adam_beta2", "epsilon", "adamw_decay"),
    "exponential": ("lr_decay_factor", "lr_decay_epochs", "lr_staircase"),
    "cosine": ("lr_end",),
}

_FIELD_TYPES = {
    item.name: item.type.split(" |")[0] for item in dataclasses.fields(Recipe)
}  # "float", "int", "bool" or "str" (annotations are strings under `from __future__`)


@dataclass(frozen=True)
class Bounds:
    """The values a numeric key may take: low..high, either end excluded when `open`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False  # nan compares false with everything; inf is no usable setting
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None:
            return value < self.high if self.high_open else value <= self.high
        return True

    def __str__(self) -> str:
        if self.high is None:
            return f"{'above' if self.low_open else 'at least'} {self.low}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low}, {self.high}{right}"


_FRACTION = Bounds(0, 1, high_open=True)  # probabilities and decays: 1 would never move
_POSITIVE = Bounds(0, low_open=True)
_NON_NEGATIVE = Bounds(0)
_COUNT = Bounds(1)

# Every numeric key's range, the one check shared by recipe files and flags (whose types
# call `value_problem`). Upper limits exist where a larger value could only exhaust memory
# or processes.
RANGES = {
    "width": Bounds(0, 16, low_open=True),
    "min_depth": Bounds(1, 2**16),
    "dropout": _FRACTION,
    "bn_decay": Bounds(0, 1, low_open=True, high_open=True),
    "precise_bn": _NON_NEGATIVE,
    "image_size": Bounds(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
    # Batch norm normalises over the batch: one image per step leaves it nothing to average
    # (PyTorch stops at the first step), so a batch holds two at least.
    "batch_size": Bounds(2),
    "max_steps": _NON_NEGATIVE,
    "epochs": _NON_NEGATIVE,
    "workers": Bounds(0, 1024),
    "seed": Bounds(0, 2**63 - 1),
    "label_smoothing": _FRACTION,
    "aux_weight": _NON_NEGATIVE,
    "weight_decay": _NON_NEGATIVE,
    "learning_rate": _POSITIVE,
    "clip_grad_norm": _NON_NEGATIVE,
    "warmup_epochs": _NON_NEGATIVE,
    "ema_decay": _FRACTION,
    "save_every": _COUNT,
    "keep_checkpoints": _COUNT,
    "eval_every": _NON_NEGATIVE,
    "log_every": _COUNT,
    "summary_every": _NON_NEGATIVE,
    "rmsprop_decay": _FRACTION,
    "momentum": _FRACTION,
    "epsilon": _POSITIVE,
    "adam_beta1": _FRACTION,
    "adam_beta2": _FRACTION,
    "adamw_decay": _NON_NEGATIVE,
    "lr_decay_factor": _POSITIVE,
    "lr_decay_epochs": _POSITIVE,
    "lr_end": _NON_NEGATIVE,
    "max_image_pixels": Bounds(1, MAX_PIXELS),
    "min_crop_area": Bounds(0.01, 1.0),
    "accumulate": _COUNT,
    "mixup": Bounds(0, 100),
    "cutmix": Bounds(0, 100),
    "mixup_prob": Bounds(0, 1),
    "mixup_switch_prob": Bounds(0, 1),
    "ra_num_ops": Bounds(1, 16),
    "ra_magnitude": Bounds(0, 30),
    "random_erase": Bounds(0, 1),
}
# What a range means, where its reason is not plain.
_NOTES = {
    "batch_size": " (batch norm needs two images a step to normalise over)",
    "eval_every": " (0: off)",
    "precise_bn": " (images; 0: off)",
    "summary_every": " (0: off)",
    "ema_decay": " (0: off)",
    "clip_grad_norm": " (0: off)",
    "max_steps": " (0: the length is epochs)",
    "epochs": " (0: the length is max_steps)",
    "max_image_pixels": " (Pillow's own limit is the most)",
    "min_crop_area": " (a fraction of the image's area)",
    "accumulate": " (batches summed into one update; 1: off)",
    "mixup": " (the alpha of Beta(alpha, alpha); 0: off)",
    "cutmix": " (the alpha of Beta(alpha, alpha); 0: off)",
    "ra_magnitude": " (a bin of 31)",
    "random_erase": " (a probability; 0: off)",
}


def value_problem(key: str, value) -> str | None:
    """What is wrong with `value` for a numeric recipe key ("must be ..., got ..."), or None
    when it is in range (or the key has no range)."""
    bounds = RANGES.get(key)
    if bounds is None or isinstance(value, bool) or value in bounds:
        return None
    return f"must be {bounds}{_NOTES.get(key, '')}, got {value!r}"


def _coerce(key: str, value):
    kind = _FIELD_TYPES[key]
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = {"float": float, "int": int, "bool": bool, "str": str}[kind]
    if not isinstance(value, expected) or (kind == "int" and isinstance(value, bool)):
        raise UserError(f"recipe key {key} must be a {kind}, got {value!r}")
    return value


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        named = ", ".join(choice or "'' (off)" for choice in choices)
        raise UserError(f"{key} must be one of {named}; got {value!r}")


def recipe_names() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.toml"))


def recipe_path(name_or_path: str) -> Path:
    """The file a `--recipe` value means: a shipped recipe's name, or a path to a .toml."""
    if name_or_path in recipe_names():
        return RECIPES_DIR / f"{name_or_path}.toml"
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        return path
    raise UserError(
        f"no recipe {name_or_path!r}: give one of {', '.join(recipe_names())} "
        "or the path of a .toml file"
    )


def load_recipe(name_or_path: str) -> Recipe:
    path = recipe_path(name_or_path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"recipe {path} is not valid TOML: {error}") from None
    return recipe_from_dict(values, source=str(path))


def recipe_from_dict(values: dict, source: str = "recipe") -> Recipe:
    unknown = sorted(set(values) - set(_FIELD_TYPES))
    if unknown:
        raise UserError(f"{source}: unknown key(s) {', '.join(unknown)}")
    required = [f.name for f in dataclasses.fields(Recipe) if f.default is dataclasses.MISSING]
    missing = [key for key in required if key not in values]
    if missing:
        raise UserError(f"{source}: missing key(s) {', '.join(missing)}")
    recipe = Recipe(**{key: _coerce(key, value) for key, value in values.items()})
    try:
        recipe.validate()
    except UserError as error:
        raise UserError(f"{source}: {error}") from None
    return recipe
