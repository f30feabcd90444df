"""``asynctrain bench``: run the suites, print the table, write JSON and charts."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from asynctrain._runtime import run
from benchmarks._machine import describe, machine
from benchmarks._report import document, markdown_table, text_table, write_json
from benchmarks._scale import smoke
from benchmarks._suites import SuiteFn, SuiteOutcome, discover, run_suite, select


def bench_command(args: argparse.Namespace) -> int:
    """Run the selected suites; exit status 1 if a suite failed, else 0.

    Missed targets do not change the exit status: they are results, shown in the table.
    """
    found = discover()
    if args.list:
        print("\n".join(sorted(found)))
        return 0
    names = select(found, [n.strip() for n in args.only.split(",") if n.strip()])
    quick = bool(args.quick or args.smoke)
    info = machine()
    print(describe(info), flush=True)
    started = time.perf_counter()
    outcomes = run(_run_all(found, names, quick, smoke_size=args.smoke))
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
        Path(args.markdown).write_text(header + markdown_table(outcomes) + "\n")
    if args.plot:
        _plot(outcomes, args.plot)
    return 0 if all(o.ok for o in outcomes) else 1


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
    found: dict[str, SuiteFn | str], names: Sequence[str], quick: bool, *, smoke_size: bool
) -> list[SuiteOutcome]:
    outcomes = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        with smoke() if smoke_size else contextlib.nullcontext():
            outcomes.append(await run_suite(name, found[name], quick))
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


def run_alone(suite: str) -> int:
    """``python -m benchmarks._<suite> [options]``: ``asynctrain bench --only suite``."""
    from asynctrain._cli import main

    return main(["bench", "--only", suite, *sys.argv[1:]])
