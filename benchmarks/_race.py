"""The rules of the time-to-accuracy race, shared by asynctrain and every peer.

Each system trains on the same training set and is stopped as soon as its accuracy on the
same test split reaches the target, starting once no thread of the system before it is
still busy. Minibatch systems are checked after every quarter of an epoch, with the clock
paused while they are evaluated and running while they draw an epoch's shuffled order
(asynctrain's fit draws its own on the clock too); batch solvers (lbfgs) are fitted with
a growing iteration budget and timed on the first fit that reaches the target.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

CHECKS_PER_EPOCH = 4


@dataclass
class Outcome:
    """How one system did: seconds to the target (None if not reached) and how far it got."""

    seconds: float | None
    accuracy: float
    epochs: float
    setting: str
    notes: dict[str, Any] = field(default_factory=dict)


class Stopwatch:
    """Training time only: ``pause()`` around evaluation, ``elapsed`` for the rest."""

    def __init__(self) -> None:
        self.elapsed = 0.0
        self._since = time.perf_counter()

    def pause(self) -> None:
        """Stop counting (before an evaluation)."""
        self.elapsed += time.perf_counter() - self._since

    def resume(self) -> None:
        """Count again (after an evaluation)."""
        self._since = time.perf_counter()


def chunks(n: int, epoch: int, seed: int = 0) -> Iterator[npt.NDArray[np.int64]]:
    """The shuffled sample indices of one epoch in :data:`CHECKS_PER_EPOCH` parts."""
    order = np.random.default_rng([seed, epoch, 0xACC]).permutation(n)
    yield from np.array_split(order, CHECKS_PER_EPOCH)


def race_minibatch(
    step: Callable[[npt.NDArray[np.int64]], None],
    accuracy: Callable[[], float],
    *,
    n: int,
    target: float,
    budget: float,
    setting: str,
) -> Outcome:
    """Call ``step(indices)`` on quarter epochs until ``accuracy()`` reaches ``target``.

    Gives up once training time exceeds ``budget`` seconds.
    """
    clock, best, parts = Stopwatch(), 0.0, 0
    epoch = 0
    while clock.elapsed < budget:
        # Drawing the epoch's order is training time, as it is inside asynctrain's fit.
        clock.resume()
        epoch_parts = list(chunks(n, epoch))
        clock.pause()
        for part in epoch_parts:
            clock.resume()
            step(part)
            clock.pause()
            parts += 1
            best = max(best, accuracy())
            if best >= target:
                return Outcome(clock.elapsed, best, parts / CHECKS_PER_EPOCH, setting)
            if clock.elapsed >= budget:
                break
        epoch += 1
    return Outcome(None, best, parts / CHECKS_PER_EPOCH, setting)


def race_batch_solver(
    fit: Callable[[int], Callable[[], float]],
    *,
    target: float,
    budget: float,
    setting: str,
    iterations: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256),
) -> Outcome:
    """Fit with growing ``max_iter``; time the first fit whose accuracy reaches ``target``.

    ``fit(max_iter)`` trains from scratch and returns a function giving test accuracy.
    Gives up when the fits so far took more than ``budget`` seconds in all.
    """
    spent, best = 0.0, 0.0
    for max_iter in iterations:
        began = time.perf_counter()
        accuracy = fit(max_iter)
        seconds = time.perf_counter() - began
        spent += seconds
        reached = accuracy()
        best = max(best, reached)
        if reached >= target:
            return Outcome(seconds, best, 0.0, f"{setting}, max_iter={max_iter}")
        if spent >= budget:
            break
    return Outcome(None, best, 0.0, setting)
