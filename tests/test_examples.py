"""Every example under examples/ runs, quickly, and does what it says."""

from __future__ import annotations

import operator
import re
import runpy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_there_are_examples() -> None:
    assert EXAMPLES


# The test accuracy an example's script run must print (``test accuracy 0.975``). These
# examples train for half a minute each: their script run is where the bound is checked,
# not a second, in-process run of the same main() with the same bits. Printed to 3 places,
# k/449 test rows compare with either bound as the unrounded accuracy does.
ACCURACY: dict[str, tuple[Callable[[float, float], bool], float]] = {
    "torch_cnn_digits": (operator.ge, 0.97),
    "jax_model": (operator.gt, 0.94),
}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_as_a_script(path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip(), "an example should print what it did"
    if path.stem in ACCURACY:
        printed = re.findall(r"test accuracy (\d\.\d+)", done.stdout)
        assert printed, done.stdout[-2000:]
        meets, bound = ACCURACY[path.stem]
        assert meets(float(printed[-1]), bound), done.stdout[-2000:]


async def test_quickstart_learns() -> None:
    module = runpy.run_path(str(EXAMPLES[0].parent / "quickstart.py"))
    assert await module["main"](6000) > 0.8


def _example(name: str) -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLES[0].parent / f"{name}.py"))


async def test_stream_events_stops_where_the_caller_says() -> None:
    steps = await _example("stream_events")["main"](4000, target_loss=0.6)
    assert 0 < steps < 5 * 13  # stopped before the 5 epochs of 13 steps were done


async def test_custom_model_passes_its_gradient_check_and_learns() -> None:
    assert await _example("custom_model")["main"](6000) > 0.85


async def test_custom_optimizer_chain_learns() -> None:
    assert await _example("custom_optimizer")["main"](6000, epochs=2) > 0.8


async def test_checkpoint_resume_is_exact() -> None:
    assert await _example("checkpoint_resume")["main"](2000)


async def test_elastic_pool_keeps_every_bit() -> None:
    assert await _example("elastic_pool")["main"](4000)


async def test_stream_example_learns() -> None:
    assert await _example("stream_async_generator")["main"](10_000) > 0.85
