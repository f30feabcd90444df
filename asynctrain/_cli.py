"""The asynctrain command: demo, train, predict, inspect, bench.

The parser and the commands live here; what a saved model holds besides its parameters
(the model, the label classes, the standardization) is :class:`ModelSpec`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain import __version__, models, optim
from asynctrain._checkpoint import Checkpoint, describe, list_checkpoints, replace_atomically
from asynctrain._config import MODE_OPTIONS
from asynctrain._control import FitControl
from asynctrain._curves import check_plotting, plot_curves
from asynctrain._events import Callback, FitResult
from asynctrain._exceptions import AsyncTrainError, ConfigError, DataError
from asynctrain._inputs import predictions
from asynctrain._offloop import off_loop
from asynctrain._progress import Progress
from asynctrain._runtime import run
from asynctrain._trainer import Trainer
from asynctrain.backends import Backend, backend_names
from asynctrain.data import Dataset, load, synthetic
from asynctrain.data._csv import has_header, read_columns

Handler = Callable[[argparse.Namespace], int]

DESCRIPTION = (
    "Train models on all cores with asyncio: demo trains a reference problem, train fits "
    "your data, predict applies a trained model, inspect verifies a checkpoint and bench "
    "measures asynctrain. Run 'asynctrain COMMAND --help' for a command's options."
)
MAX_CLASSES = 100
"""Default cap on the distinct labels of a classification target (``--max-classes``)."""
SPEC_FILE = "asynctrain-model.json"
"""The file in a ``--checkpoint-dir`` describing the model its checkpoints hold."""
_SPEC_KEY = "__asynctrain_model__"  # the member of a `train --out` .npz holding the spec
_MODELS = ("linear", "logreg", "softmax", "mlp")
_CLASSES = {
    "LinearRegression": "linear",
    "LogisticRegression": "logreg",
    "SoftmaxRegression": "softmax",
    "MLP": "mlp",
}


@dataclass(frozen=True)
class ModelSpec:
    """What predicting needs besides the parameters: the model, labels and scaling.

    Attributes:
        model: a ``--model`` name (linear, logreg, softmax, mlp).
        n_features: input columns.
        outputs: classes (classification) or output columns (regression).
        hidden: MLP hidden units.
        task: ``"classification"`` or ``"regression"``.
        classes: the label each class index stands for (classification), else None.
        mean: per-feature mean subtracted by ``--standardize``, else None.
        scale: per-feature divisor of ``--standardize``, else None.
        feature_names: the training data's column names (a CSV header, Parquet), else
            None; ``predict`` then takes a headed CSV's columns by these names.
    """

    model: str
    n_features: int
    outputs: int
    hidden: int = 256
    task: str = "classification"
    classes: list[Any] | None = None
    mean: list[float] | None = None
    scale: list[float] | None = None
    feature_names: list[str] | None = None

    def build(self) -> Any:
        """The (untrained) model this spec describes."""
        if self.model == "linear":
            return models.LinearRegression(self.n_features)
        if self.model == "logreg":
            return models.LogisticRegression(self.n_features)
        if self.model == "softmax":
            return models.SoftmaxRegression(self.n_features, self.outputs)
        sizes = (self.n_features, self.hidden, self.outputs)
        return models.MLP(sizes, task=self.task)

    def features(self, X: npt.NDArray[Any], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
        """``X`` standardized as in training (unchanged without ``--standardize``)."""
        if self.mean is None or self.scale is None:
            return X
        scaled = (np.asarray(X, dtype=np.float64) - self.mean) / self.scale
        result: npt.NDArray[Any] = scaled.astype(dtype, copy=False)
        return result

    def decode(self, predictions: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Class indices back to the labels they stand for (regression: unchanged)."""
        if self.classes is None:
            return predictions
        labels: npt.NDArray[Any] = np.asarray(self.classes)[predictions]
        return labels

    def to_json(self) -> str:
        """The spec as a JSON object."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str, where: str) -> ModelSpec:
        """Parse :meth:`to_json`'s output, or raise DataError naming ``where``."""
        try:
            fields = json.loads(text)
            spec = cls(**fields)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{where}: not a model description of asynctrain ({exc})") from None
        if spec.model not in _MODELS:
            raise DataError(f"{where}: unknown model {spec.model!r}")
        problem = spec._problem()
        if problem:
            raise DataError(f"{where}: not a model description of asynctrain ({problem})")
        return spec

    def _problem(self) -> str:
        """What makes a parsed description unusable (an edited or damaged file), else "".

        Its classes index predictions and its mean and scale transform every row: a
        wrong one failed in predict with an IndexError or a broadcast error."""
        n = self.n_features
        if type(n) is not int or n < 1 or type(self.outputs) is not int or self.outputs < 1:
            return f"n_features {n!r} and outputs {self.outputs!r} must be counts"
        if self.classes is not None and (
            not isinstance(self.classes, list) or len(self.classes) != self.outputs
        ):
            return f"classes must be a list of its {self.outputs} labels, got {self.classes!r:.80}"
        for name in ("mean", "scale"):
            values = getattr(self, name)
            if values is not None and not (
                isinstance(values, list)
                and len(values) == n
                and all(type(v) in (int, float) and math.isfinite(v) for v in values)
            ):
                return f"{name} must be a list of {n} finite numbers, got {values!r:.80}"
        if (self.mean is None) != (self.scale is None) or (
            self.scale is not None and not all(v > 0 for v in self.scale)
        ):
            return "mean and scale go together, and every scale is > 0"
        names = self.feature_names
        if names is not None and not (
            isinstance(names, list) and len(names) == n and all(isinstance(x, str) for x in names)
        ):
            return f"feature_names must be a list of {n} names, got {names!r:.80}"
        return ""


