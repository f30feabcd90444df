"""What a trainer's checkpoint holds, and how a trainer's state goes in and comes back out.

A checkpoint holds the parameters, the optimizer state (as arrays plus a JSON spec, see
:mod:`asynctrain.optim._tree`), the step/epoch/batch counters, the RNG state the epoch order is
drawn from, the settings a resuming trainer must share (shards, batch size, seed,
mode, model shape and dtype), the names of the feature columns trained on (the
model section's ``feature_names``; null for arrays, and in checkpoints older than it),
and the state of the fit's callbacks that keep one (the ``callbacks`` section, by
:func:`callback_keys`, with arrays ``callbacks/<i>``; absent in older checkpoints), and
whether a callback stopped the fit there (``stopped_early``; absent in older ones: not).
The file format is in :mod:`._format` and :mod:`._verify`.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain._checkpoint import _format, _verify
from asynctrain._checks import INT64_MAX
from asynctrain._config import TrainConfig
from asynctrain._engine import Mode, make_mode
from asynctrain._engine._update import TrainState, Updater
from asynctrain._exceptions import CheckpointError, ConfigError
from asynctrain._version import __version__
from asynctrain.backends._base import readonly
from asynctrain.data import epoch_order, steps_per_epoch
from asynctrain.models import Model
from asynctrain.optim import GradientTransformation, _tree

_NAME = re.compile(r"^step-(\d+)\.ckpt$")
_COUNTERS = ("step", "version", "skipped", "epoch", "batch")
_MUST_MATCH = {
    "config": ("batch_size", "shards", "seed", "shuffle", "mode", "local_steps", "staleness"),
    "model": ("class", "architecture", "input_shape", "n_features", "n_classes", "dtype"),
}
# Settings a full resume also needs equal; resume="params" lets them differ.
_HYPERPARAMETERS = (("model", "repr"), ("optimizer", "repr"))
# What a setting missing from a checkpoint written before it existed stands for.
_ABSENT = {("config", "shuffle"): "global"}
# Any parameter name: a model's may be "" too (stored as arrays/<i>, as every key that is
# not a safe member name), and what a fit wrote its resume must read.
_KEY = re.compile(r"params/.*|(opt_state|callbacks)/(0|[1-9][0-9]{0,8})", re.DOTALL)
_INT_MAX = INT64_MAX  # a Trainer refuses a larger setting
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_WHOLE = re.compile(r"(?<![\w.+-])([0-9]+)(?![\w.])")  # not in 1.5, 1e-08 or a name
_LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z: the latest time datetime can show


@dataclass(frozen=True)
class Subject:
    """What a checkpoint is taken of or restored into, built by the trainer for each
    checkpoint operation: its settings and identity, and its state at that moment.

    ``updater`` is the trainer's update thread while it is open (a consistent copy is
    taken there), else None. ``feature_names`` are the columns the parameters were
    trained on (None: arrays without names).
    """

    model: Model
    optimizer: GradientTransformation
    config: TrainConfig
    mode: Mode
    samples: int | None
    state: TrainState
    updater: Updater | None = None
    feature_names: tuple[str, ...] | None = None


def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint taken after ``step`` steps: ``step-000000000042.ckpt``."""
    return f"step-{step:012d}.ckpt"


def is_checkpoint_name(name: str) -> bool:
    """Whether a file named ``name`` counts as a checkpoint of its directory
    (``step-<n>.ckpt``): a resume, ``load`` of the directory and ``keep`` consider it."""
    return _NAME.match(name) is not None


def checkpoint_step(path: Path) -> int:
    """The step in the name of a checkpoint :func:`list_checkpoints` found."""
    found = _NAME.match(path.name)
    assert found is not None, path
    return int(found[1])


def list_checkpoints(directory: Path) -> list[Path]:
    """The checkpoints (regular files) in ``directory``, oldest (fewest steps) first."""
    found = [
        (int(m[1]), p)
        for p in directory.glob("step-*.ckpt")
        if (m := _NAME.match(p.name)) and p.is_file()  # a FIFO or device is never one
    ]
    return [path for _, path in sorted(found)]


