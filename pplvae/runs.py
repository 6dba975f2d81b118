"""A run folder: its file names, atomic writes, safe loading, the writer's lock and :func:`load_run`.

A run folder holds ``config.json``, ``checkpoint.pt``, ``metrics.csv`` and
pictures. Every file is written atomically (a temporary file in the same
folder, renamed over the old one), with the permissions the umask gives.
Checkpoints are loaded with ``torch.load(weights_only=True)``: only tensors
and plain Python types, so a checkpoint from someone else cannot run code.
One process at a time writes a run: :func:`run_lock` holds an exclusive
``fcntl.flock`` on ``RUN/.lock`` for the whole run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import logging
import os
import pickle
import random
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from pplvae.data import ImageData, load_dataset
from pplvae.models import MODELS, build_model

logger = logging.getLogger(__name__)

# The files of a run folder. fit writes the first three; the commands add the others.
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
CONFIG = "config.json"
LOCK = ".lock"
RUN_FILES = (CHECKPOINT, METRICS, CONFIG)
SAMPLES = "samples.png"  # means of p(x | z), z ~ p(z)
RECONSTRUCTIONS = "reconstructions.png"  # test images above their reconstructions
ELBO_CURVES = "elbo.png"  # train and test ELBO per epoch
CLASS_SAMPLES = "class_samples.png"  # a conditional model's samples, one row per class
MANIFOLD = "manifold.png"  # a 2-D latent space's decoded grid
LATENT_MEANS = "latent_means.png"  # the guide's means of the test images, by label
EVALUATION = "evaluation.csv"  # pplvae evaluate (importance sampling)
EVALUATION_AIS = "evaluation-ais.csv"  # pplvae evaluate --estimator ais
BURDA_RESULTS = "burda.csv"  # pplvae reproduce burda
CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "history", "rng")  # what resuming needs


class RunError(Exception):
    """A run folder cannot be used as asked; the message names the file and the fix."""


class CheckpointError(RunError, ValueError):
    """A file is not a pplvae checkpoint: truncated, garbage, unsafe to load, or missing keys."""


class RunLockedError(RunError):
    """Another live process holds the run folder's lock."""


# ---------------------------------------------------------------- atomic writes


def _file_mode() -> int:
    """0o666 less the process umask: the mode ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path``.

    The temporary file (``.NAME.XXXX.tmp``) sits in the same folder, so the
    rename is atomic on POSIX: readers see the old file or the new one, never
    half a file. The new file gets the mode the umask gives (as ``open()``
    would). On an error (or Ctrl-C) the temporary file is removed and
    ``path`` is left as it was; one left by a kill -9 is removed by the next
    :func:`run_lock` of the folder.

    Raises:
        OSError: the folder cannot be written (read-only, no space left...);
            the message names ``path`` and the reason, e.g. "No space left on device".
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise OSError(error.errno, f"cannot write {path}: {error.strerror}") from error
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except OSError as error:
        _remove(tmp)
        raise OSError(error.errno, f"cannot write {path}: {error.strerror or error}; the previous "
                                   f"file, if any, is kept") from error
    except BaseException:
        _remove(tmp)
        raise
    return path


def _remove(path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` with ``torch.save``, atomically.

    ``state`` may hold only what ``torch.load(weights_only=True)`` reads back:
    tensors, dicts, lists, tuples, str, int, float, bool and None (RNG states
    in the form of :func:`get_rng_state`). It is serialized in memory first,
    so a full disk raises ``OSError`` (ENOSPC) and leaves the previous file.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", keys: Iterable[str] = ()
) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True``.

    Args:
        path: the ``checkpoint.pt`` file.
        map_location: device for its tensors.
        keys: keys the checkpoint must have (e.g. :data:`CHECKPOINT_KEYS` to resume).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        CheckpointError: the file is empty, truncated, not a torch file, holds
            Python objects other than tensors and plain types (which could run
            code when unpickled; never loaded), or lacks one of ``keys``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}; train first with `pplvae train --out {path.parent}`.")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols of garbage files
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if unsafe:
            raise CheckpointError(
                f"{path} holds Python objects other than tensors and plain types ({unsafe.group(1)}); it was "
                f"not loaded, since unpickling them could run code. Use only checkpoints written by pplvae."
            ) from error
        raise CheckpointError(f"{path} is not a readable checkpoint: damaged or not written by torch.save "
                              f"(the weights-only unpickler stopped at an unknown instruction).") from error
    except PermissionError:
        raise
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, UnicodeDecodeError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a readable checkpoint: empty, truncated or not written by torch.save "
            f"({_first_line(error)})."
        ) from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a pplvae checkpoint: it holds a {type(state).__name__}, not a dict.")
    missing = [key for key in keys if key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a pplvae checkpoint: it lacks {', '.join(missing)}.")
    return state


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def save_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def save_csv(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """Write a pandas table as CSV (no index), atomically."""
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


# ---------------------------------------------------------------- RNG states as plain types


def get_rng_state() -> dict:
    """torch's, Python's and NumPy's RNG states as tensors and plain types (``weights_only``-safe).

    The inverse of :func:`set_rng_state`; ``pyro.util.get_rng_state`` holds
    a tuple with an ndarray, which ``weights_only`` loading refuses.
    """
    version, state, gauss = random.getstate()
    algorithm, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"algorithm": algorithm, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }


def set_rng_state(state: dict) -> None:
    """Restore RNG states saved by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["algorithm"], numpy["keys"].cpu().numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))


