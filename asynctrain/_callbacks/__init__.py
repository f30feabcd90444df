"""The callbacks asynctrain ships: stopping, saving, learning-rate plateaus and logs."""

from __future__ import annotations

from asynctrain._callbacks._logs import CSVLogger, TensorBoardLogger
from asynctrain._callbacks._plateau import ReduceLROnPlateau
from asynctrain._callbacks._saving import ModelCheckpoint
from asynctrain._callbacks._stopping import EarlyStopping

__all__ = [
    "CSVLogger",
    "EarlyStopping",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "TensorBoardLogger",
]