def _add_training_options(parser: argparse.ArgumentParser, *, epochs: int, lr: float) -> None:
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--shards", type=int, default=None)
    parser.add_argument("--backend", default="thread", choices=backend_names())
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--scheduler", default=None, help="with --backend dask: a scheduler address (tls://...)"
    )
    parser.add_argument(
        "--allow-insecure",
        action="store_true",
        help="accept a plain-TCP --scheduler off this machine (anyone reaching it runs code)",
    )
    parser.add_argument("--optimizer", default="adam", choices=optim.names())
    parser.add_argument("--lr", type=float, default=lr, help="learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mode", default="sync", choices=list(MODE_OPTIONS), help="see docs/modes.md"
    )
    parser.add_argument(
        "--local-steps", type=int, default=None, help="steps per shard between averagings (local)"
    )
    parser.add_argument(
        "--staleness", type=int, default=None, help="versions a step may lag behind (ssp)"
    )
    parser.add_argument(
        "--shuffle",
        default="global",
        choices=["global", "shard", "none"],
        help="shard: each shard keeps its own partition of the rows (see "
        "docs/scaling-out.md); none: the rows in file order, every epoch",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--plot", metavar="PNG", default=None, help="draw the training curves here (matplotlib)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``asynctrain`` command."""
    parser = argparse.ArgumentParser(prog="asynctrain", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"asynctrain {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="train a reference problem on all cores")
    demo.add_argument("--problem", default="softmax", choices=["softmax", "mlp", "logreg"])
    demo.add_argument("--n", type=int, default=None, help="samples (default: the problem's)")
    _add_training_options(demo, epochs=5, lr=3e-3)
    demo.set_defaults(handler=_demo)
    _add_train_parser(commands)
    _add_predict_parser(commands)
    inspect = commands.add_parser("inspect", help="verify a checkpoint and print what it holds")
    inspect.add_argument("checkpoint", help="a .ckpt file, or a directory (its latest)")
    inspect.add_argument("--json", action="store_true", help="print the manifest as JSON")
    inspect.set_defaults(handler=_inspect)
    _add_bench_parser(commands)
    return parser


def _add_train_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = commands.add_parser("train", help="train a model on a .npz, .npy or .csv file")
    train.add_argument(
        "data", help="X/y .npz, X .npy (with --labels), a directory, .csv or .parquet"
    )
    train.add_argument("--labels", default=None, help="y .npy to go with an X .npy")
    train.add_argument(
        "--label-column",
        default=None,
        metavar="COL",
        help="the label column of a .csv (name or index) or Parquet file (default: label)",
    )
    train.add_argument(
        "--weight",
        default=None,
        metavar="WHERE",
        help="sample weights: a .csv/Parquet column, an .npz array, a directory's "
        "WHERE.npy, or a .npy file beside an X .npy",
    )
    train.add_argument(
        "--class-weight",
        default=None,
        metavar="balanced|LABEL=W,...",
        help="weigh classes: 'balanced', or a weight per label such as 0=1,1=5",
    )
    train.add_argument("--model", required=True, choices=_MODELS)
    train.add_argument(
        "--task",
        default="auto",
        choices=["auto", "classification", "regression"],
        help="auto: integer labels are classes, other targets are regressed",
    )
    train.add_argument(
        "--max-classes",
        type=int,
        default=MAX_CLASSES,
        metavar="K",
        help=f"refuse more distinct labels (default {MAX_CLASSES})",
    )
    train.add_argument("--hidden", type=int, default=256, help="MLP hidden units")
    train.add_argument("--validation-split", type=float, default=0.1)
    train.add_argument(
        "--no-validation", action="store_true", help="train on all rows; no validation"
    )
    train.add_argument("--standardize", action="store_true", help="scale features to mean 0, std 1")
    train.add_argument(
        "--out", default=None, metavar="NPZ", help="save the trained model here (.npz)"
    )
    train.add_argument(
        "--checkpoint-dir", default=None, metavar="DIR", help="save checkpoints here"
    )
    train.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="STEPS",
        help="steps between checkpoints",
    )
    train.add_argument(
        "--resume", action="store_true", help="continue from --checkpoint-dir's latest"
    )
    _add_training_options(train, epochs=5, lr=1e-2)
    train.set_defaults(handler=_train)


def _add_predict_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    predict = commands.add_parser("predict", help="predict with a trained model")
    predict.add_argument(
        "model", help="an .npz from train --out, or a checkpoint (.ckpt or its directory)"
    )
    predict.add_argument("data", help="features: X .npy, an .npz holding X, or a .csv")
    predict.add_argument(
        "--out", required=True, metavar="NPY", help="write the predictions here (.npy)"
    )
    predict.set_defaults(handler=_predict)


def _add_bench_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bench``: it passes every word after it on to ``benchmarks``' own parser."""
    bench = commands.add_parser(
        "bench",
        help="measure asynctrain against the hardware limit and its peers (source checkout)",
        add_help=False,
        # No option of its own, so none is taken from benchmarks' (--help included).
        prefix_chars="\0",
    )
    bench.add_argument("options", nargs="*", help="see asynctrain bench --help")
    bench.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    """Run ``benchmarks/`` of the source checkout this package was installed from."""
    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / "benchmarks" / "__init__.py").is_file():
        print("asynctrain bench runs the benchmarks/ of a source checkout", file=sys.stderr)
        return 2
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    from benchmarks import main

    result: int = main(args.options, prog="asynctrain bench")
    return result


