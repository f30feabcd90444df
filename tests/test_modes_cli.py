"""Modes from the outside: the command line's --mode, --local-steps, --staleness; the example."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from asynctrain._cli import main


@pytest.mark.parametrize(
    ("flags", "staleness_max"),
    [(["--mode", "ssp", "--staleness", "1"], 1), (["--mode", "local", "--local-steps", "3"], 0)],
)
def test_demo_trains_in_a_mode(
    capsys: pytest.CaptureFixture[str], flags: list[str], staleness_max: int
) -> None:
    argv = ["demo", "--n", "4000", "--epochs", "1", "--json", "--workers", "2", *flags]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mode"] == flags[1]
    assert summary["staleness_max"] == staleness_max
    assert summary["accuracy"] > 0.5


def test_an_option_of_another_mode_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--n", "1000", "--staleness", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("asynctrain: error: staleness=2 is not an option of mode='sync'")
    assert "use mode='ssp'" in err


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "modes.py"


async def test_modes_example_learns_in_every_mode() -> None:
    results = await runpy.run_path(str(EXAMPLE))["main"](6000)
    assert set(results) == {"sync", "local", "ssp", "async"}
    assert all(r.val_accuracy > 0.8 for r in results.values())
    assert results["ssp"].staleness_max == 2
    assert results["async"].staleness_max > 0
