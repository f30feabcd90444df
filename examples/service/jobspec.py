"""What a `POST /jobs` request may ask for, checked field by field, and how it becomes a job.

Every limit is a setting of the service (:class:`Settings`); a request that breaks one
gets a :class:`BadRequest` naming the field and the allowed range. Data files are named,
never given as paths: a name is resolved inside the service's data directory only.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asynctrain as at

FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\.npz")
PROBLEMS = {"softmax": "softmax", "mlp": "mlp", "logreg": "logreg"}  # problem -> model
MODELS = ("softmax", "mlp", "logreg", "linear")
FIELDS: dict[str, type] = {
    "problem": str,
    "file": str,
    "model": str,
    "n": int,
    "epochs": int,
    "batch_size": int,
    "hidden": int,
    "seed": int,
    "lr": float,
}


class BadRequest(ValueError):
    """The request asks for something the service does not allow (HTTP 400)."""


@dataclass(frozen=True)
class Settings:
    """Where the service keeps uploads, how it trains, and the limits of a request."""

    data_dir: Path
    backend: str = "thread"
    workers: int | None = None
    max_running: int = 2
    max_body: int = 1 << 20  # bytes of a JSON request
    max_upload: int = 64 << 20  # bytes of an uploaded .npz, and of its arrays unpacked
    max_rows: int = 1000  # rows of one predict request
    max_queued: int = 8  # jobs waiting for a running slot; more get 429 (each holds data)
    retry_after: int = 10  # seconds, sent with a 429
    keep_finished: int = 20  # finished jobs remembered (each keeps its parameters)
    max_classes: int = 1000  # classes of a classifier: a label of 1e5 would size the model
    max_params: int = 10_000_000  # parameters of a job's model: features x hidden sizes it
    event_rate: float = 4.0  # step events a second per SSE stream, unless ?rate= says
    stream_grace: float = 2.0  # seconds, at shutdown, for SSE clients to read the end
    limits: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {
            "n": (100, 200_000),
            "epochs": (1, 100),
            "batch_size": (1, 8192),
            "hidden": (1, 1024),
            "seed": (0, 2**32 - 1),
            "lr": (1e-6, 10.0),
        }
    )


@dataclass(frozen=True)
class JobSpec:
    """A checked `POST /jobs` request."""

    problem: str | None = None
    file: str | None = None
    model: str | None = None
    n: int | None = None
    epochs: int = 3
    batch_size: int = 256
    hidden: int = 64
    seed: int = 0
    lr: float = 1e-2


def parse_spec(body: object, settings: Settings) -> JobSpec:
    """Check a decoded JSON body field by field; raise BadRequest naming the first problem."""
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object, e.g. {"problem": "softmax"}')
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; fields are {', '.join(FIELDS)}")
    for name, value in body.items():
        if value is not None:
            _check_field(name, value, settings)
    if (body.get("problem") is None) == (body.get("file") is None):
        raise BadRequest('give exactly one of "problem" (a reference problem) or "file"')
    if body.get("problem") is not None and body["problem"] not in PROBLEMS:
        raise BadRequest(f"unknown problem {body['problem']!r}; choose one of {list(PROBLEMS)}")
    if body.get("file") is not None and body.get("model") is None:
        raise BadRequest(f'a "file" job needs a "model", one of {list(MODELS)}')
    if body.get("model") is not None and body["model"] not in MODELS:
        raise BadRequest(f"unknown model {body['model']!r}; choose one of {list(MODELS)}")
    return JobSpec(**body)


def _check_field(name: str, value: object, settings: Settings) -> None:
    expected = FIELDS[name]
    accepted = (int, float) if expected is float else (expected,)
    if isinstance(value, bool) or not isinstance(value, accepted):
        raise BadRequest(f"{name} must be a JSON {expected.__name__}, got {value!r}")
    if name in settings.limits:
        low, high = settings.limits[name]
        if not low <= value <= high:  # type: ignore[operator]
            raise BadRequest(f"{name} must be in [{low:g}, {high:g}], got {value!r}")


def data_path(data_dir: Path, name: str) -> Path:
    """The file called ``name`` inside ``data_dir``; BadRequest for anything else.

    Only plain ``.npz`` names are accepted, and the resolved path (symlinks followed)
    must still lie in ``data_dir``: no separators, no ``..``, no escape by a link.
    """
    if not isinstance(name, str) or not FILE_NAME.fullmatch(name):
        raise BadRequest(
            f"file {name!r} is not a valid name: use letters, digits, '_', '-', '.' "
            "and the .npz extension, without any directory"
        )
    root = data_dir.resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise BadRequest(f"file {name!r} is not inside the data directory")
    return path


def build(spec: JobSpec, settings: Settings) -> tuple[Any, at.data.Dataset, at.data.Dataset]:
    """The model and the (train, validation) data of a job; runs in a thread."""
    if spec.problem is not None:
        data = at.data.synthetic(spec.problem, n=spec.n or 20_000, seed=spec.seed)
        kind = spec.model or PROBLEMS[spec.problem]
    else:
        data = _load(data_path(settings.data_dir, spec.file or ""), settings.max_upload)
        kind = spec.model or ""
    if data.n_samples > settings.limits["n"][1]:
        raise BadRequest(f"file {spec.file!r} has {data.n_samples} rows; at most "
                         f"{settings.limits['n'][1]:g} per job")  # fmt: skip
    n_classes = _classes(data, settings) if kind in ("softmax", "mlp") else 2
    params = parameter_count(kind, data.n_features, n_classes, spec.hidden)
    if params > settings.max_params:
        raise BadRequest(
            f"a {kind} model of {data.n_features} features"
            f"{f' and {spec.hidden} hidden units' if kind == 'mlp' else ''} has {params} "
            f"parameters; at most {settings.max_params} per job (fewer features or hidden units)"
        )
    train, validation = data.split(0.1, seed=spec.seed)
    return model_for(kind, data.n_features, n_classes, spec.hidden), train, validation


def parameter_count(kind: str, n_features: int, n_classes: int, hidden: int) -> int:
    """Parameters of the model :func:`model_for` builds (weights and biases)."""
    if kind == "mlp":
        return (n_features + 1) * hidden + (hidden + 1) * n_classes
    if kind == "softmax":
        return (n_features + 1) * n_classes
    return n_features + 1


def _classes(data: at.data.Dataset, settings: Settings) -> int:
    """The class count of integer labels 0..k-1, refusing more than ``max_classes``."""
    top = float(data.y.max())
    if top + 1 > settings.max_classes or float(data.y.min()) < 0 or not top.is_integer():
        raise BadRequest(
            f"a classifier needs integer labels in [0, {settings.max_classes - 1}] "
            f"(at most {settings.max_classes} classes); the labels reach {top:g}"
        )
    return int(top) + 1


def model_for(kind: str, n_features: int, n_classes: int, hidden: int) -> Any:
    """The model a request's ``model`` name stands for, sized for the data."""
    if kind == "softmax":
        return at.models.SoftmaxRegression(n_features, n_classes)
    if kind == "mlp":
        return at.models.MLP((n_features, hidden, n_classes))
    if kind == "logreg":
        return at.models.LogisticRegression(n_features)
    return at.models.LinearRegression(n_features)


def _load(path: Path, max_bytes: int) -> at.data.Dataset:
    """Load an uploaded .npz, refusing one that would unpack beyond ``max_bytes``."""
    if not path.is_file():
        raise BadRequest(f"no uploaded file {path.name!r}; PUT it to /uploads/{path.name}")
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise BadRequest(f"file {path.name!r} is not a valid .npz archive") from exc
    if unpacked > max_bytes:
        raise BadRequest(f"file {path.name!r} unpacks to {unpacked} bytes; limit {max_bytes}")
    return at.data.load(path)