def _demo(args: argparse.Namespace) -> int:
    data = synthetic(args.problem, n=args.n, seed=args.seed)
    n_classes = int(data.y.max()) + 1
    spec = ModelSpec(args.problem, data.n_features, n_classes)
    train, validation = data.split(0.1, seed=args.seed)
    return _fit_and_report(args, spec, train, validation)


def _train(args: argparse.Namespace) -> int:
    _check_output(args.out, "--out")
    for option in ("resume", "checkpoint_every"):
        if getattr(args, option) not in (None, False) and args.checkpoint_dir is None:
            flag = "--" + option.replace("_", "-")
            raise ConfigError(f"{flag} goes with --checkpoint-dir DIR; pass both")
    csv = Path(args.data).suffix.lower() == ".csv"
    data = _load(
        args.data,
        args.labels,
        label=_column(args.label_column, csv),
        weight=_column(args.weight, csv),
    )
    spec, data = _encode(args, data)
    weigh = args.class_weight
    options = {} if weigh is None else {"class_weight": _class_weight(weigh, spec)}
    if args.no_validation:
        train, validation = data, None
    else:
        train, validation = data.split(args.validation_split, seed=args.seed)
    if args.standardize:
        spec = _standardized(spec, train)
        train = _scaled(spec, train)
        validation = None if validation is None else _scaled(spec, validation)
    return _fit_and_report(args, spec, train, validation, options)


