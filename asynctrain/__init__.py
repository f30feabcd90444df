"""asynctrain: concurrent machine-learning training on asyncio.

An event loop runs one lightweight task per shard of each batch; the gradient math runs on
a thread, process or Dask executor; results come back through an ``asyncio.Queue`` and are
reduced in shard order into one optimizer update.

Example:
    >>> import asynctrain as at
    >>> data = at.data.synthetic("softmax", n=4000)
    >>> model = at.models.SoftmaxRegression(128, 10)
    >>> result = at.run(at.fit(model, data, optimizer=at.optim.adam(1e-2), epochs=2))
    >>> result.epochs
    2
"""

import importlib
from typing import TYPE_CHECKING, Any

from asynctrain import backends, data, models, modes, optim
from asynctrain._callbacks import (
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TensorBoardLogger,
)
from asynctrain._config import TrainConfig
from asynctrain._control import FitControl
from asynctrain._engine._update import TrainState
from asynctrain._engine._work import ShardResult
from asynctrain._events import (
    Callback,
    EpochEvent,
    Event,
    FitResult,
    StepEvent,
)
from asynctrain._exceptions import (
    AsyncTrainError,
    BackendError,
    CheckpointError,
    ConfigError,
    ConfigTypeError,
    DataError,
    DataTypeError,
    NonFiniteError,
    ShardFailedError,
    StateError,
)
from asynctrain._fit import fit
from asynctrain._monitor import LagStats, LoopLagMonitor
from asynctrain._runtime import run
from asynctrain._serving._broadcast import Lagged
from asynctrain._serving._job import Job, JobEvent, Prediction, StatusEvent
from asynctrain._serving._metrics import PrometheusCollector, ServiceMetrics
from asynctrain._serving._service import TrainingService
from asynctrain._trainer import Trainer
from asynctrain._version import __version__ as __version__

if TYPE_CHECKING:
    from asynctrain import sklearn as sklearn


__all__ = [
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


def __getattr__(name: str) -> Any:
    # asynctrain.sklearn needs scikit-learn (an optional extra): imported on first use only.
    if name == "sklearn":
        return importlib.import_module("asynctrain.sklearn")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
