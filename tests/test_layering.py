"""The seams of DESIGN.md, held by tests: the numpy layers never import asyncio, the
benchmarks stand on the public API, and the package has no import cycles."""

from __future__ import annotations

import ast
import collections
import importlib
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "asynctrain"
SYNC_LAYERS = ["models", "optim", "data"]
FORBIDDEN = {"asyncio", "uvloop", "concurrent", "threading", "multiprocessing"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", SYNC_LAYERS)
def test_numpy_layers_never_import_concurrency(layer: str) -> None:
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        roots = {name.split(".")[0] for name in _imports(path)}
        assert not roots & FORBIDDEN, f"{path.name} imports {roots & FORBIDDEN}"
        inner = {n for n in _imports(path) if n.startswith("asynctrain.")}
        # _shm: names, modes and cleanup of files in /dev/shm (data's shared arrays); it
        # uses multiprocessing's resource tracker only to unlink them if this process dies.
        # _sparse: scipy.sparse CSR input, checked by data (Dataset) and models (their
        # inputs) alike; numpy code that imports scipy only once it has seen a sparse X.
        # _finite: the NaN/Inf scans of dense arrays, shared by the same two checks.
        allowed = ("asynctrain._types", "asynctrain._exceptions", "asynctrain._checks")
        allowed += ("asynctrain._sparse", "asynctrain._finite")
        allowed += ("asynctrain._shm",) if layer == "data" else ()
        assert all(n.startswith((f"asynctrain.{layer}", *allowed)) for n in inner), (path, inner)


def test_backends_never_import_models_or_optimizers() -> None:
    for path in sorted((PACKAGE / "backends").rglob("*.py")):
        inner = {n for n in _imports(path) if n.startswith("asynctrain.")}
        assert not any(n.startswith(("asynctrain.models", "asynctrain.optim")) for n in inner)


def test_only_the_runtime_creates_loops() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_runtime.py":
            continue
        source = path.read_text()
        assert "asyncio.run(" not in source, path
        assert "new_event_loop" not in source, path


def test_cli_libraries_stay_in_the_cli() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in {"_cli.py", "_progress.py"}:
            continue
        assert "tqdm" not in _imports(path), path


# -- benchmarks/ stand on the public API -----------------------------------------------

BENCHMARKS = PACKAGE.parent / "benchmarks"
PUBLIC_MODULES = (
    "asynctrain",
    *(f"asynctrain.{m}" for m in ("models", "optim", "data", "backends", "sklearn")),
)
PRIVATE_PATH = re.compile(r"\basynctrain(\.\w+)*\._[a-z]")


def _public_names(module: str) -> set[str]:
    """What ``from module import name`` may take: ``__all__`` and the public submodules."""
    names = set(importlib.import_module(module).__all__)
    return names | {m.rsplit(".", 1)[1] for m in PUBLIC_MODULES if m.startswith(f"{module}.")}


def _private_uses(path: Path) -> list[str]:
    """Each use of a name outside the public API in ``path``, as ``line: what``."""
    tree = ast.parse(path.read_text())
    aliases: dict[str, str] = {}  # local name -> public module it stands for
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "asynctrain":
                    continue
                if alias.name not in PUBLIC_MODULES:
                    found.append(f"{node.lineno}: import {alias.name}")
                aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("asynctrain"):
            module = node.module or ""
            if module not in PUBLIC_MODULES:
                found.append(f"{node.lineno}: from {module} import ...")
                continue
            for alias in node.names:
                if alias.name not in _public_names(module):
                    found.append(f"{node.lineno}: from {module} import {alias.name}")
                elif f"{module}.{alias.name}" in PUBLIC_MODULES:
                    aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [f"{node.lineno}: {m.group()!r}" for m in PRIVATE_PATH.finditer(node.value)]
    found += _private_attributes(tree, aliases)
    return found


def _private_attributes(tree: ast.AST, aliases: dict[str, str]) -> list[str]:
    """``at.x.y`` chains that leave a public module's ``__all__`` (``at._thing``)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not isinstance(node.value, ast.Name):
            continue
        module, attr = aliases.get(node.value.id), node.attr
        if module is None or attr.startswith("__"):
            continue
        if attr not in _public_names(module):
            found.append(f"{node.lineno}: {node.value.id}.{attr} ({module})")
    return found


@pytest.mark.parametrize("path", sorted(BENCHMARKS.glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_use_only_public_asynctrain_names(path: Path) -> None:
    assert not _private_uses(path), f"{path.name} reaches past the public API"


def test_the_public_name_check_catches_private_imports(tmp_path: Path) -> None:
    """The check above would fail on each way a benchmark could reach a private name."""
    source = tmp_path / "suite.py"
    source.write_text(
        "import asynctrain as at\n"
        "import asynctrain._runtime\n"
        "from asynctrain._config import DEFAULT_SHARDS\n"
        "from asynctrain.backends._thread import ThreadBackend\n"
        "from asynctrain import _cli\n"
        "from asynctrain.data import Dataset, _validate\n"
        "import importlib.util\n"
        "importlib.util.find_spec('asynctrain.backends._process')\n"
        "at._trainer.Trainer\n"
        "at.Trainer, at.data.synthetic, at.__version__\n"
    )
    lines = [use.split(":")[0] for use in _private_uses(source)]
    assert lines == ["2", "3", "4", "5", "6", "8", "9"], _private_uses(source)


def test_the_package_imports_benchmarks_only_in_the_bench_command() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        allowed: set[ast.AST] = set()
        if path.name == "_cli.py":
            bench = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_bench"]
            allowed = {node for function in bench for node in ast.walk(function)}
        for node in ast.walk(tree):
            names = _names_imported(node)
            if any(n.split(".")[0] == "benchmarks" for n in names) and node not in allowed:
                raise AssertionError(f"{path.name}:{node.lineno} imports benchmarks")


def _names_imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and not node.level and node.module:
        return [node.module]
    return []


# -- no import cycles --------------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports.

    Every import counts: at module level, under ``if TYPE_CHECKING:`` and inside
    functions. ``from a.b import c`` depends on ``a.b.c`` when that is a module, else on
    ``a.b``; the packages above a module are not counted (importing one imports them).
    """
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in files)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, package)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    deps.add(full if full in files else base)
        graph[name] = (deps & files.keys()) - {name}
    return graph


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each module that is on a cycle, deduplicated."""
    cycles: dict[frozenset[str], list[str]] = {}
    for start in sorted(graph):
        paths = {start: [start]}
        queue = collections.deque([start])
        while queue:  # breadth first: the first path back to start is a shortest cycle
            node = queue.popleft()
            for dep in sorted(graph[node]):
                if dep == start:
                    cycle = [*paths[node], start]
                    cycles.setdefault(frozenset(cycle), cycle)
                    queue.clear()
                    break
                if dep not in paths:
                    paths[dep] = [*paths[node], dep]
                    queue.append(dep)
    return list(cycles.values())


def test_the_cycle_finder_finds_a_cycle_and_only_cycles() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_package_has_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_checkpoints_never_import_the_trainer() -> None:
    # ast.walk sees imports under `if TYPE_CHECKING:` too: the trainer hands the
    # checkpoint helpers a Subject and callables, never itself.
    for path in sorted((PACKAGE / "_checkpoint").rglob("*.py")):
        inner = {n for n in _imports(path) if n.startswith("asynctrain.")}
        assert not any(n.startswith(("asynctrain._trainer", "asynctrain._epochs")) for n in inner)