def _load(path: str | Path, y_path: str | None = None, **options: Any) -> Dataset:
    """:func:`load`, with Parquet lacking pyarrow a ConfigError: one line naming the extra
    (``load`` raises ImportError for it, which ``main`` showed as a traceback)."""
    try:
        return load(path, y_path, **options)
    except ImportError as exc:
        why = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        raise ConfigError(f"{exc}{why}") from None


def _encode(args: argparse.Namespace, data: Dataset) -> tuple[ModelSpec, Dataset]:
    """The model spec for ``--model``/``--task``, and the data with labels 0..k-1."""
    task = _task(args.task, args.model, data.y)
    if task == "regression":
        y = data.y.astype(data.dtype, copy=False)
        outputs = 1 if y.ndim == 1 else y.shape[1]
        spec = ModelSpec(args.model, data.n_features, outputs, args.hidden, task)
        spec = _named(spec, data)
        return spec, data if y is data.y else _replaced(data, y=y)
    if data.y.ndim != 1:
        raise DataError(f"classification needs 1-D labels, got y of shape {data.y.shape}")
    classes, codes = np.unique(data.y, return_inverse=True)
    if len(classes) > args.max_classes:
        raise DataError(
            f"y has {len(classes)} distinct labels, more than --max-classes {args.max_classes}; "
            "for a numeric target pass --task regression, else raise --max-classes"
        )
    if len(classes) < 2 or (args.model == "logreg" and len(classes) != 2):
        wanted = "exactly 2" if args.model == "logreg" else "at least 2"
        raise DataError(
            f"--model {args.model} needs {wanted} distinct labels, y has {len(classes)} "
            f"({classes[:5].tolist()}); use --model softmax or mlp for more classes"
        )
    spec = ModelSpec(args.model, data.n_features, len(classes), args.hidden, task)
    spec = _named(ModelSpec(**{**asdict(spec), "classes": classes.tolist()}), data)
    return spec, _replaced(data, y=codes.astype(np.int64))


def _replaced(data: Dataset, *, X: Any = None, y: Any = None) -> Dataset:
    """``data`` with features ``X`` or targets ``y`` replaced, keeping its weights and
    feature names."""
    X = data.X if X is None else X
    y = data.y if y is None else y
    return Dataset(X, y, sample_weight=data.sample_weight, feature_names=data.feature_names)


def _named(spec: ModelSpec, data: Dataset) -> ModelSpec:
    names = data.feature_names
    return spec if names is None else ModelSpec(**{**asdict(spec), "feature_names": list(names)})


def _column(value: str | None, csv: bool) -> str | int | None:
    """A ``--label-column``/``--weight`` value: an integer names a CSV column by index."""
    if value is not None and csv:
        try:
            return int(value)
        except ValueError:
            pass
    return value


def _class_weight(text: str, spec: ModelSpec) -> str | dict[int, float]:
    """``--class-weight``: "balanced", or ``LABEL=W,...`` by the data's labels, as the
    class-index weights ``Trainer.fit`` takes."""
    if spec.task != "classification" or spec.classes is None:
        raise ConfigError("--class-weight is for classification; this run is a regression")
    if text == "balanced":
        return text
    weights: dict[int, float] = {}
    for item in text.split(","):
        label, sep, value = item.partition("=")
        index = next((i for i, c in enumerate(spec.classes) if str(c) == label.strip()), None)
        if not sep or index is None:
            raise ConfigError(
                f"--class-weight {text!r}: {item!r} is not LABEL=WEIGHT with a label of the "
                f"data ({spec.classes[:10]}); e.g. --class-weight {spec.classes[0]}=1"
            )
        try:
            weights[index] = float(value)
        except ValueError:
            raise ConfigError(f"--class-weight {text!r}: {value!r} is not a number") from None
    return weights