def fit_records(path: Path) -> list[str]:
    """What the checkpoint at ``path`` keeps that only a fit's own checkpoints do (and a
    :meth:`~asynctrain.Trainer.save` does not): the early-stop record, the callbacks'
    states. Empty for a file that keeps neither, and for none or a damaged one (nothing
    a save over it would lose); only the manifest is read.
    """
    try:
        manifest = _verify.read_manifest(path)
    except CheckpointError:
        return []
    records = ["the early-stop record"] if manifest.get("stopped_early") is True else []
    states = manifest.get("callbacks")
    if isinstance(states, dict) and states:
        records.append(f"the states of {', '.join(map(str, states))}")
    return records


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
    callbacks: dict[str, Any] | None = None
    """The fit's callbacks' states by :func:`callback_keys` (None: no fit, or none kept)."""
    stopped_early: bool = False
    """The fit's final checkpoint after a callback stopped it: its run is over."""


def callback_keys(callbacks: Sequence[Any]) -> list[str]:
    """The key each callback's state is kept under: its class name, and ``#n`` for the
    n-th callback of that class (``EarlyStopping#0``), so adding a callback of another
    class does not move the others' states.

    Example:
        >>> class A: ...
        >>> class B: ...
        >>> callback_keys([A(), B(), A()])
        ['A#0', 'B#0', 'A#1']
    """
    seen: dict[str, int] = {}
    keys = []
    for callback in callbacks:
        name = type(callback).__qualname__
        keys.append(f"{name}#{seen.get(name, 0)}")
        seen[name] = seen.get(name, 0) + 1
    return keys


def callback_states(callbacks: Sequence[Any]) -> dict[str, Any]:
    """The states of the ``callbacks`` that keep one (``state_dict()`` not None), by key.

    Raises:
        CheckpointError: a state that is not plain data (found when it is written).
    """
    states = {}
    for key, callback in zip(callback_keys(callbacks), callbacks, strict=True):
        method = getattr(callback, "state_dict", None)
        state = None if method is None else method()
        if state is not None:
            states[key] = state
    return states


def snapshot(subject: Subject, state: TrainState) -> Payload:
    """Copy what ``state`` shares with training (the optimizer arrays, updated in place).

    Parameters need no copy: each version is a new set of read-only arrays. Run this where
    updates run (the updater thread) so no update interleaves with the copy.

    Raises:
        CheckpointError: the optimizer state holds something other than plain data.
    """
    arrays: list[npt.NDArray[Any]] = []
    spec = encode_state(subject.optimizer, state.opt_state, arrays)
    return Payload(state, spec, [a.copy() for a in arrays], describe_subject(subject))


def copied_bytes(state: TrainState) -> int:
    """The bytes :func:`snapshot` copies of ``state``: its optimizer state's arrays."""
    return sum(array.nbytes for _, array in _tree.leaves(state.opt_state))


def encode_state(
    optimizer: GradientTransformation, opt_state: Any, arrays: list[npt.NDArray[Any]]
) -> Any:
    """The JSON spec of ``opt_state`` (its arrays appended to ``arrays``).

    Raises:
        CheckpointError: the optimizer state holds something other than plain data.
    """
    try:
        return _tree.encode(opt_state, arrays)
    except TypeError as exc:
        raise CheckpointError(f"cannot checkpoint {optimizer!r}: {exc}") from None


OrderDigest = Callable[[int, int, int], str]
"""``(samples, seed, epoch)`` -> the hex SHA-256 of that epoch's order."""


def order_sha256(samples: int, seed: int, epoch: int) -> str:
    """The hex SHA-256 of the order :func:`~asynctrain.data.epoch_order` draws for
    ``epoch`` of ``samples`` rows (its int64 bytes): some 3 ms of a core for 200,000 rows."""
    permutation = epoch_order(samples, seed=seed, epoch=epoch)
    return hashlib.sha256(permutation.tobytes()).hexdigest()


def write(
    path: Path, payload: Payload, *, digest: OrderDigest = order_sha256, **options: Any
) -> None:
    """Write ``payload`` to ``path`` atomically (``options`` go to the file writer).

    ``digest`` computes the SHA-256 of an epoch's order (:func:`order_sha256`); a fit
    passes one that remembers it, so its checkpoints of one epoch compute it once.
    """
    _format.write(path, *_contents(payload, digest), **options)


