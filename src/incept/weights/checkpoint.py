"""Our checkpoints: one directory per saved step, written so that a crash never leaves a broken one.

    TRAIN_DIR/checkpoints/step-00001234/
        model.safetensors   the weights and BN statistics (the model's state_dict)
        ema.safetensors     their moving averages, when the run keeps them
        state.pt            optimizer, schedule, step, random states, data position
                            (plain tensors and containers: torch.load(weights_only=True) reads it)
        meta.json           model name and constructor arguments, class names, image size,
                            the recipe, the step: enough to rebuild the model without the run
    TRAIN_DIR/best/step-00000900/
        the same files: the checkpoint with the best validation precision so far (its meta.json
        adds the evaluation), kept apart from the rolling ones

A checkpoint is written into a hidden temporary directory beside the others, every file and the
directory are flushed to disk, and only then is it renamed to its final name. A directory named
`step-*` is therefore always complete; leftovers of a crash keep their temporary name and are
removed at the next save.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors

from incept.errors import UserError
from incept.files import fsync_file, fsync_folder

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
FORMAT = "incept-checkpoint"
_PREFIX = "step-"
_TEMPORARY_PREFIX = ".partial-"


def checkpoint_dir_name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors stores plain row-major data; channels_last weights are copied out of it.
    return {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    # safetensors' save_file creates its file 0600 whatever the umask; a plain write lets the
    # umask decide, as for the other files of the checkpoint.
    path.write_bytes(save_tensors(_contiguous(tensors)))


def save_checkpoint(
    train_dir: str | os.PathLike,
    step: int,
    model_state: dict[str, torch.Tensor],
    training_state: dict,
    meta: dict,
    ema_state: dict[str, torch.Tensor] | None = None,
    keep: int = 5,
    folder: str = CHECKPOINTS_DIR,
) -> Path:
    """Writes the checkpoint of `step` atomically into TRAIN_DIR/`folder`, then keeps only the
    newest `keep` there."""
    root = Path(train_dir) / folder
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_dir_name(step)
    temporary = root / f"{_TEMPORARY_PREFIX}{final.name}-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()

    meta = {"format": FORMAT, **meta, "step": step, "ema": ema_state is not None}
    try:
        _write_tensors(temporary / MODEL_FILE, model_state)
        if ema_state is not None:
            _write_tensors(temporary / EMA_FILE, ema_state)
        torch.save(training_state, temporary / STATE_FILE)
        (temporary / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for file in temporary.iterdir():
            fsync_file(file)
        fsync_folder(temporary)
    except (OSError, RuntimeError, SafetensorError) as error:  # a full disk, a file size limit
        shutil.rmtree(temporary, ignore_errors=True)
        reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[0]
        raise UserError(
            f"cannot write checkpoint {final}: {reason}; the last complete one is "
            f"{latest_checkpoint(train_dir) or 'none'}: free space, then run the same command "
            "to resume"
        ) from None

    if final.exists():
        # The same step saved again (a resumed run ending where it started): swap it out.
        replaced = root / f"{_TEMPORARY_PREFIX}replaced-{final.name}-{os.getpid()}"
        os.rename(final, replaced)
        os.rename(temporary, final)
        shutil.rmtree(replaced)
    else:
        os.rename(temporary, final)
    fsync_folder(root)
    _remove_old(root, keep)
    return final


def _remove_old(root: Path, keep: int) -> None:
    for stale in root.glob(f"{_TEMPORARY_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in list_checkpoints(root.parent, root.name)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(train_dir: str | os.PathLike, folder: str = CHECKPOINTS_DIR) -> list[Path]:
    """The complete checkpoints of a train dir (or of its best/ folder), oldest first."""
    root = Path(train_dir) / folder
    if not root.is_dir():
        return []
    found = []
    for path in root.glob(f"{_PREFIX}*"):
        digits = path.name[len(_PREFIX) :]
        if digits.isdigit() and (path / META_FILE).is_file():
            found.append((int(digits), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(train_dir: str | os.PathLike, folder: str = CHECKPOINTS_DIR) -> Path | None:
    checkpoints = list_checkpoints(train_dir, folder)
    return checkpoints[-1] if checkpoints else None


def is_checkpoint_source(path: str | os.PathLike) -> bool:
    """Whether `path` is one of ours: a checkpoint dir, a file in one, or a train dir with one."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    return (path / META_FILE).is_file() or latest_checkpoint(path) is not None