def _task(task: str, model: str, y: npt.NDArray[Any]) -> str:
    """The task ``--task`` asks for, resolved for ``--model`` (auto: integer labels are
    classes), or ConfigError for a model that cannot do it."""
    if task == "auto":
        fixed = {"linear": "regression", "logreg": "classification", "softmax": "classification"}
        integers = y.dtype.kind in "iub"
        task = fixed.get(model, "classification" if integers else "regression")
    allowed = {"linear": "regression", "logreg": "classification", "softmax": "classification"}
    if allowed.get(model, task) != task:
        other = "--model mlp or softmax" if task == "classification" else "--model mlp or linear"
        raise ConfigError(f"--model {model} cannot do {task}; use {other}")
    return task


def _standardized(spec: ModelSpec, train: Dataset) -> ModelSpec:
    """``spec`` with the training features' mean and scale (a constant column keeps 1)."""
    X = np.asarray(train.X, dtype=np.float64)
    mean, std = X.mean(axis=0), X.std(axis=0)
    scale = np.where(std > 0, std, 1.0)
    return ModelSpec(**{**asdict(spec), "mean": mean.tolist(), "scale": scale.tolist()})


def _scaled(spec: ModelSpec, data: Dataset) -> Dataset:
    return _replaced(data, X=spec.features(data.X, data.dtype))


def _check_dask() -> None:
    try:
        from asynctrain.backends import DaskBackend  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--backend dask needs Dask distributed: pip install 'asynctrain[dask]'"
        ) from None


def _check_output(path: str | None, option: str) -> None:
    """Refuse before any work an output path that cannot be written."""
    if path is None:
        return
    target = Path(path)
    parent = target.parent
    if target.is_dir():
        raise ConfigError(f"{option} {path} is a directory; pass a file name")
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: directory '{parent}' does not exist; create it")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{option} {path}: directory '{parent}' is not writable")


def _inspect(args: argparse.Namespace) -> int:
    print(describe(args.checkpoint, as_json=args.json))
    return 0


def _predict(args: argparse.Namespace) -> int:
    _check_output(args.out, "--out")
    spec, params = _read_model(Path(args.model))
    model = spec.build()
    _check_params(Path(args.model), spec, model, params)
    # Scaled in float64: the check of Trainer.predict's rows casts them to the model's
    # dtype and refuses a value past its range, naming it.
    X = spec.features(_read_features(Path(args.data), spec), np.float64)
    values = spec.decode(predictions(model, params, X, None))
    # exactly this name (np.save on a name would append .npy)
    _write(Path(args.out), "--out", lambda file: np.save(file, values, allow_pickle=False))
    print(f"wrote {len(values)} predictions to {args.out}")
    return 0


def _read_model(path: Path) -> tuple[ModelSpec, dict[str, npt.NDArray[Any]]]:
    """The spec and parameters of a `train --out` file or a checkpoint."""
    if path.suffix == ".npz" and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as saved:
                arrays = {key: saved[key] for key in saved.files}
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from exc
        text = arrays.pop(_SPEC_KEY, None)
        if text is None:
            raise DataError(f"{path} was not written by `asynctrain train --out`")
        return ModelSpec.from_json(str(text), str(path)), arrays
    checkpoint = Checkpoint.read(path)
    return _checkpoint_spec(checkpoint), checkpoint.params


def _check_params(path: Path, spec: ModelSpec, model: Any, params: dict[str, Any]) -> None:
    """Refuse parameters that are not the described model's (names, shapes, floats): an
    edited ``--out`` file, or a checkpoint directory whose description is another
    model's, failed inside the model's predict with a KeyError or a matmul error."""
    shapes = {name: value.shape for name, value in model.init(np.random.default_rng(0)).items()}
    found = {name: np.shape(value) for name, value in params.items()}
    dtypes = {name: np.asarray(value).dtype for name, value in params.items()}
    other = next((f"{name} of {dtypes[name]}" for name in found if dtypes[name].kind != "f"), "")
    if found != shapes or other:
        raise DataError(
            f"{path}: its parameters {_shapes(params)}{' (' + other + ')' if other else ''} "
            f"are not those of the {spec.model} model it describes {_shapes(shapes)}; pass "
            "the file `asynctrain train --out` wrote, or the checkpoint directory of that run"
        )


