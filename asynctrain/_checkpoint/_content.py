"""What a trainer's checkpoint holds, and how a trainer's state goes in and comes back out.

A checkpoint holds the parameters, the optimizer state (as arrays plus a JSON spec, see
:mod:`asynctrain.optim._tree`), the step/epoch/batch counters, the RNG state the epoch order is
drawn from, and the settings a resuming trainer must share (shards, batch size, seed,
mode, model shape and dtype). The file format is in :mod:`._format` and :mod:`._verify`.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain._checkpoint import _format, _verify
from asynctrain._engine._update import TrainState
from asynctrain._exceptions import CheckpointError
from asynctrain._types import Params
from asynctrain._version import __version__
from asynctrain.backends._base import readonly
from asynctrain.data import epoch_order
from asynctrain.optim import _tree

if TYPE_CHECKING:
    from asynctrain._trainer import Trainer

_NAME = re.compile(r"^step-(\d+)\.ckpt$")
_COUNTERS = ("step", "version", "skipped", "epoch", "batch")
_MUST_MATCH = {
    "config": ("batch_size", "shards", "seed", "mode", "local_steps", "staleness"),
    "model": ("class", "architecture", "input_shape", "n_features", "n_classes", "dtype"),
}


def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint taken after ``step`` steps: ``step-000000000042.ckpt``."""
    return f"step-{step:012d}.ckpt"


def list_checkpoints(directory: Path) -> list[Path]:
    """The checkpoints in ``directory``, oldest (fewest steps) first."""
    found = [(int(m[1]), p) for p in directory.glob("step-*.ckpt") if (m := _NAME.match(p.name))]
    return [path for _, path in sorted(found)]


def resolve(path: str | Path) -> Path:
    """``path`` itself, or for a directory the latest checkpoint in it.

    Raises:
        CheckpointError: a directory holding no checkpoint.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(f"no checkpoint (step-*.ckpt) in directory {path}")
    return found[-1]


class Payload(NamedTuple):
    """A consistent copy of a trainer's state, ready to be written by another thread."""

    state: TrainState
    spec: Any
    opt_arrays: list[npt.NDArray[Any]]
    info: dict[str, Any]


def snapshot(trainer: Trainer, state: TrainState) -> Payload:
    """Copy what ``state`` shares with training (the optimizer arrays, updated in place).

    Parameters need no copy: each version is a new set of read-only arrays. Run this where
    updates run (the updater thread) so no update interleaves with the copy.

    Raises:
        CheckpointError: the optimizer state holds something other than plain data.
    """
    arrays: list[npt.NDArray[Any]] = []
    spec = encode_state(trainer, state.opt_state, arrays)
    return Payload(state, spec, [a.copy() for a in arrays], describe_trainer(trainer))


def encode_state(trainer: Trainer, opt_state: Any, arrays: list[npt.NDArray[Any]]) -> Any:
    """The JSON spec of ``opt_state`` (its arrays appended to ``arrays``).

    Raises:
        CheckpointError: the optimizer state holds something other than plain data.
    """
    try:
        return _tree.encode(opt_state, arrays)
    except TypeError as exc:
        raise CheckpointError(f"cannot checkpoint {trainer.optimizer!r}: {exc}") from None


