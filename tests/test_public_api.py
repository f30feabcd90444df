"""The public namespace is locked: adding or removing a name is a deliberate change."""

from __future__ import annotations

import inspect

import asynctrain as at

PUBLIC = [
    "AsyncTrainError",
    "BackendError",
    "CSVLogger",
    "Callback",
    "CheckpointError",
    "ConfigError",
    "ConfigTypeError",
    "DataError",
    "DataTypeError",
    "EarlyStopping",
    "EpochEvent",
    "Event",
    "FitControl",
    "FitResult",
    "Job",
    "JobEvent",
    "LagStats",
    "Lagged",
    "LoopLagMonitor",
    "ModelCheckpoint",
    "NonFiniteError",
    "Prediction",
    "PrometheusCollector",
    "ReduceLROnPlateau",
    "ServiceMetrics",
    "ShardFailedError",
    "ShardResult",
    "StateError",
    "StatusEvent",
    "StepEvent",
    "TensorBoardLogger",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "TrainingService",
    "backends",
    "data",
    "fit",
    "models",
    "modes",
    "optim",
    "run",
]


def test_all_is_locked() -> None:
    # ruff's RUF022 keeps every __all__ sorted; this test keeps the top level deliberate.
    assert at.__all__ == PUBLIC


def test_every_name_in_all_exists() -> None:
    for module in (at, at.models, at.optim, at.data, at.backends):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_every_public_name_has_a_docstring() -> None:
    for module in (at, at.models, at.optim, at.data, at.backends):
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue  # modules, constants and type aliases
            assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"


def test_errors_form_one_tree() -> None:
    errors = [getattr(at, n) for n in at.__all__ if n.endswith("Error")]
    assert all(issubclass(e, at.AsyncTrainError) for e in errors)
    assert issubclass(at.ConfigError, ValueError)
    assert issubclass(at.ConfigTypeError, TypeError)
    assert issubclass(at.DataTypeError, TypeError)