def _shapes(arrays: dict[str, Any]) -> str:
    def shape(value: Any) -> Any:
        return value if isinstance(value, tuple) else np.shape(value)

    return "(" + ", ".join(f"{name} {shape(arrays[name])}" for name in sorted(arrays)) + ")"


def _checkpoint_spec(checkpoint: Checkpoint) -> ModelSpec:
    """The spec written next to a checkpoint by `train`, else the one its manifest implies
    (class indices are then predicted as they are, and features are not scaled)."""
    written = checkpoint.path.parent / SPEC_FILE
    if written.is_file():
        return ModelSpec.from_json(written.read_text(), str(written))
    model = checkpoint.section("model")
    name = _CLASSES.get(str(model.get("class")))
    if name is None:
        raise DataError(f"{checkpoint.path} holds a {model.get('class')}, not a CLI model")
    params = checkpoint.params
    hidden = _columns(params, "W0", 256)
    outputs = int(model.get("n_classes") or _columns(params, "W1", 1))
    task = "regression" if model.get("n_classes") is None else "classification"
    return ModelSpec(name, int(model["n_features"]), outputs, hidden, task)


def _columns(params: dict[str, npt.NDArray[Any]], name: str, default: int) -> int:
    """The columns of the matrix ``params[name]``, or ``default`` if it is none: the
    parameters of another model under a CLI model's class name (a user's own ``MLP``)
    are then refused by :func:`_check_params`, not by an IndexError here."""
    array = params.get(name)
    return default if array is None or array.ndim != 2 else int(array.shape[1])


def _read_features(path: Path, spec: ModelSpec) -> npt.NDArray[Any]:
    """X from an .npy, an .npz holding ``X``, a .csv (by the training columns' names
    when both have them), or anything :func:`load` reads."""
    if path.suffix == ".npy":
        try:
            X: npt.NDArray[Any] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"cannot read {path} as a numeric .npy: {exc}") from exc
    elif path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                X = archive["X"]
        except (ValueError, OSError, EOFError, KeyError) as exc:
            raise DataError(f"cannot read X from {path} ({exc}); save np.savez(path, X=X)") from exc
    elif path.suffix.lower() == ".csv" and spec.feature_names and has_header(path):
        X = read_columns(path, spec.feature_names)
    else:
        X = _load(path).X
    if X.ndim != 2 or X.shape[1] != spec.n_features:
        raise DataError(
            f"{path}: X has shape {X.shape}; the model takes (n_samples, {spec.n_features})"
        )
    return X


def _backend(args: argparse.Namespace) -> str | Backend:
    """The backend name, or a DaskBackend for ``--scheduler`` (which the CLI closes)."""
    if args.backend == "dask":
        _check_dask()
    if args.scheduler is None:
        return str(args.backend)
    if args.backend != "dask":
        raise ConfigError(f"--scheduler needs --backend dask, not --backend {args.backend}")
    from asynctrain.backends import DaskBackend

    return DaskBackend(args.scheduler, workers=args.workers, allow_insecure=args.allow_insecure)


async def _closing(backend: str | Backend, fit: Callable[[], Awaitable[FitResult]]) -> FitResult:
    if isinstance(backend, str):
        return await fit()
    async with backend:
        return await fit()


def _optimizer(args: argparse.Namespace) -> optim.GradientTransformation:
    options = {"momentum": 0.9} if args.optimizer == "sgd" else {}
    return optim.get(args.optimizer, args.lr, **options)


