"""Is the caller's script guarded by ``if __name__ == "__main__":``? Checked before workers start.

Every worker process imports the script it was started from (spawn and forkserver both
do). A script that starts the process backend from unguarded top-level code would start
it again in every worker: a cascade of failing workers and hundreds of lines of
tracebacks. So, before any worker starts, the script's top-level line that led here is
looked up in its syntax tree: outside a ``__name__`` guard, a ConfigError says exactly that.
"""

from __future__ import annotations

import ast
import functools
import sys
from types import FrameType

from asynctrain._exceptions import ConfigError


def check_main_guard() -> None:
    """Raise ConfigError if the running script starts workers from unguarded top-level code.

    Raises:
        ConfigError: naming the script and line, and saying to put it under
            ``if __name__ == "__main__":``.

    Example:
        >>> check_main_guard()  # under doctest, __main__ is not executing a script
    """
    frame = _main_frame()
    if frame is None:
        return
    path, line = frame.f_code.co_filename, frame.f_lineno
    guarded = _guarded_lines(path)
    if guarded is None or line in guarded:
        return
    raise ConfigError(
        f"{path}, line {line}, starts worker processes from the script's top level without "
        'the guard `if __name__ == "__main__":`; every worker imports the script and '
        "would run that line again. Put the code that starts the work (e.g. "
        '`asynctrain.run(main())`) under `if __name__ == "__main__":`, or use '
        "backend='thread'"
    )


def _main_frame() -> FrameType | None:
    """The frame of ``__main__``'s top-level code on this thread's stack, if any."""
    main = sys.modules.get("__main__")
    if main is None or not getattr(main, "__file__", None):
        return None  # an interactive session or a notebook: nothing re-imports it
    name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if name == "__main__" or name.endswith(".__main__"):
        return None  # ``python -m package``: multiprocessing does not re-import those
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
            return frame
        frame = frame.f_back
    return None


@functools.cache
def _guarded_lines(path: str) -> frozenset[int] | None:
    """Line numbers inside top-level ``if`` blocks that test ``__name__``; None if the file
    cannot be read or parsed (then nothing is claimed)."""
    try:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None
    lines: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and _tests_name(node.test):
            end = node.end_lineno or node.lineno
            lines.update(range(node.lineno, end + 1))
    return frozenset(lines)


def _tests_name(test: ast.expr) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "__name__" for n in ast.walk(test))