def _contents(
    payload: Payload, digest: OrderDigest
) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """The manifest and the arrays by key of the file that holds ``payload``."""
    state, info = payload.state, payload.info
    config = info["config"]
    rng = rng_state(config["seed"], state.epoch, state.batch, info["samples"], digest=digest)
    manifest = {
        "asynctrain_version": _version(),
        "numpy_version": np.__version__,
        "created_unix": time.time(),
        "state": {name: int(getattr(state, name)) for name in _COUNTERS},
        "rng": rng,
        **{key: info[key] for key in ("config", "model")},
        "optimizer": {"repr": info["optimizer"], "state": payload.spec},
        "stopped_early": payload.stopped_early,
    }
    arrays = {f"params/{k}": v for k, v in state.params.items()}
    arrays |= {f"opt_state/{i}": a for i, a in enumerate(payload.opt_arrays)}
    if payload.callbacks:
        kept: list[npt.NDArray[Any]] = []
        manifest["callbacks"] = _encode_callbacks(payload.callbacks, kept)
        arrays |= {f"callbacks/{i}": a for i, a in enumerate(kept)}
    return manifest, arrays


def _encode_callbacks(states: dict[str, Any], arrays: list[npt.NDArray[Any]]) -> dict[str, Any]:
    try:
        return {
            key: _tree.encode(state, arrays, name=f"the state_dict() of {key}")
            for key, state in states.items()
        }
    except TypeError as exc:
        raise CheckpointError(f"cannot checkpoint the fit's callbacks: {exc}") from None


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read from disk and verified (checksums, format, dtypes, manifest)."""

    path: Path
    manifest: dict[str, Any]
    arrays: dict[str, npt.NDArray[Any]]

    @classmethod
    def read(cls, path: str | Path) -> Checkpoint:
        """Read ``path`` (a file, or a directory's latest checkpoint) and verify it.

        Besides the file format (:mod:`._verify`), every value of the manifest that a
        trainer uses is checked for its type and range, and every array for finite values.

        Raises:
            CheckpointError: naming the path and the first problem found.
        """
        resolved = resolve(path)
        manifest, arrays = _verify.read(resolved)
        checkpoint = cls(resolved, manifest, arrays)
        checkpoint._check()
        return checkpoint

    def section(self, name: str) -> dict[str, Any]:
        """A JSON object of the manifest (``state``, ``config``, ``model``, ``rng``, ...)."""
        value = self.manifest.get(name)
        if not isinstance(value, dict):
            raise CheckpointError(f"{self.path}: the manifest has no valid {name!r} section")
        return value

    def counter(self, name: str) -> int:
        """One of the step/version/skipped/epoch/batch counters, checked."""
        value = self.section("state").get(name)
        if type(value) is not int or not 0 <= value <= _INT_MAX:
            raise CheckpointError(f"{self.path}: counter {name!r} is {value!r}, not an int >= 0")
        return value

    @property
    def feature_names(self) -> tuple[str, ...] | None:
        """The names of the feature columns the parameters were trained on, or None."""
        names = self.section("model").get("feature_names")
        return None if names is None else tuple(names)

    @property
    def samples(self) -> int | None:
        """The rows of the data the checkpoint was taken on (None: unknown, as for a
        trainer that had not fit on data; always known mid-epoch), checked by :meth:`read`."""
        samples: int | None = self.section("rng").get("samples")
        return samples

    @property
    def stopped_early(self) -> bool:
        """Whether a callback stopped the fit that wrote this checkpoint, here: its run
        is over, and a ``resume=True`` rerun returns at once (False in checkpoints older
        than the field); checked by :meth:`read`."""
        return self.manifest.get("stopped_early") is True

    @property
    def params(self) -> dict[str, npt.NDArray[Any]]:
        """The parameters, by name."""
        return {k[7:]: v for k, v in self.arrays.items() if k.startswith("params/")}

    def callback_states(self) -> dict[str, Any]:
        """The states the fit's callbacks kept, by :func:`callback_keys` (empty when none
        did, and for checkpoints older than them); checked by :meth:`read`."""
        spec = self.manifest.get("callbacks", {})
        if not isinstance(spec, dict):
            raise CheckpointError(f"{self.path}: the callbacks section is not an object")
        arrays = [self.arrays[f"callbacks/{i}"] for i in range(self._count("callbacks"))]
        problems: list[str] = []
        try:
            states = {str(k): _tree.decode_plain(v, arrays, problems, k) for k, v in spec.items()}
        except RecursionError:  # nested past what any callback writes
            problems.append("nested too deeply")
        if problems:
            raise CheckpointError(f"{self.path}: a callback's state is not valid: {problems[0]}")
        return states

    def settings(self) -> dict[str, Any]:
        """The trainer settings the checkpoint was written with (``restore``'s defaults).

        Raises:
            CheckpointError: the settings are not ones a Trainer accepts.
        """
        config = self.section("config")
        found = {key: config[key] for key in _RESTORED if config.get(key) is not None}
        known = {field.name for field in fields(TrainConfig)}
        options = {key: found.get(key) for key in ("local_steps", "staleness")}
        try:
            TrainConfig(**{key: value for key, value in found.items() if key in known})
            make_mode(found.get("mode", "sync"), **options)
        except ConfigError as exc:
            raise CheckpointError(f"{self.path}: the settings are not valid: {exc}") from None
        return found

    def train_state(self, subject: Subject, *, params_only: bool = False) -> TrainState:
        """The :class:`TrainState` to continue from, for ``subject``.

        With ``params_only``, the model's and optimizer's hyperparameters may differ and
        the optimizer starts afresh (``optimizer.init`` of the restored parameters); the
        counters and the data order still continue from the checkpoint.

        Raises:
            CheckpointError: listing every difference that prevents the resume
                (settings, model, optimizer, parameter shapes and dtypes, RNG).
        """
        current, here = subject.state.params, describe_subject(subject)
        problems = self._mismatches(here, params_only=params_only)
        params = self.params
        shapes: list[str] = []
        for name in sorted(current.keys() | params.keys()):
            shapes += _compare_array(f"params[{name!r}]", params.get(name), current.get(name))
        problems += shapes
        opt_state = None
        if not params_only:
            opt_state = self._opt_state(subject, current, problems)
        if problems:
            # resume="params" is offered only where it would do: it still needs the
            # model's shape and dtype, the parameters and the data settings to match.
            offer = not params_only and not shapes and not self._mismatches(here, params_only=True)
            listed = "".join(f"\n  - {p}" for p in problems)
            raise CheckpointError(
                f"checkpoint {self.path} does not match this trainer:{listed}\nCreate the "
                f"Trainer with the checkpoint's settings (`asynctrain inspect {self.path}`)"
                + (
                    ', or fit with resume="params" to take only its parameters and start '
                    "the optimizer afresh"
                    if offer
                    else ""
                )
            )
        if opt_state is None:
            opt_state = subject.optimizer.init(readonly(params))
        step, version, skipped, epoch, batch = (self.counter(name) for name in _COUNTERS)
        return TrainState(step, version, readonly(params), opt_state, skipped, epoch, batch)

    def _opt_state(self, subject: Subject, current: Any, problems: list[str]) -> Any:
        """Rebuild the optimizer state on a trusted template: the layout of
        ``optimizer.init``, or the mode's own if it declares one (``checkpoint_layout``)."""
        plain = subject.optimizer.init(current)
        layout = getattr(subject.mode, "checkpoint_layout", None)
        templates = [plain] if layout is None else [layout(plain, subject.config.shards), plain]
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
        if order_sha256(samples, seed, epoch) != rng.get("order_sha256"):
            raise CheckpointError(
                f"checkpoint {self.path}: this numpy draws a different epoch order than the "
                f"one that wrote it (numpy {self.manifest.get('numpy_version')}); resume with it"
            )

    def _mismatches(self, here: dict[str, Any], *, params_only: bool) -> list[str]:
        pairs = [(section, key) for section, keys in _MUST_MATCH.items() for key in keys]
        if not params_only:
            pairs += _HYPERPARAMETERS
        problems = []
        for section, key in pairs:
            theirs = self.section(section).get(key, _ABSENT.get((section, key)))
            ours = here[section]
            ours = ours[key] if isinstance(ours, dict) else ours
            if key == "repr" and (_opaque(theirs) or _opaque(ours)):
                continue  # object.__repr__ (an address) shows no settings to compare
            if (section, key) == ("optimizer", "repr") and _as_floats(theirs) == _as_floats(ours):
                continue
            if theirs != ours:
                problems.append(f"{section}.{key}: {theirs!r} in the checkpoint, {ours!r} here")
        rng, seed = self.section("rng"), self.section("config").get("seed")
        if type(seed) is int and seed >= 0:
            expected = rng_state(seed, self.counter("epoch"), self.counter("batch"), None)
            if rng.get("state") != expected["state"]:
                problems.append("rng: this numpy seeds the epoch order differently")
        return problems

    def _opt_count(self) -> int:
        return self._count("opt_state")

    def _count(self, group: str) -> int:
        """How many arrays ``group/<i>`` there are, checked to be numbered 0..n-1."""
        count = sum(1 for key in self.arrays if key.startswith(f"{group}/"))
        if any(f"{group}/{i}" not in self.arrays for i in range(count)):
            raise CheckpointError(f"{self.path}: the {group} arrays are not numbered 0..n-1")
        return count

    def _check(self) -> None:
        """Check the manifest's values and the arrays' contents; see :meth:`read`."""
        manifest = self.manifest
        for key, rule in _TOP.items():
            if not rule(manifest.get(key)):
                raise CheckpointError(f"{self.path}: {key} is {manifest.get(key)!r}, not valid")
        for name, rules in _SECTIONS.items():
            section = self.section(name)
            for key, rule in rules.items():
                if not rule(section.get(key)):
                    raise CheckpointError(
                        f"{self.path}: {name}.{key} is {section.get(key)!r}, not valid"
                    )
        self._check_position()
        names, model = self.feature_names, self.section("model")
        if names is not None and len(names) != model["n_features"]:
            raise CheckpointError(
                f"{self.path}: {len(names)} feature names for a model of "
                f"{model['n_features']} features"
            )
        self.settings()
        for key, array in self.arrays.items():
            _check_array(self.path, key, array)
        self._opt_count()
        self.callback_states()
        bad = _hostile_scalar(self.section("optimizer")["state"])
        if bad is not None:
            raise CheckpointError(f"{self.path}: the optimizer state holds {bad}, not valid")
        twice = _named_twice(self.section("optimizer")["state"])
        if twice is not None:
            raise CheckpointError(
                f"{self.path}: the optimizer state names array opt_state/{twice} twice; "
                "asynctrain writes each once, so the file was edited"
            )

    def _check_position(self) -> None:
        state, rng, config = self.section("state"), self.section("rng"), self.section("config")
        if rng["batch"] != state["batch"] or rng["seed_sequence"] != [
            config["seed"],
            state["epoch"],
        ]:
            raise CheckpointError(f"{self.path}: the rng section disagrees with the state")
        if state["skipped"] > state["step"]:
            raise CheckpointError(f"{self.path}: more steps skipped than taken")
        samples = rng.get("samples")  # absent: unknown, as null
        most = 0 if samples is None else steps_per_epoch(samples, config["batch_size"])
        if state["batch"] > most:
            raise CheckpointError(
                f"{self.path}: batch {state['batch']} is past the end of an epoch of {most} batches"
            )


def describe_subject(subject: Subject) -> dict[str, Any]:
    """The settings and identity of ``subject`` that a checkpoint records."""
    config, model = subject.config, subject.model
    return {
        "config": {
            "batch_size": config.batch_size,
            "shards": config.shards,
            "seed": config.seed,
            "nonfinite": config.nonfinite,
            "shuffle": config.shuffle,
            "mode": subject.mode.name,
            # Options of some modes only (None in the others).
            "local_steps": None,
            "staleness": None,
            **subject.mode.settings,
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
            "feature_names": None if subject.feature_names is None else [*subject.feature_names],
        },
        "optimizer": repr(subject.optimizer),
        "samples": subject.samples,
    }


def rng_state(
    seed: int,
    epoch: int,
    batch: int,
    samples: int | None,
    *,
    digest: OrderDigest = order_sha256,
) -> dict[str, Any]:
    """The RNG state the data order resumes from: the generator of ``epoch``'s order.

    :func:`~asynctrain.data.epoch_order` draws each epoch's permutation from
    ``default_rng([seed, epoch])``; the order resumes at ``batch``. With ``samples`` and
    mid-epoch (``batch > 0``), the SHA-256 of that epoch's order (by ``digest``) is
    included, to detect a numpy that shuffles differently; at an epoch boundary, where a
    resume draws the epoch's order afresh and continues no order, it is None.
    """
    generator = np.random.default_rng([seed, epoch]).bit_generator
    order = None if samples is None or batch == 0 else digest(samples, seed, epoch)
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


def _as_floats(label: Any) -> Any:
    """An optimizer's label with every whole number written as a float (``eps=1`` as
    ``eps=1.0``). Checkpoints written before the aliases labelled every setting as a
    float show it as given (``adam(1)``); read this way, they still resume."""
    return _WHOLE.sub(r"\1.0", label) if isinstance(label, str) else label


def _opaque(text: Any) -> bool:
    return isinstance(text, str) and _ADDRESS.search(text) is not None


def _check_array(path: Path, key: str, array: npt.NDArray[Any]) -> None:
    if not _KEY.fullmatch(key):
        raise CheckpointError(f"{path}: array {key!r} is not one a checkpoint holds")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise CheckpointError(f"{path}: array {key!r} holds NaN or infinite values")
    if key.startswith("opt_state/") and array.dtype.kind == "i" and (array < 0).any():
        raise CheckpointError(f"{path}: array {key!r} holds a negative count")


def _hostile_scalar(spec: Any) -> str | None:
    """The first negative int or non-finite float of an optimizer state's JSON spec.

    An optimizer state's ints are counts and its floats finite; a count of -5 would make
    Adam's bias correction negative and its next update NaN.
    """
    pending = [spec]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending += node
        elif isinstance(node, dict):
            value = node.get("int")
            if type(value) is int and value < 0:
                return f"the count {value}"
            value = node.get("float")
            if isinstance(value, str) and _not_finite(value):
                return f"the number {value!r}"
            pending += node.values()
    return None


def _named_twice(spec: Any) -> int | None:
    """The first array index an optimizer state's JSON spec names twice, or None.

    The writer stores each array of a state once. Decoded, a spec naming one twice
    (Adam's ``mu`` and ``nu``) would give two parts of the state one buffer, whose
    in-place updates would then corrupt each other silently.
    """
    seen: set[int] = set()
    pending = [spec]
    while pending:
        node = pending.pop()
        if not isinstance(node, dict):
            continue
        index, items, children = node.get("array"), node.get("tuple"), node.get("dict")
        if type(index) is int:
            if index in seen:
                return index
            seen.add(index)
        if isinstance(items, list):
            pending += items
        if isinstance(children, dict):
            pending += children.values()
    return None


def _not_finite(text: str) -> bool:
    try:
        return not math.isfinite(float.fromhex(text))
    except (ValueError, OverflowError):
        return False  # not a float: the decoder reports it against the template


def _count(low: int) -> Callable[[Any], bool]:
    return lambda value: type(value) is int and low <= value <= _INT_MAX


def _optional(rule: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or rule(value)


def _is_text(value: Any) -> bool:
    return type(value) is str


def _is_time(value: Any) -> bool:
    return type(value) in (int, float) and 0 <= value <= _LAST_SECOND


def _is_names(value: Any) -> bool:
    """A JSON list of unique strings (feature names)."""
    return (
        isinstance(value, list)
        and all(type(name) is str for name in value)
        and len(set(value)) == len(value)
    )


def _is_sha256(value: Any) -> bool:
    return type(value) is str and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def _is_seed_sequence(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(map(_count(0), value))


_RESTORED = (
    "batch_size",
    "shards",
    "seed",
    "nonfinite",
    "shuffle",
    "mode",
    "local_steps",
    "staleness",
)
_TOP: dict[str, Callable[[Any], bool]] = {
    "asynctrain_version": _is_text,
    "numpy_version": _is_text,
    "created_unix": _is_time,
    "stopped_early": _optional(lambda value: type(value) is bool),
}
_SECTIONS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "state": {name: _count(0) for name in _COUNTERS},
    "config": {
        "batch_size": _count(1),
        "shards": _count(1),
        "seed": _count(0),
        "nonfinite": _is_text,
        "shuffle": _optional(_is_text),
        "mode": _is_text,
        "local_steps": _optional(_count(1)),
        "staleness": _optional(_count(0)),
    },
    "model": {
        "class": _is_text,
        "repr": _is_text,
        "n_features": _count(1),
        "n_classes": _optional(_count(1)),
        "dtype": _is_text,
        "feature_names": _optional(_is_names),
    },
    "rng": {
        "seed_sequence": _is_seed_sequence,
        "state": lambda value: isinstance(value, dict),
        "batch": _count(0),
        "samples": _optional(_count(1)),
        "order_sha256": _optional(_is_sha256),
    },
    "optimizer": {"repr": _is_text, "state": lambda value: isinstance(value, dict)},
}


def _version() -> str:
    return __version__