def _fit_and_report(
    args: argparse.Namespace,
    spec: ModelSpec,
    train: Dataset,
    validation: Dataset | None,
    fit_options: dict[str, Any] | None = None,
) -> int:
    """Fit as ``args`` say (``fit_options`` go to :meth:`Trainer.fit`), then print the
    summary and write what was asked for."""
    if args.plot is not None:
        _check_output(args.plot, "--plot")
        check_plotting()
    backend = _backend(args)
    checkpoint_dir = getattr(args, "checkpoint_dir", None)
    options = dict(fit_options or {})
    if checkpoint_dir is not None:
        writer = _spec_writer(Path(checkpoint_dir), spec, resume=args.resume)
        options["callbacks"] = [] if writer is None else [writer]
    model = spec.build()
    trainer = Trainer(
        model,
        _optimizer(args),
        backend=backend,
        workers=args.workers if isinstance(backend, str) else None,
        shards=args.shards,
        batch_size=args.batch_size,
        seed=args.seed,
        mode=args.mode,
        local_steps=args.local_steps,
        staleness=args.staleness,
        shuffle=args.shuffle,
    )
    progress = Progress(enabled=not (args.no_progress or args.json))
    if checkpoint_dir is not None:
        options["checkpoint_dir"] = checkpoint_dir
        options["checkpoint_every"] = args.checkpoint_every
        options["resume"] = args.resume
    fit = lambda: progress.follow(trainer, train, validation, args.epochs, **options)  # noqa: E731
    result = run(_closing(backend, fit))
    summary = _summary(args, model, trainer, result)
    if getattr(args, "out", None):
        _save(Path(args.out), spec, result)
        summary["out"] = args.out
    if args.plot is not None:
        try:
            summary["plot"] = str(plot_curves(result.history, Path(args.plot)))
        except OSError as exc:
            raise _unwritten("--plot", Path(args.plot), exc) from None
    _print_summary(summary, as_json=args.json)
    return 0


def _summary(
    args: argparse.Namespace, model: Any, trainer: Trainer, result: FitResult
) -> dict[str, Any]:
    return {
        "model": type(model).__name__,
        "accuracy": result.val_accuracy,
        "val_loss": result.history[-1].val_loss if result.history else math.nan,
        "epochs": result.epochs,
        "steps": result.steps,
        "seconds": round(result.seconds, 3),
        "samples_per_s": round(result.samples_per_s, 1),
        "backend": args.backend,
        "workers": trainer.workers,
        "mode": args.mode,
        "staleness_mean": round(result.staleness_mean, 3),
        "staleness_max": result.staleness_max,
        "loop_lag_p99_ms": round(result.extra.get("loop_lag_p99_ms", math.nan), 3),
        "loop_lag_max_ms": round(result.extra.get("loop_lag_max_ms", math.nan), 3),
    }