def write(path: Path, payload: Payload, **options: Any) -> None:
    """Write ``payload`` to ``path`` atomically (``options`` go to the file writer)."""
    state, info = payload.state, payload.info
    config = info["config"]
    manifest = {
        "asynctrain_version": _version(),
        "numpy_version": np.__version__,
        "created_unix": time.time(),
        "state": {name: int(getattr(state, name)) for name in _COUNTERS},
        "rng": rng_state(config["seed"], state.epoch, state.batch, info["samples"]),
        **{key: info[key] for key in ("config", "model")},
        "optimizer": {"repr": info["optimizer"], "state": payload.spec},
    }
    arrays = {f"params/{k}": v for k, v in state.params.items()}
    arrays |= {f"opt_state/{i}": a for i, a in enumerate(payload.opt_arrays)}
    _format.write(path, manifest, arrays, **options)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read from disk and verified (checksums, format, dtypes)."""

    path: Path
    manifest: dict[str, Any]
    arrays: dict[str, npt.NDArray[Any]]

    @classmethod
    def read(cls, path: str | Path) -> Checkpoint:
        """Read ``path`` (a file, or a directory's latest checkpoint) and verify it."""
        resolved = resolve(path)
        manifest, arrays = _verify.read(resolved)
        return cls(resolved, manifest, arrays)

    def section(self, name: str) -> dict[str, Any]:
        """A JSON object of the manifest (``state``, ``config``, ``model``, ``rng``, ...)."""
        value = self.manifest.get(name)
        if not isinstance(value, dict):
            raise CheckpointError(f"{self.path}: the manifest has no valid {name!r} section")
        return value

    def counter(self, name: str) -> int:
        """One of the step/version/skipped/epoch/batch counters, checked."""
        value = self.section("state").get(name)
        if type(value) is not int or value < 0:
            raise CheckpointError(f"{self.path}: counter {name!r} is {value!r}, not an int >= 0")
        return value

    @property
    def params(self) -> dict[str, npt.NDArray[Any]]:
        """The parameters, by name."""
        return {k[7:]: v for k, v in self.arrays.items() if k.startswith("params/")}

    def train_state(self, trainer: Trainer, current: Params) -> TrainState:
        """The :class:`TrainState` to continue from, for ``trainer`` (whose params are
        ``current``).

        Raises:
            CheckpointError: listing every difference that prevents an exact resume
                (settings, model, parameter shapes and dtypes, optimizer structure, RNG).
        """
        problems = self._mismatches(describe_trainer(trainer))
        params = self.params
        for name in sorted(current.keys() | params.keys()):
            problems += _compare_array(f"params[{name!r}]", params.get(name), current.get(name))
        opt_state = self._opt_state(trainer, current, problems)
        if problems:
            listed = "".join(f"\n  - {p}" for p in problems)
            raise CheckpointError(
                f"checkpoint {self.path} does not match this trainer:{listed}\nCreate the "
                f"Trainer with the checkpoint's settings (`asynctrain inspect {self.path}`)"
            )
        counters = [self.counter(name) for name in _COUNTERS]
        step, version, skipped, epoch, batch = counters
        return TrainState(step, version, readonly(params), opt_state, skipped, epoch, batch)

    def _opt_state(self, trainer: Trainer, current: Params, problems: list[str]) -> Any:
        """Rebuild the optimizer state on a trusted template: the layout of
        ``optimizer.init``, or the mode's own if it declares one (``checkpoint_layout``)."""
        plain = trainer.optimizer.init(current)
        layout = getattr(trainer.mode, "checkpoint_layout", None)
        templates = [plain] if layout is None else [layout(plain, trainer.config.shards), plain]
        arrays = [self.arrays[f"opt_state/{i}"] for i in range(self._opt_count())]
        spec = self.section("optimizer").get("state")
        first: list[str] = []
        for template in templates:
            found: list[str] = []
            state = _tree.decode(template, spec, arrays, found, "optimizer state")
            if not found:
                return state
            first = first or found
        problems += first
        return plain

    def check_data(self, samples: int) -> None:
        """Check that a dataset of ``samples`` rows continues this checkpoint's epoch.

        Raises:
            CheckpointError: mid-epoch, the dataset size or the epoch order differs.
        """
        rng = self.section("rng")
        if self.counter("batch") == 0 or rng.get("samples") is None:
            return
        if rng["samples"] != samples:
            raise CheckpointError(
                f"checkpoint {self.path} was taken mid-epoch on {rng['samples']} samples; "
                f"the data has {samples}: resume on the same dataset"
            )
        seed, epoch = self.section("config").get("seed"), self.counter("epoch")
        if type(seed) is not int or seed < 0:
            raise CheckpointError(f"{self.path}: the seed {seed!r} is not valid")
        if rng_state(seed, epoch, 0, samples)["order_sha256"] != rng.get("order_sha256"):
            raise CheckpointError(
                f"checkpoint {self.path}: this numpy draws a different epoch order than the "
                f"one that wrote it (numpy {self.manifest.get('numpy_version')}); resume with it"
            )

    def _mismatches(self, here: dict[str, Any]) -> list[str]:
        problems = []
        for section, keys in _MUST_MATCH.items():
            theirs = self.section(section)
            for key in keys:
                if theirs.get(key) != here[section][key]:
                    problems.append(
                        f"{section}.{key}: {theirs.get(key)!r} in the checkpoint, "
                        f"{here[section][key]!r} here"
                    )
        rng, seed = self.section("rng"), self.section("config").get("seed")
        if type(seed) is int and seed >= 0:
            expected = rng_state(seed, self.counter("epoch"), self.counter("batch"), None)
            if rng.get("state") != expected["state"]:
                problems.append("rng: this numpy seeds the epoch order differently")
        return problems

    def _opt_count(self) -> int:
        count = sum(1 for key in self.arrays if key.startswith("opt_state/"))
        if any(f"opt_state/{i}" not in self.arrays for i in range(count)):
            raise CheckpointError(f"{self.path}: the optimizer arrays are not numbered 0..n-1")
        return count


def describe_trainer(trainer: Trainer) -> dict[str, Any]:
    """The settings and identity of ``trainer`` that a checkpoint records."""
    config, model = trainer.config, trainer.model
    return {
        "config": {
            "batch_size": config.batch_size,
            "shards": config.shards,
            "seed": config.seed,
            "nonfinite": config.nonfinite,
            "mode": trainer.mode.name,
            # Options of some modes only (None in the others).
            "local_steps": None,
            "staleness": None,
            **trainer.mode.settings,
        },
        "model": {
            "class": type(model).__name__,
            "repr": repr(model),
            "n_features": int(model.n_features),
            "n_classes": None if model.n_classes is None else int(model.n_classes),
            "dtype": np.dtype(model.dtype).name,
            # Bridged models: the module class (TorchModel) or apply_fn (JaxModel) and the
            # row shape; None for numpy models (and in checkpoints written before them).
            "architecture": getattr(model, "architecture", None),
            "input_shape": _input_shape(model),
        },
        "optimizer": repr(trainer.optimizer),
        "samples": trainer._samples,
    }


def rng_state(seed: int, epoch: int, batch: int, samples: int | None) -> dict[str, Any]:
    """The RNG state the data order resumes from: the generator of ``epoch``'s order.

    :func:`~asynctrain.data.epoch_order` draws each epoch's permutation from
    ``default_rng([seed, epoch])``; the order resumes at ``batch``. With ``samples``, the
    SHA-256 of that epoch's order is included, to detect a numpy that shuffles differently.
    """
    generator = np.random.default_rng([seed, epoch]).bit_generator
    order = None
    if samples is not None:
        permutation = epoch_order(samples, seed=seed, epoch=epoch)
        order = hashlib.sha256(permutation.tobytes()).hexdigest()
    return {
        "seed_sequence": [seed, epoch],
        "state": generator.state,
        "batch": batch,
        "samples": samples,
        "order_sha256": order,
    }


def _input_shape(model: Any) -> list[int] | None:
    shape = getattr(model, "input_shape", None)
    return None if shape is None else [int(size) for size in shape]


def _compare_array(where: str, theirs: Any, ours: Any) -> list[str]:
    if theirs is None or ours is None:
        return [f"{where}: {'missing from the checkpoint' if theirs is None else 'not here'}"]
    if theirs.shape != ours.shape or theirs.dtype != ours.dtype:
        return [
            f"{where}: {theirs.dtype}{list(theirs.shape)} in the checkpoint, "
            f"{ours.dtype}{list(ours.shape)} here"
        ]
    return []


def _version() -> str:
    return __version__
