"""Checkpoints: atomic, pickle-free files of a trainer's state, and exact resume.

* :mod:`._format` writes the file (a zip of JSON and ``.npy`` members) atomically and
  sweeps the temporaries of dead writers; :mod:`._verify` reads it, trusting nothing.
* :mod:`._content` says what a checkpoint of a trainer holds and checks that a trainer can
  continue from it (every mismatch listed).
* :mod:`._session` runs disk work on a writer thread, drives checkpoints during ``fit``
  and gives the trainer's ``save``, ``load`` and ``restore`` their parts.
* :mod:`._inspect` describes a checkpoint for ``asynctrain inspect``.

The optimizer state travels as arrays plus a JSON spec (:mod:`asynctrain.optim._tree`).
"""

from asynctrain._checkpoint._content import Checkpoint, checkpoint_name, list_checkpoints
from asynctrain._checkpoint._format import replace_atomically, sweep, temporaries
from asynctrain._checkpoint._inspect import describe
from asynctrain._checkpoint._session import CheckpointSession, PathLike, Resume, checked_options
from asynctrain._checkpoint._verify import read

__all__ = [
    "Checkpoint",
    "CheckpointSession",
    "PathLike",
    "Resume",
    "checked_options",
    "checkpoint_name",
    "describe",
    "list_checkpoints",
    "read",
    "replace_atomically",
    "sweep",
    "temporaries",
]
