"""Every example under examples/ runs, quickly, and does what it says."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_there_are_examples() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_as_a_script(path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip(), "an example should print what it did"


async def test_quickstart_learns() -> None:
    module = runpy.run_path(str(EXAMPLES[0].parent / "quickstart.py"))
    assert await module["main"](6000) > 0.8


async def test_checkpoint_resume_is_exact() -> None:
    module = runpy.run_path(str(EXAMPLES[0].parent / "checkpoint_resume.py"))
    assert await module["main"](2000)


async def test_stream_example_learns() -> None:
    module = runpy.run_path(str(EXAMPLES[0].parent / "stream_async_generator.py"))
    assert await module["main"](10_000) > 0.85
