"""Print the oldest versions pyproject.toml allows, as pip requirements: each floor
``>=X.Y`` of the base dependencies and of the test runner becomes ``==X.Y.*`` (the
newest patch release of the oldest minor one). `make oldest` installs them and runs a
subset of the tests there, so a floor the code has outgrown fails CI."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

# From the test extra: what runs the tests, and the libraries the subset compares with.
TEST_TOOLS = ("pytest", "pytest-asyncio", "pytest-timeout", "hypothesis", "scipy", "scikit-learn")


def floors(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    tests = [
        requirement
        for requirement in project["optional-dependencies"]["test"]
        if re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0] in TEST_TOOLS
    ]
    return [_oldest(requirement) for requirement in [*project["dependencies"], *tests]]


def _oldest(requirement: str) -> str:
    spec, _, marker = requirement.partition(";")
    found = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9.]+)", spec)
    if found is None:
        raise SystemExit(f"no >= floor in {requirement!r}")
    pinned = f"{found[1]}=={found[2]}.*"
    return f"{pinned}; {marker.strip()}" if marker else pinned


if __name__ == "__main__":
    print("\n".join(floors(Path(__file__).resolve().parents[1] / "pyproject.toml")))
