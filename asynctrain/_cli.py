"""The ``asynctrain`` command: demo, train, inspect, bench (and the commands other modules
register)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asynctrain import models, optim
from asynctrain._checkpoint import describe
from asynctrain._config import MODE_OPTIONS
from asynctrain._events import FitResult
from asynctrain._exceptions import AsyncTrainError, ConfigError
from asynctrain._progress import Progress
from asynctrain._runtime import run
from asynctrain._trainer import Trainer
from asynctrain.backends import Backend, backend_names
from asynctrain.data import Dataset, load, synthetic

Handler = Callable[[argparse.Namespace], int]

OPTIMIZERS: dict[str, Callable[[float], optim.GradientTransformation]] = {
    "adam": optim.adam,
    "adamw": optim.adamw,
    "sgd": lambda lr: optim.sgd(lr, momentum=0.9),
    "rmsprop": optim.rmsprop,
    "adagrad": optim.adagrad,
}


def build_model(name: str, n_features: int, n_classes: int, hidden: int) -> Any:
    """The model a CLI ``--model`` name stands for, sized for the data."""
    if name == "linear":
        return models.LinearRegression(n_features)
    if name == "logreg":
        return models.LogisticRegression(n_features)
    if name == "softmax":
        return models.SoftmaxRegression(n_features, n_classes)
    return models.MLP((n_features, hidden, n_classes))


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
    parser.add_argument("--optimizer", default="adam", choices=sorted(OPTIMIZERS))
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
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``asynctrain`` command."""
    parser = argparse.ArgumentParser(prog="asynctrain", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train a reference problem on all cores")
    demo.add_argument("--problem", default="softmax", choices=["softmax", "mlp", "logreg"])
    demo.add_argument("--n", type=int, default=None, help="samples (default: the problem's)")
    _add_training_options(demo, epochs=5, lr=3e-3)
    demo.set_defaults(handler=_demo)
    train = commands.add_parser("train", help="train a model on a .npz, .npy or .csv file")
    train.add_argument("data", help="X/y .npz, X .npy (with --labels), a directory or .csv")
    train.add_argument("--labels", default=None, help="y .npy to go with an X .npy")
    train.add_argument("--model", required=True, choices=["linear", "logreg", "softmax", "mlp"])
    train.add_argument("--hidden", type=int, default=256, help="MLP hidden units")
    train.add_argument("--validation-split", type=float, default=0.1)
    train.add_argument("--out", default=None, help="save the parameters here (.npz)")
    _add_training_options(train, epochs=5, lr=1e-2)
    train.set_defaults(handler=_train)
    inspect = commands.add_parser("inspect", help="verify a checkpoint and print what it holds")
    inspect.add_argument("checkpoint", help="a .ckpt file, or a directory (its latest)")
    inspect.add_argument("--json", action="store_true", help="print the manifest as JSON")
    inspect.set_defaults(handler=_inspect)
    _add_bench_parser(commands)
    return parser


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
    model = build_model(args.problem, data.n_features, n_classes, hidden=256)
    return _fit_and_report(args, model, data)


def _train(args: argparse.Namespace) -> int:
    data = load(args.data, args.labels)
    n_classes = int(data.y.max()) + 1 if args.model in ("softmax", "mlp") else 2
    model = build_model(args.model, data.n_features, n_classes, args.hidden)
    return _fit_and_report(args, model, data)


def _inspect(args: argparse.Namespace) -> int:
    print(describe(args.checkpoint, as_json=args.json))
    return 0


def _backend(args: argparse.Namespace) -> str | Backend:
    """The backend name, or a DaskBackend for ``--scheduler`` (which the CLI closes)."""
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


def _fit_and_report(args: argparse.Namespace, model: Any, data: Dataset) -> int:
    train, validation = data.split(getattr(args, "validation_split", 0.1), seed=args.seed)
    backend = _backend(args)
    trainer = Trainer(
        model,
        OPTIMIZERS[args.optimizer](args.lr),
        backend=backend,
        workers=args.workers if isinstance(backend, str) else None,
        shards=args.shards,
        batch_size=args.batch_size,
        seed=args.seed,
        mode=args.mode,
        local_steps=args.local_steps,
        staleness=args.staleness,
    )
    progress = Progress(enabled=not (args.no_progress or args.json))
    fit = lambda: progress.follow(trainer, train, validation, args.epochs)  # noqa: E731
    result = run(_closing(backend, fit))
    summary = {
        "model": type(model).__name__,
        "accuracy": result.val_accuracy,
        "val_loss": result.history[-1].val_loss if result.history else float("nan"),
        "epochs": result.epochs,
        "steps": result.steps,
        "seconds": round(result.seconds, 3),
        "samples_per_s": round(result.samples_per_s, 1),
        "backend": args.backend,
        "workers": trainer.workers,
        "mode": args.mode,
        "staleness_mean": round(result.staleness_mean, 3),
        "staleness_max": result.staleness_max,
        "loop_lag_p99_ms": round(result.extra.get("loop_lag_p99_ms", float("nan")), 3),
        "loop_lag_max_ms": round(result.extra.get("loop_lag_max_ms", float("nan")), 3),
    }
    if getattr(args, "out", None):
        np.savez(args.out, allow_pickle=False, **result.params)
        summary["out"] = args.out
    _print_summary(summary, as_json=args.json)
    return 0


def _print_summary(summary: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    for key, value in summary.items():
        shown = (
            f"{value:.4f}"
            if isinstance(value, float) and key in ("accuracy", "val_loss")
            else value
        )
        print(f"{key:>15}: {shown}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``asynctrain`` command; return its exit status.

    Errors of asynctrain's own (bad data, bad settings) print one line and return 2.
    """
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except AsyncTrainError as exc:
        print(f"asynctrain: error: {exc}", file=sys.stderr)
        return 2
