"""The timing window the engine decides from (``_engine/_window.py``): its median against
``statistics.median`` of the same last values, as they arrive."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from asynctrain._engine._window import Window


@pytest.mark.parametrize("size", [1, 2, 3, 16])
def test_the_median_is_that_of_the_last_values_as_each_arrives(size: int) -> None:
    values = np.random.default_rng(size).exponential(size=50).tolist()
    window = Window(size)
    for count, value in enumerate(values, start=1):
        window.add(value)
        last = values[max(0, count - size) : count]
        assert window.median == statistics.median(last)
        assert len(window) == len(last)


def test_an_empty_window_has_an_infinite_median() -> None:
    window = Window(4)
    assert window.median == math.inf
    assert not window
