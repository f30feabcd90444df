"""The seams of DESIGN.md, held by a test: the numpy layers never import asyncio."""

from __future__ import annotations

import ast
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
        allowed = ("asynctrain._types", "asynctrain._exceptions", "asynctrain._checks")
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