# ---------------------------------------------------------------- the lock

_HELD: dict[Path, list] = {}  # run folder -> [fd, depth], locks this process holds


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive writer's lock of ``run_dir`` (created if missing) inside the ``with``.

    Takes ``fcntl.flock`` on ``RUN/.lock`` and writes this process's pid into
    it. The kernel drops the lock when its holder dies, so a lock file left by
    a killed process is stale and taken over (with a log message). Holding the
    lock, temporary files of an interrupted atomic write (``.*.tmp``) are
    removed. Re-entrant within a process (``pplvae train`` holds it around
    :func:`pplvae.fit`, which takes it too).

    Raises:
        RunLockedError: another live process holds the lock; the message gives its pid.
        OSError: the folder cannot be created or written.
    """
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield run_dir
        finally:
            _HELD[key][1] -= 1
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, _file_mode())
    except OSError as error:
        raise OSError(error.errno, f"cannot write the run folder {run_dir}: {error.strerror}") from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise RunLockedError(
                f"{run_dir} is being written by another process (pid {owner}, in {run_dir / LOCK}); "
                f"wait for it to finish or choose another folder."
            ) from None
        raise
    previous = os.pread(fd, 64, 0).decode(errors="replace").strip()
    if previous:
        logger.warning("%s: taking over the stale lock of process %s, which is no longer running", run_dir, previous)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = [fd, 1]
    try:
        for leftover in run_dir.glob(".*.tmp"):
            logger.warning("removing %s, left by an interrupted write", leftover)
            _remove(leftover)
        yield run_dir
    finally:
        del _HELD[key]
        os.ftruncate(fd, 0)  # an empty lock file: released cleanly
        os.close(fd)


# ---------------------------------------------------------------- configs and resuming

FIXED_ON_RESUME = ("model", "data")  # sections of the config that a resumed run must keep
FIXED_TRAIN_KEYS = ("seed",)


def read_run_config(run_dir: str | os.PathLike) -> tuple[dict, int]:
    """The config of the run in ``run_dir`` as saved in its checkpoint, and the epochs it has trained.

    Raises:
        FileNotFoundError, CheckpointError: as :func:`load_checkpoint`.
        ValueError: ``config.json`` was edited since the checkpoint was written
            (an edit would otherwise be lost silently); the message names the keys.
    """
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT, keys=("config", "epoch"))
    config = state["config"]
    try:
        on_disk = json.loads((run_dir / CONFIG).read_text())
    except FileNotFoundError:
        return config, state["epoch"]
    except ValueError as error:
        raise ValueError(f"{run_dir / CONFIG} is not valid JSON ({error}); restore it or delete it "
                         f"(the checkpoint holds the config).") from error
    diff = config_changes(config, on_disk)
    if diff:
        raise ValueError(
            f"{run_dir / CONFIG} differs from the config in the checkpoint ({describe_changes(diff)}); edits to "
            f"config.json are not applied: restore it (or delete it) and pass changes as flags with --resume."
        )
    return config, state["epoch"]


def config_changes(old: dict, new: dict) -> dict[str, tuple]:
    """``{"section.key": (old, new)}`` for every value that differs, lists and tuples alike; history ignored."""
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))  # tuples -> lists
    changes = {}
    for section in sorted(set(old) | set(new)):
        if section == "history":
            continue
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    changes[f"{section}.{key}"] = (a.get(key), b.get(key))
        elif a != b:
            changes[section] = (a, b)
    return changes


def resume_changes(saved: dict, new: dict, epochs_done: int) -> dict[str, tuple]:
    """Check a resumed run's config against the saved one; return the allowed changes.

    The model and the data must match, as must the seed; any training setting
    may change (more epochs, a new learning rate, another objective).

    Raises:
        ValueError: a model or data setting or the seed differs, or
            ``new["train"]["epochs"]`` is below ``epochs_done``.
    """
    changes = config_changes(saved, new)
    fixed = {key: value for key, value in changes.items()
             if key.split(".")[0] in FIXED_ON_RESUME or key in {f"train.{k}" for k in FIXED_TRAIN_KEYS}}
    if fixed:
        raise ValueError(f"--resume must keep the run's model and data: {describe_changes(fixed)}; "
                         f"train a new run into another folder instead.")
    epochs = new.get("train", {}).get("epochs", epochs_done + 1)
    if epochs < epochs_done:
        raise ValueError(f"the run has already trained {epochs_done} epochs; --epochs {epochs} must be at least "
                         f"that (it is the total, not the number of epochs to add).")
    return changes


def resumed_config(saved: dict, new: dict, epochs_done: int) -> tuple[dict, dict[str, tuple]]:
    """The config a resumed run saves: ``new`` with the run's ``history`` of changes, and this resume's changes.

    Each resume that changes a setting appends ``{"after_epoch": epochs_done,
    "changes": {"section.key": [old, new]}}`` to the saved history.

    Raises:
        ValueError: as :func:`resume_changes`.
    """
    changes = resume_changes(saved, new, epochs_done) if saved else {}
    history = saved.get("history", [])
    if changes:
        history = [*history, {"after_epoch": epochs_done, "changes": {k: list(v) for k, v in changes.items()}}]
    return ({**new, "history": history} if history else new), changes


def describe_changes(changes: dict[str, tuple]) -> str:
    """One line: ``train.epochs 2 -> 4, train.learning_rate 0.001 -> 0.0005``."""
    return ", ".join(f"{key} {a!r} -> {b!r}" for key, (a, b) in changes.items())


# ---------------------------------------------------------------- loading a run


@dataclass
class Run:
    """A trained run loaded back: the model with its last checkpoint's weights.

    Attributes:
        run_dir: the folder.
        model: the model/guide pair, in eval mode, on the chosen device.
        config: the saved config: ``{"model": ..., "data": ..., "train": ...}``.
        metrics: the per-epoch metrics table (empty when ``metrics.csv`` is
            missing or unreadable: it is not needed to use the model).
        epoch: epochs trained.
    """

    run_dir: Path
    model: nn.Module
    config: dict
    metrics: pd.DataFrame
    epoch: int

    def load_data(
        self, data_dir: str | os.PathLike | None = None, download: bool = False
    ) -> ImageData:
        """The run's data set (same name, binarization and sizes), on the model's device."""
        data = dict(self.config["data"])
        device = next(self.model.parameters()).device
        return load_dataset(data.pop("dataset"), data_dir=data_dir, download=download, device=device, **data)


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "auto", model: nn.Module | None = None) -> Run:
    """Load the model of a run folder written by ``pplvae train`` / :func:`pplvae.fit`.

    Args:
        run_dir: the run folder.
        device: where the weights go; ``"auto"``: CUDA when there is one.
        model: the model to load the weights into, for a run of your own
            model/guide pair (any ``nn.Module`` with the run's parameter
            names and shapes, e.g. built from the sizes in the run's
            ``config.json``); default: the built-in model its config names
            (:data:`pplvae.models.MODELS`), built from the saved sizes.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``checkpoint.pt``.
        CheckpointError: the checkpoint is damaged, unsafe, lacks keys, or its
            weights do not fit the model its config describes (or ``model``).
        ValueError: the config names a model that is not built in and no ``model`` is given.
    """
    from pplvae.training import resolve_device  # training writes runs: imported here, not at the top

    run_dir = Path(run_dir)
    device = resolve_device(device)
    path = run_dir / CHECKPOINT
    state = load_checkpoint(path, map_location=device, keys=("model", "epoch"))
    try:
        config = state.get("config") or json.loads((run_dir / CONFIG).read_text())
        name = config["model"]["name"]
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} has no readable model config ({_first_line(error)}).") from error
    given = model is not None
    if not given and name not in MODELS:
        raise ValueError(f"{run_dir} holds a {name!r} model, not one of pplvae's ({', '.join(MODELS)}): "
                         f"pass the model to load its weights into, load_run(run_dir, model=...).")
    try:
        model = (model if given else build_model(**config["model"])).to(device)
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError) as error:
        what = "the model given" if given else "the model its config describes"
        raise CheckpointError(f"{path} does not hold the weights of {what} ({_first_line(error)}).") from error
    model.eval()
    metrics = pd.DataFrame()
    if (run_dir / METRICS).exists():
        try:
            metrics = pd.read_csv(run_dir / METRICS)
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
            logger.warning("ignoring %s, which is not a readable table (%s)", run_dir / METRICS, _first_line(error))
    return Run(run_dir, model, config, metrics, state["epoch"])
