"""The command line's --mode, --local-steps and --staleness."""

from __future__ import annotations

import json

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
