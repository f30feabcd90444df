"""Property: whatever is done to a valid checkpoint, reading and resuming from it raise
only CheckpointError, and no payload in it ever runs.

Mutations: bytes of the file flipped; a member's bytes flipped, or replaced by a pickle
payload, with its checksum recomputed so the mutation passes the checksum; members
renamed, removed or added; a value anywhere in the manifest replaced by a hostile one.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
from _crafting import object_npy, reseal, unzip, zipped
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asynctrain as at
from asynctrain._checkpoint import describe
from asynctrain._checkpoint._content import Checkpoint, Subject
from asynctrain._checkpoint._format import MANIFEST
from asynctrain._checkpoint._session import restored_settings
from asynctrain.data import synthetic
from asynctrain.models import SoftmaxRegression

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples every run: CI stays reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HOSTILE = st.one_of(
    st.sampled_from([-5, -1, 0, 2**63, 2**64, 10**400, 1e300, -1e300, 5, "5", "", "x" * 70]),
    st.sampled_from([math.nan, math.inf, -math.inf, True, False, None, [], {}, [1, 2, 3]]),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=8,
    ),
)


def _trainer() -> at.Trainer:
    return at.Trainer(
        SoftmaxRegression(128, 10), at.optim.adam(1e-2), backend="inline", batch_size=128
    )


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("property")
    data = synthetic("softmax", n=500, seed=2)
    at.run(_trainer().fit(data, epochs=1, checkpoint_dir=directory, checkpoint_every=2))
    return directory / "step-000000000002.ckpt"  # mid-epoch: every section in use


def _paths(tree: Any, where: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON tree (keys and list indices from the root)."""
    found = [where]
    if isinstance(tree, dict):
        for key, value in tree.items():
            found += _paths(value, (*where, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            found += _paths(value, (*where, i))
    return found


def _replace(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    tree[path[0]] = _replace(tree[path[0]], path[1:], value)
    return tree


def _flip(data: bytes, positions: list[int], masks: list[int]) -> bytes:
    flipped = bytearray(data)
    for position, mask in zip(positions, masks, strict=False):
        if flipped:
            flipped[position % len(flipped)] ^= mask
    return bytes(flipped)


@st.composite
def mutated(draw: st.DrawFn, original: Path, sentinel: Path) -> bytes:
    """The bytes of a mutated copy of ``original``."""
    contents = unzip(original)
    manifest = json.loads(contents[MANIFEST])
    names = sorted(name for name in contents if name != MANIFEST)
    flips = st.lists(st.integers(0, 2**31), min_size=1, max_size=8)
    masks = st.lists(st.integers(1, 255), min_size=1, max_size=8)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value", "member", "payload", "rename", "remove", "add"]))
        if kind == "value":
            path = draw(st.sampled_from(_paths(manifest)[1:]))
            manifest = _replace(manifest, path, draw(HOSTILE))
        elif kind == "member":
            name = draw(st.sampled_from(names))
            contents[name] = _flip(contents[name], draw(flips), draw(masks))
        elif kind == "payload":
            contents[draw(st.sampled_from(names))] = object_npy(sentinel)
        elif kind == "rename" and names:
            name = names.pop(draw(st.integers(0, len(names) - 1)))
            contents[draw(st.sampled_from(["x.npy", "../x.npy", "params/W", name + "/"]))] = (
                contents.pop(name)
            )
        elif kind == "remove" and names:
            del contents[names.pop(draw(st.integers(0, len(names) - 1)))]
        elif kind == "add":
            contents[draw(st.sampled_from(["extra.npy", "params/Z.npy", MANIFEST + "x"]))] = (
                object_npy(sentinel)
            )
    if isinstance(manifest, dict) and isinstance(manifest.get("arrays"), dict):
        reseal(manifest, contents)  # the mutation passes the checksum
    contents[MANIFEST] = json.dumps(manifest).encode()
    data = zipped(contents)
    return _flip(data, draw(flips), draw(masks)) if draw(st.booleans()) else data


def _use(path: Path) -> None:
    """Everything a user can do with a checkpoint file, short of training on it."""
    checkpoint = Checkpoint.read(path)
    describe(path)
    describe(path, as_json=True)
    restored_settings(checkpoint, {})
    trainer = _trainer()
    subject: Subject = trainer._checkpoint_subject()
    checkpoint.check_data(500)
    checkpoint.train_state(subject)
    checkpoint.train_state(subject, params_only=True)


def test_mutated_checkpoints_raise_only_checkpoint_error(original: Path, tmp_path: Path) -> None:
    sentinel = tmp_path / "payload-ran"
    target = tmp_path / "mutated.ckpt"
    _use(original)  # the unmutated file is fine

    @SETTINGS
    @given(st.data())
    def check(data: st.DataObject) -> None:
        target.write_bytes(data.draw(mutated(original, sentinel)))
        with contextlib.suppress(at.CheckpointError):
            _use(target)
        assert not sentinel.exists(), "a payload in the checkpoint ran"

    check()
