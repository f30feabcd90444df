"""``asynctrain bench``: the suite list, the table and JSON, failing and skipped suites; run
at smoke size.

Nothing here checks a speed: these tests check that every figure is produced and reported
(performance claims come from the full bench, see docs/benchmarks.md).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import math
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import benchmarks as bench
from asynctrain import Trainer, run
from asynctrain._cli import main
from asynctrain.data import Dataset, synthetic
from benchmarks import Figure, ratio_figure, skipped_figure
from benchmarks import _command as bench_command_module
from benchmarks import _suites as suites
from benchmarks._accuracy import SHORT_RACE_S, _again, optimizer_for
from benchmarks._figure import at_most
from benchmarks._handwritten import SGD, train_epochs
from benchmarks._overhead import relative_difference
from benchmarks._peers import PEER_SETTINGS, PeerSetting, numpy_optimizer, peers_for
from benchmarks._race import Outcome
from benchmarks._report import text_table
from benchmarks._scale import smoke
from benchmarks._workloads import initial_params, model_for, timed_epochs

OURS = ("overhead", "scaling", "accuracy", "roofline", "latency", "handoff")
EXPECTED = [
    *(f"overhead/{p}" for p in ("logreg", "softmax", "mlp")),
    *(f"scaling/mlp/{b}" for b in ("thread", "process")),
    *(f"time_to_accuracy/{p}" for p in ("logreg", "softmax", "mlp")),
    *(f"time_to_accuracy/{p}/asynctrain" for p in ("logreg", "softmax", "mlp")),
    *(
        f"time_to_accuracy/{p}/{lib}-{opt}-{t}t"
        for p in ("logreg", "softmax", "mlp")
        for lib in ("numpy", "torch")
        for opt in ("sgd", "adam")
        for t in (1, 2)
    ),
    "time_to_accuracy/logreg/sklearn-sgd",
    "time_to_accuracy/softmax/sklearn-logreg",
    "time_to_accuracy/mlp/sklearn-mlp",
    *(f"roofline/{p}" for p in ("logreg", "softmax", "mlp")),
    *(f"loop_lag/{s}" for s in ("idle", "thread", "process")),
    *(
        f"task_cost/{b}/{how}"
        for b in ("inline", "thread", "process")
        for how in ("in_flight", "single")
    ),
    *(f"handoff/{b}{w}" for b in ("thread", "process") for w in ("", "/nomath")),
]


BENCHMARKS = Path(bench.__file__).parent


def _defines_async_run(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.AsyncFunctionDef) and n.name == "run" for n in tree.body)


def test_every_suite_module_is_listed_and_every_listed_suite_exists() -> None:
    with_run = {f"benchmarks.{p.stem}" for p in BENCHMARKS.glob("_*.py") if _defines_async_run(p)}
    listed = {suite.module for suite in suites.SUITES.values()}
    assert with_run <= listed, with_run - listed
    # torch's suite may come from another branch; every other listed module is here.
    assert listed - with_run <= {"benchmarks._torch"}, listed - with_run
    assert set(OURS) <= set(suites.SUITES)
    assert {"torch", "dask"} <= set(suites.SUITES)


def test_the_sparse_suite_runs_alone(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m benchmarks._sparse [--quick]`` is the bench with ``--only sparse`` (it
    exited 0 having run nothing before it had a ``__main__`` guard)."""
    path = str(BENCHMARKS / "_sparse.py")
    monkeypatch.setattr(sys, "argv", [path, "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(path, run_name="__main__")
    assert exited.value.code == 0
    assert "usage: python -m benchmarks._sparse" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(suites.SUITES))
def test_every_suite_module_answers_help_at_once(name: str) -> None:
    """``python -m benchmarks._<suite> --help`` prints the bench's usage and exits 0 at
    once: ``_stream``, ``_parquet``, ``_checkpoint``, ``_sklearn`` and ``_dask`` ran their
    whole suite instead, and ``_modes`` had a parser of its own."""
    suite = suites.SUITES[name]
    missing = [m for m in suite.needs if importlib.util.find_spec(m) is None]
    if missing or importlib.util.find_spec(suite.module) is None:
        pytest.skip(f"{suite.module} cannot run here ({missing or 'not in this checkout'})")
    done = subprocess.run(
        [sys.executable, "-m", suite.module, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=BENCHMARKS.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: python -m {suite.module} "), done.stdout[:500]
    assert "--quick" in done.stdout


def _suite_file(directory: Path, name: str, body: str) -> suites.Suite:
    """A suite module ``name`` in ``directory`` (already on sys.path)."""
    (directory / f"{name}.py").write_text(textwrap.dedent(body))
    return suites.Suite(name)


FINE = """
    from benchmarks import Figure, ratio_figure

    async def run(quick: bool) -> list[Figure]:
        return [ratio_figure("fine/x", [2.0], [1.0], reference="r", command="c", target="<= 3")]
"""


@pytest.mark.slow
def test_smoke_run_writes_every_figure_with_its_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, table = tmp_path / "out.json", tmp_path / "table.md"
    code = main(
        ["bench", "--smoke", "--only", ",".join(OURS), "--json", str(out), "--markdown", str(table)]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    doc = json.loads(out.read_text())
    assert {s["status"] for s in doc["suites"].values()} == {"ok"}
    names = {f["name"] for f in doc["figures"]}
    assert set(EXPECTED) <= names, set(EXPECTED) - names
    for figure in doc["figures"]:
        assert figure["command"].startswith("asynctrain bench --only "), figure
        assert figure["value"] is not None or figure["note"], figure
    assert doc["machine"]["cores"] >= 1
    assert doc["machine"]["blas"], "threadpoolctl should see numpy's BLAS"
    assert doc["command"].startswith("asynctrain bench --smoke")
    assert "overhead/mlp" in printed
    assert "| overhead/mlp |" in table.read_text()


def test_a_failing_suite_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import _command

    monkeypatch.syspath_prepend(str(tmp_path))
    broken_body = """
        async def run(quick: bool) -> list[object]:
            raise RuntimeError("the suite broke")
    """
    registry = {
        "broken": _suite_file(tmp_path, "at_test_broken_suite", broken_body),
        "fine": _suite_file(tmp_path, "at_test_fine_suite", FINE),
    }
    monkeypatch.setattr(_command, "SUITES", registry)
    out = tmp_path / "out.json"
    assert main(["bench", "--json", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "FAILED" in printed
    assert "the suite broke" in printed
    doc = json.loads(out.read_text())
    assert doc["suites"]["broken"]["status"] == "failed"
    assert "RuntimeError: the suite broke" in doc["suites"]["broken"]["error"]
    assert doc["figures"][0]["met"] is True


@pytest.mark.parametrize(
    ("option", "where", "says"),
    [
        ("--json", "a_file/out.json", "--json"),
        ("--json", ".", "is a directory"),
        ("--markdown", "a_file/table.md", "--markdown"),
        ("--plot", "a_file", "--plot"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_any_suite_runs(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    where: str,
    says: str,
) -> None:
    # The outputs were written after the last suite: a bad path failed there with a
    # traceback (FileExistsError, IsADirectoryError), minutes of results lost.
    from benchmarks import _command

    monkeypatch.syspath_prepend(str(tmp_path))
    ran = tmp_path / "ran"
    body = FINE.replace(
        "    async def run(quick: bool) -> list[Figure]:\n",
        (
            "    async def run(quick: bool) -> list[Figure]:\n"
            f"        open({str(ran)!r}, 'w').close()\n"
        ),
    )
    monkeypatch.setattr(_command, "SUITES", {"fine": _suite_file(tmp_path, "at_test_out", body)})
    (tmp_path / "a_file").write_text("not a directory")
    assert main(["bench", option, str(tmp_path / where)]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert str(tmp_path) in err
    assert "Traceback" not in err
    assert not ran.exists()


def test_plot_without_matplotlib_is_refused_before_any_suite_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from benchmarks import _command

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(_command, "SUITES", {"never": suites.Suite("at_test_never_imported")})
    assert main(["bench", "--plot", str(tmp_path / "charts")]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "charts").exists()


def test_markdown_makes_its_directory_as_json_does(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from benchmarks import _command

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_command, "SUITES", {"fine": _suite_file(tmp_path, "at_test_md", FINE)})
    table, out = tmp_path / "new" / "table.md", tmp_path / "new2" / "out.json"
    assert main(["bench", "--markdown", str(table), "--json", str(out)]) == 0
    assert "| fine/x |" in table.read_text()
    assert json.loads(out.read_text())["figures"][0]["name"] == "fine/x"


def test_unknown_suite_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--only", "nope"]) == 2
    assert "choose from" in capsys.readouterr().err


@pytest.mark.parametrize("only", [",", "", " , "])
def test_an_only_naming_no_suite_is_a_one_line_error(
    only: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--only ","`` ran every suite (minutes of measuring) instead of none."""

    def ran(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"suites ran: {args}")

    monkeypatch.setattr(bench_command_module, "_run_all", ran)
    assert main(["bench", "--only", only]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--only names no suite; choose from overhead" in err


def test_figure_targets_and_skips() -> None:
    ok = ratio_figure(
        "a", [1.0, 1.2, 1.1], [1.0, 1.0, 1.0], reference="r", command="c", target="<= 1.10"
    )
    assert ok.value == pytest.approx(1.1)
    assert ok.met() is True
    assert ratio_figure("b", [2.0], [1.0], reference="r", command="c", target=">= 1.7").met()
    assert ratio_figure("c", [2.0], [1.0], reference="r", command="c").met() is None
    skipped = skipped_figure("d", "torch is not installed", unit="s", reference="r", command="c")
    assert skipped.skipped
    assert skipped.met() is None
    assert skipped.as_dict()["value"] is None
    assert "torch is not installed" in text_table([suites.SuiteOutcome("s", [skipped, ok])])


@pytest.mark.parametrize(
    ("bound", "value", "met"),
    [
        (5.23681640625, 5.201668739318848, True),  # the run whose "<= 5.2" read as missed
        (5.23681640625, 5.23681640625, True),  # at the bound
        (5.23681640625, 5.2375, False),  # above it, past the rounding up
        (24.0, 24.0, True),
    ],
)
def test_a_computed_bound_is_met_by_values_within_it(bound: float, value: float, met: bool) -> None:
    figure = Figure("m", value, value, value, "MB", "r", 1, "c", target=at_most(bound))
    assert figure.met() is met


def test_the_numpy_loop_is_the_same_math_as_asynctrain() -> None:
    for problem in ("logreg", "softmax", "mlp"):
        data = synthetic(problem, n=1500)
        ours = run(timed_epochs(problem, data))[1]
        theirs = train_epochs(problem, initial_params(problem), data, lr=1e-3, batch_size=512)
        assert relative_difference(ours, theirs) < 1e-4, problem


async def _fit_one_epoch(problem: str, data: Dataset, setting: PeerSetting) -> dict[str, Any]:
    trainer = Trainer(model_for(problem), optimizer_for(setting), batch_size=setting.batch_size)
    async with trainer:
        return dict((await trainer.fit(data, epochs=1)).params)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("problem", ["logreg", "softmax", "mlp"])
def test_the_numpy_peer_steps_like_asynctrain(problem: str, optimizer: str) -> None:
    """The numpy peer's optimizer and gradients, a few steps on the same batches, end where
    asynctrain's inline backend does with the same setting (SGD with momentum, or Adam)."""
    data = synthetic(problem, n=600)
    setting = PEER_SETTINGS[problem][optimizer]._replace(batch_size=200)
    theirs = train_epochs(
        problem,
        initial_params(problem),
        data,
        lr=setting.learning_rate,
        batch_size=setting.batch_size,
        optimizer=lambda params: numpy_optimizer(setting, params),
    )
    ours = run(_fit_one_epoch(problem, data, setting))
    start = initial_params(problem)
    assert relative_difference(ours, start) > 1e-3, "the steps moved nothing"
    assert relative_difference(ours, theirs) < 1e-4, (problem, optimizer)


def test_the_numpy_sgd_step_is_pytorchs() -> None:
    """One SGD-with-momentum step and the next, against torch.optim.SGD on the same grads."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    grads = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(2)]
    params = {"w": w.copy()}
    sgd = SGD(params, lr=0.5, momentum=0.9)
    tw = torch.nn.Parameter(torch.from_numpy(w.copy()))
    opt = torch.optim.SGD([tw], lr=0.5, momentum=0.9)
    for g in grads:
        sgd.step(params, {"w": g.copy()})
        tw.grad = torch.from_numpy(g.copy())
        opt.step()
    np.testing.assert_allclose(params["w"], tw.detach().numpy(), rtol=1e-6, atol=1e-6)


def test_the_numpy_peers_race_at_smoke_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The numpy loop races with 1 and 2 BLAS threads, each optimizer, and is in the
    headline's choice of best peer."""
    from benchmarks import _accuracy

    numpy_only = {k: v for k, v in peers_for("softmax").items() if k.startswith("numpy-")}
    assert set(numpy_only) == {f"numpy-{o}-{t}t" for o in ("sgd", "adam") for t in (1, 2)}
    monkeypatch.setattr(_accuracy, "peers_for", lambda problem: numpy_only)
    with smoke():
        figures = {f.name: f for f in run(_accuracy._problem("softmax", quick=True))}
    for name in numpy_only:
        figure = figures[f"time_to_accuracy/softmax/{name}"]
        assert not figure.skipped, figure.note
        assert figure.value > 0
        assert figure.details["accuracy"] >= 0.40
    assert figures["time_to_accuracy/softmax"].reference.startswith("best peer: numpy-")


def test_plots_are_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from benchmarks._plot import plot

    figures = [
        ratio_figure(
            "time_to_accuracy/mlp",
            [1.0],
            [2.0],
            reference="r",
            command="c",
            details={"systems": {"asynctrain": 1.0, "torch-1t": 2.0, "x": None}},
        ),
        ratio_figure(
            "scaling/mlp/thread",
            [2.0],
            [1.0],
            reference="r",
            command="c",
            details={"epoch_seconds": {"1": 2.0, "2": 1.1}},
        ),
        Figure(
            "loop_lag/thread",
            1.0,
            1.0,
            1.0,
            "ms",
            "r",
            1,
            "c",
            details={"p50_ms": 0.1, "p99_ms": 1.0, "max_ms": 3.0},
        ),
    ]
    written = plot(figures, tmp_path)
    assert sorted(p.name for p in written) == [
        "loop_lag.png",
        "scaling.png",
        "time_to_accuracy.png",
    ]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)


def test_short_races_are_run_more_often_slow_or_lost_ones_not_again() -> None:
    def raced(*seconds: float | None) -> list[Outcome]:
        return [Outcome(s, 0.9, 0.25, "") for s in seconds]

    short, long = SHORT_RACE_S / 2, SHORT_RACE_S * 2
    assert _again(raced(short, short, short), "full", 15.0)  # the fourth of nine
    assert not _again(raced(*[short] * 9), "full", 15.0)
    assert not _again(raced(short, long, short), "full", 15.0)  # three, as a long race
    assert _again(raced(long, long), "full", 15.0)
    assert not _again(raced(short, None), "full", 15.0)  # out of the race
    assert not _again(raced(6.0), "full", 15.0)  # too slow to repeat in the budget
    assert not _again(raced(short), "quick", 2.0)  # one round at quick size


def test_relative_difference() -> None:
    a = {"w": np.array([1.0, 2.0], np.float32)}
    assert relative_difference(a, a) == 0.0
    moved = relative_difference({"w": np.array([1.0, 2.0 + 1e-3])}, a)
    assert math.isclose(moved, 1e-3 / math.sqrt(5), rel_tol=1e-5)


def test_every_public_bench_name_has_a_docstring() -> None:
    for name in bench.__all__:
        assert inspect.getdoc(getattr(bench, name)), name


def test_a_missing_peer_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that is not installed becomes a skipped figure, never a failed suite."""
    from benchmarks import _accuracy, _peers

    def missing(*args: object) -> object:
        raise _peers.PeerMissing("torch is not installed")

    monkeypatch.setattr(_accuracy, "peers_for", lambda problem: {"torch-1t": missing})
    monkeypatch.setattr(_accuracy, "level", lambda quick: "smoke")
    figures = run(_accuracy._problem("logreg", quick=True))
    skipped = {f.name: f.note for f in figures if f.skipped}
    assert skipped["time_to_accuracy/logreg/torch-1t"] == "torch is not installed"


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ("import at_test_no_such_package\n", "skipped", "needs at_test_no_such_package"),
        ("from asynctrain._no_such_module import x\n", "failed", "ModuleNotFoundError"),
        ("raise ValueError('broken at import')\n", "failed", "broken at import"),
        ("def run(quick):\n    return []\n", "failed", "no coroutine function run"),
    ],
)
def test_a_suite_that_cannot_import_is_skipped_only_for_a_missing_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, body: str, status: str, says: str
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    suite = _suite_file(tmp_path, "at_test_suite_" + status + str(len(body)), body)
    outcome = run(suites.run_suite("s", suite, quick=True))
    assert outcome.as_dict()["status"] == status
    assert says in outcome.as_dict()["error"]
    assert outcome.ok is (status == "skipped")


def test_a_suite_missing_from_the_checkout_is_skipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import _command

    monkeypatch.syspath_prepend(str(tmp_path))
    registry = {
        "absent": suites.Suite("benchmarks._at_test_absent"),
        "fine": _suite_file(tmp_path, "at_test_fine_suite_2", FINE),
    }
    monkeypatch.setattr(_command, "SUITES", registry)
    assert main(["bench", "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "absent (suite)" in printed
    assert "benchmarks._at_test_absent is not in this checkout" in printed
    assert "fine/x" in printed


def test_bench_without_dask_skips_its_suite_and_succeeds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules: "import distributed" fails and find_spec finds nothing, as
    # when the dask extra is not installed.
    monkeypatch.setitem(sys.modules, "distributed", None)
    out = tmp_path / "out.json"
    assert main(["bench", "--quick", "--only", "dask", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dask (suite)" in printed
    assert "needs distributed: pip install 'asynctrain[dask]'" in printed
    assert json.loads(out.read_text())["suites"]["dask"]["status"] == "skipped"


def test_python_m_benchmarks_is_the_same_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert main(["bench", "--list"]) == 0
    assert capsys.readouterr().out.split() == listed == list(suites.SUITES)
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "--only" in capsys.readouterr().out