def _spec_writer(directory: Path, spec: ModelSpec, *, resume: bool) -> _SpecWriter | None:
    """Check the checkpoint directory for a fit of ``spec``; return the callback that
    describes the model there (for `predict`), or None when the description there is
    this one already.

    On ``--resume``, refuse a spec other than the one the checkpoints were trained with;
    without it, refuse a directory holding an earlier run's checkpoints (as the fit
    would). The description is written only once the fit holds the directory (its lock,
    taken before ``on_fit_start``), so a fit refused a directory another fit is using
    leaves that fit's description alone. A directory that cannot be made is one clear
    error, before any work."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"--checkpoint-dir {directory} is a file; pass a directory")
    try:
        stale = _spec_is_stale(directory, spec, resume=resume)
    except OSError as exc:
        raise _unwritable(directory, exc) from None
    return _SpecWriter(directory, spec) if stale else None


def _spec_is_stale(directory: Path, spec: ModelSpec, *, resume: bool) -> bool:
    path = directory / SPEC_FILE
    if resume and path.is_file():
        written = ModelSpec.from_json(path.read_text(), str(path))
        if written.feature_names is None and spec.feature_names is not None:
            # Written before column names were kept: the names are new, not different.
            named = ModelSpec(**{**asdict(written), "feature_names": spec.feature_names})
            if named == spec:
                return True
        if written != spec:
            differ = [k for k, v in asdict(spec).items() if asdict(written)[k] != v]
            raise ConfigError(
                f"--resume: {directory} was trained with other {', '.join(differ)}; "
                "pass the same data and options, or another --checkpoint-dir"
            )
        return False
    found = list_checkpoints(directory) if directory.is_dir() else []
    if found and not resume:
        raise ConfigError(
            f"--checkpoint-dir {directory} holds the checkpoints of an earlier run (up to "
            f"{found[-1].name}); pass --resume to continue it, or another --checkpoint-dir"
        )
    directory.mkdir(parents=True, exist_ok=True)
    return True


def _unwritable(directory: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f"--checkpoint-dir {directory}: cannot write {SPEC_FILE} there "
        f"({exc.strerror or exc}); pass a writable directory"
    )


class _SpecWriter(Callback):
    """Writes the model's description into the checkpoint directory at the fit's start,
    once the fit holds the directory."""

    def __init__(self, directory: Path, spec: ModelSpec) -> None:
        self.directory, self.spec = directory, spec

    async def on_fit_start(self, fit: FitControl) -> None:
        data = self.spec.to_json().encode()
        path = self.directory / SPEC_FILE
        try:
            await off_loop(replace_atomically, path, lambda file: file.write(data))
        except OSError as exc:
            raise _unwritable(self.directory, exc) from None


def _save(path: Path, spec: ModelSpec, result: FitResult) -> None:
    """Write the parameters and the spec to exactly ``path`` (arrays only, no pickle)."""
    arrays = {**result.params, _SPEC_KEY: np.array(spec.to_json())}
    # exactly this name (np.savez on a name would append .npz)
    _write(path, "--out", lambda file: np.savez(file, allow_pickle=False, **arrays))


def _write(path: Path, option: str, fill: Callable[[Any], object]) -> None:
    """:func:`replace_atomically`, a failed write (a full disk, a file size limit, a
    directory gone read-only since the check before the work) one line, not a traceback
    after the last epoch."""
    try:
        replace_atomically(path, fill)
    except OSError as exc:
        raise _unwritten(option, path, exc) from None


def _unwritten(option: str, path: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f"{option} {path}: could not write it ({exc.strerror or exc}); free some space or "
        f"pass another {option} (a file that was there is left as it was)"
    )


def _print_summary(summary: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({key: _json_value(value) for key, value in summary.items()}))
        return
    for key, value in summary.items():
        shown = (
            f"{value:.4f}"
            if isinstance(value, float) and key in ("accuracy", "val_loss")
            else value
        )
        print(f"{key:>15}: {shown}")


def _json_value(value: Any) -> Any:
    """JSON has no NaN: a missing figure (e.g. accuracy of a regression) is null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``asynctrain`` command; return its exit status.

    Errors of asynctrain's own (bad data, bad settings) print one line and return 2;
    Ctrl-C returns 130 (resume with ``train --checkpoint-dir DIR --resume``). A standard
    output whose reader has gone (``asynctrain inspect DIR | head``) ends the command
    quietly with 141, the status of a command that SIGPIPE ended (128 + 13), as
    ``grep`` or ``cat`` end there; the rest of the output goes to /dev/null.
    """
    try:
        return _command(argv)
    except BrokenPipeError:
        if not _stdout_gone():
            raise
        # The recipe of the signal module's docs: what is still buffered, and the flush
        # at exit, go to /dev/null instead of raising again there.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141


def _stdout_gone() -> bool:
    """Whether standard output's reader has gone (its pipe polls as an error), so a
    BrokenPipeError is stdout's, not a connection's."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # replaced by an object without one
        return False
    if not hasattr(select, "poll"):  # Windows: stdout's is the likely one
        return True
    poller = select.poll()
    poller.register(fd, 0)  # errors and hang-ups are reported whatever is asked
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _command(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        sys.stdout.flush()  # --help or --version: a closed stdout raises here, not at exit
        raise
    handler: Handler = args.handler
    try:
        status = handler(args)
        sys.stdout.flush()  # (as above)
        return status
    except AsyncTrainError as exc:
        print(f"asynctrain: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = (
            " (rerun with --resume to continue)" if getattr(args, "checkpoint_dir", None) else ""
        )
        print(f"asynctrain: interrupted{resume}", file=sys.stderr)
        return 130
