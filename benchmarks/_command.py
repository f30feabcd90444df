"""The bench command: ``python -m benchmarks`` and ``asynctrain bench`` (which passes its
words on here) run the suites, print the table, write JSON and charts."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asynctrain import AsyncTrainError, ConfigError, run
from benchmarks._machine import describe, machine
from benchmarks._report import document, markdown_table, text_table, write_json
from benchmarks._scale import smoke
from benchmarks._suites import SUITES, SuiteOutcome, run_suite, select


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    """The bench's options (``asynctrain bench`` has no others: it passes them all here)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the benchmark suites; print a table (name, median, min–max, unit, "
        "reference, target, met?). Unset OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE for this command "
        "if your environment sets them.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes (under a minute)")
    size.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks every figure runs (for CI)"
    )
    parser.add_argument(
        "--only", default=None, help="comma-separated suites, e.g. overhead,scaling"
    )
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="write every figure here")
    parser.add_argument("--plot", metavar="DIR", help="write PNG charts here (needs matplotlib)")
    parser.add_argument("--markdown", metavar="PATH", help="write the table as Markdown here")
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    parser.set_defaults(parts=[])  # a suite run alone may take parts (see run_alone)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m benchmarks") -> int:
    """Parse ``argv`` (default: the command line) and run the bench; return the exit status.

    asynctrain's own errors (an unknown suite name, ...) print one line and return 2.

    Example:
        >>> main(["--list"], prog="asynctrain bench")  # doctest: +ELLIPSIS
        overhead
        ...
        0
    """
    return _guarded(build_parser(prog).parse_args(argv), prog)


def _guarded(args: argparse.Namespace, prog: str) -> int:
    """:func:`bench_command`, asynctrain's own errors printed in one line (status 2)."""
    try:
        return bench_command(args)
    except AsyncTrainError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


def bench_command(args: argparse.Namespace) -> int:
    """Run the selected suites; exit status 1 if a suite failed, else 0.

    Missed targets do not change the exit status: they are results, shown in the table.
    """
    if args.list:
        print("\n".join(SUITES))
        return 0
    only = None if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    names = select(only, list(SUITES), option="--only")
    _check_outputs(args)
    quick = bool(args.quick or args.smoke)
    info = machine()
    print(describe(info), flush=True)
    started = time.perf_counter()
    parts = {"parts": tuple(args.parts)} if args.parts else {}
    outcomes = run(_run_all(names, quick, smoke_size=args.smoke, options=parts))
    seconds = time.perf_counter() - started
    print(text_table(outcomes))
    print(f"{len(names)} suites in {seconds:.1f} s")
    if args.json_path:
        command = _command_line(args)
        write_json(
            args.json_path, document(outcomes, machine=info, command=command, seconds=seconds)
        )
    if args.markdown:
        header = f"`{_command_line(args)}` on {describe(info)}\n\n"
        markdown = Path(args.markdown)
        markdown.parent.mkdir(parents=True, exist_ok=True)  # as --json and --plot do
        markdown.write_text(header + markdown_table(outcomes) + "\n")
    if args.plot:
        _plot(outcomes, args.plot)
    return 0 if all(o.ok for o in outcomes) else 1


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any suite runs, an output path the bench could not write at its end.

    The outputs are written after the last suite: a ``--json`` into a directory that
    cannot be made, a ``--markdown`` whose directory is missing or a ``--plot`` naming a
    file failed there with a traceback, after minutes of measuring, every result lost
    (and a ``--plot`` without matplotlib drew nothing, yet the run exited 0).
    Their directories are made now (as writing them would), and each file is opened for
    appending (a new one removed again), so what fails here would have failed there.

    Raises:
        ConfigError: an output that cannot be written, naming the option and the path.
    """
    for option, path in (("--json", args.json_path), ("--markdown", args.markdown)):
        if not path:
            continue
        target = Path(path)
        if target.is_dir():
            raise ConfigError(f"{option} {path} is a directory; pass a file name")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            existed = target.exists()
            with target.open("a"):
                pass
            if not existed:
                target.unlink()
        except OSError as exc:
            raise ConfigError(
                f"{option} {path}: cannot write there ({exc.strerror or exc}); "
                "pass a writable file path"
            ) from None
    if args.plot:
        if importlib.util.find_spec("matplotlib") is None:
            raise ConfigError("--plot needs matplotlib: pip install 'asynctrain[bench]'")
        try:
            Path(args.plot).mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=args.plot).close()
        except OSError as exc:
            raise ConfigError(
                f"--plot {args.plot}: cannot write charts there ({exc.strerror or exc}); "
                "pass a writable directory"
            ) from None


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, rebuilt from its options."""
    words = ["asynctrain", "bench"]
    words += ["--quick"] if args.quick else ["--smoke"] if args.smoke else []
    words += ["--only", args.only] if args.only else []
    words += ["--json", args.json_path] if args.json_path else []
    words += ["--plot", args.plot] if args.plot else []
    words += ["--markdown", args.markdown] if args.markdown else []
    return shlex.join(words)


async def _run_all(
    names: Sequence[str], quick: bool, *, smoke_size: bool, options: dict[str, Any]
) -> list[SuiteOutcome]:
    outcomes = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        with smoke() if smoke_size else contextlib.nullcontext():
            outcomes.append(await run_suite(name, SUITES[name], quick, **options))
    return outcomes


def _plot(outcomes: Sequence[SuiteOutcome], directory: str) -> None:
    from benchmarks._plot import plot

    try:
        written = plot([f for o in outcomes for f in o.figures], directory)
    except ImportError:
        print("--plot needs matplotlib: pip install 'asynctrain[bench]'", file=sys.stderr)
        return
    for path in written:
        print(f"wrote {path}")


def run_alone(suite: str, *, parts: Sequence[str] = ()) -> int:
    """``python -m benchmarks._<suite> [options]``: ``python -m benchmarks --only suite``,
    with the bench's options (``--help``, ``--quick``, ``--json``, ...). A suite of
    ``parts`` (``_dask``) also takes the names of those to run, passed to its
    ``run(quick, parts=...)``; none runs them all.

    Every suite module ends with ``sys.exit(run_alone("<suite>"))``.
    """
    prog = f"python -m benchmarks._{suite}"
    parser = build_parser(prog)
    if parts:
        parser.add_argument(
            "parts", nargs="*", metavar="PART", help=f"run only these: {', '.join(parts)}"
        )
    args = parser.parse_args(["--only", suite, *sys.argv[1:]])
    unknown = [part for part in args.parts if part not in parts]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(parts)}")
    return _guarded(args, prog)
