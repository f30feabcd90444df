"""Training curves as a PNG, for ``--plot`` of the CLI (matplotlib, imported on use)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from asynctrain._checkpoint._format import replace_atomically
from asynctrain._events import EpochEvent
from asynctrain._exceptions import ConfigError

_NEEDS = "--plot needs matplotlib: pip install matplotlib (or 'asynctrain[bench]')"


def check_plotting() -> None:
    """Raise :class:`ConfigError` (before any training) when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(_NEEDS) from None


def plot_curves(history: Sequence[EpochEvent], path: Path) -> Path:
    """Draw loss (and validation loss and accuracy, when known) per epoch into ``path``.

    The x axis is ``EpochEvent.epoch`` as the events number it (zero-based).

    Returns:
        ``path``.

    Raises:
        ConfigError: matplotlib is not installed.
        OSError: the file could not be written (one that was there is intact).
    """
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [event.epoch for event in history]
    accuracy = [event.val_accuracy for event in history]
    with_accuracy = any(not math.isnan(a) for a in accuracy)
    figure, axes = plt.subplots(1, 2 if with_accuracy else 1, figsize=(9, 3.5), squeeze=False)
    loss = axes[0][0]
    loss.plot(epochs, [event.loss for event in history], marker="o", label="training loss")
    val_loss = [event.val_loss for event in history]
    if any(not math.isnan(v) for v in val_loss):
        loss.plot(epochs, val_loss, marker="o", label="validation loss")
    loss.set(xlabel="epoch", ylabel="loss", title="loss")
    loss.legend()
    if with_accuracy:
        right = axes[0][1]
        right.plot(epochs, accuracy, marker="o", color="tab:green")
        right.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    for axis in axes[0]:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
    try:
        figure.tight_layout()
        # Beside ``path``, then renamed over it: a full disk leaves the earlier plot whole.
        replace_atomically(path, lambda file: figure.savefig(file, format="png"))
    finally:
        plt.close(figure)
    return path