def resolve_checkpoint(path: str | os.PathLike, best: bool = False) -> Path:
    """The checkpoint directory `path` means: itself, the one holding a file, or a train dir's
    latest (with `best`: the train dir's best by validation precision)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no such checkpoint or train dir: {path}")
    if path.is_file():
        path = path.parent
    if best:
        found = latest_checkpoint(path, BEST_DIR)
        if found is None:
            raise UserError(
                f"{path} holds no best checkpoint ({BEST_DIR}/step-*/): it is kept by runs that "
                "evaluate while training (--eval-every N with a validation split); drop --best"
            )
        return found
    if (path / META_FILE).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise UserError(f"{path} holds no checkpoint (expected {CHECKPOINTS_DIR}/step-*/)")
    return latest


def read_meta(path: str | os.PathLike) -> dict:
    checkpoint = resolve_checkpoint(path)
    try:
        meta = json.loads((checkpoint / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {checkpoint / META_FILE}: {error}") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{checkpoint / META_FILE} is not an incept checkpoint description")
    return meta


class DamagedCheckpoint(UserError):
    """A file of a checkpoint cannot be read back (truncated or overwritten after it was
    saved: a disk fault, a copy cut short)."""


def _load(file: Path, loader):
    """`loader(file)`, any failure of it told as the damaged file and the checkpoint before."""
    try:
        return loader(file)
    except Exception as error:  # safetensors, zip, unpickling and I/O errors alike
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        previous = _complete_before(file.parent)
        advice = "there is no complete checkpoint before it"
        if previous:
            advice = f"the previous complete checkpoint is {previous} (name it to use it)"
        damaged = DamagedCheckpoint(f"{file} is damaged ({reason}); {advice}")
        damaged.summary = f"{file} is damaged ({reason})"
        raise damaged from None


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    return _load(file, load_file)


def _load_state(file: Path) -> dict:
    return _load(file, lambda f: torch.load(f, map_location="cpu", weights_only=True))


def _readable(checkpoint: Path) -> bool:
    """Whether every file of a checkpoint reads back."""
    try:
        load_file(checkpoint / MODEL_FILE)
        if (checkpoint / EMA_FILE).is_file():
            load_file(checkpoint / EMA_FILE)
        torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return True


def _complete_before(checkpoint: Path) -> Path | None:
    """The newest checkpoint of the same folder older than `checkpoint` whose files all read."""
    older = [
        path
        for path in list_checkpoints(checkpoint.parent.parent, checkpoint.parent.name)
        if path.name < checkpoint.name
    ]
    return next((path for path in reversed(older) if _readable(path)), None)


def read_model_weights(path: str | os.PathLike, ema: bool = True) -> dict[str, torch.Tensor]:
    """The model's state_dict from a checkpoint: the moving averages when it has them and `ema`
    is true, the raw weights otherwise."""
    checkpoint = resolve_checkpoint(path)
    file = checkpoint / EMA_FILE
    if not (ema and file.is_file()):
        file = checkpoint / MODEL_FILE
    return _load_tensors(file)


def read_training_state(path: str | os.PathLike) -> dict:
    return _load_state(resolve_checkpoint(path) / STATE_FILE)


@dataclass
class Checkpoint:
    path: Path
    meta: dict
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict
    damaged: str | None = None  # read instead of a newer, damaged one: what was wrong with it


def read_checkpoint(path: str | os.PathLike, fall_back: bool = False) -> Checkpoint:
    """Everything in a checkpoint (a train dir means its latest). With `fall_back`, a damaged
    one gives way to the newest complete one before it (its `damaged` says why)."""
    checkpoint = resolve_checkpoint(path)
    try:
        ema_file = checkpoint / EMA_FILE
        return Checkpoint(
            path=checkpoint,
            meta=read_meta(checkpoint),
            model=_load_tensors(checkpoint / MODEL_FILE),
            ema=_load_tensors(ema_file) if ema_file.is_file() else None,
            state=read_training_state(checkpoint),
        )
    except DamagedCheckpoint as error:
        previous = _complete_before(checkpoint) if fall_back else None
        if previous is None:
            raise
        found = read_checkpoint(previous)
        found.damaged = f"{error.summary}: resuming from {previous} instead"
        return found
