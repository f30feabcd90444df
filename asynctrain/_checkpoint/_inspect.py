"""``asynctrain inspect``: what a checkpoint holds, verified, for people (or as JSON)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asynctrain._checkpoint._content import Checkpoint


def describe(path: str | Path, *, as_json: bool = False) -> str:
    """Read and verify the checkpoint at ``path`` (or a directory's latest); describe it.

    Raises:
        CheckpointError: the checkpoint is unreadable, corrupt or not a checkpoint.

    Example:
        >>> print(describe("run/"))  # doctest: +SKIP
        checkpoint  run/step-000000000042.ckpt
        verified    6 arrays, 10.4 KiB, SHA-256 checksums match
        ...
    """
    checkpoint = Checkpoint.read(path)
    if as_json:
        return json.dumps(checkpoint.manifest, indent=2)
    manifest, arrays = checkpoint.manifest, checkpoint.arrays
    total = sum(a.nbytes for a in arrays.values())
    step, version, skipped, epoch, batch = (
        checkpoint.counter(n) for n in ("step", "version", "skipped", "epoch", "batch")
    )
    model = checkpoint.section("model")
    lines = [
        f"checkpoint  {checkpoint.path}",
        f"verified    {len(arrays)} arrays, {_size(total)}, SHA-256 checksums match",
        f"format      {manifest['format']} v{manifest['format_version']} (asynctrain "
        f"{manifest.get('asynctrain_version')}, numpy {manifest.get('numpy_version')})",
        f"created     {_when(manifest.get('created_unix'))}",
        f"state       step {step}, epoch {epoch}, batch {batch} "
        f"({skipped} skipped, parameter version {version})"
        + ("; the fit stopped early here" if checkpoint.stopped_early else ""),
        f"settings    {_pairs(checkpoint.section('config'))}",
        f"model       {model.get('repr')} ({model.get('dtype')})",
        f"features    {_features(checkpoint.feature_names)}",
        f"optimizer   {checkpoint.section('optimizer').get('repr')}",
        f"rng         {_rng(checkpoint.section('rng'))}",
        f"callbacks   {', '.join(checkpoint.callback_states()) or '(none kept a state)'}",
        "arrays",
    ]
    width = max((len(key) for key in arrays), default=0)
    lines += [
        f"  {key:<{width}}  {a.dtype} {list(a.shape)}  {_size(a.nbytes)}"
        for key, a in arrays.items()
    ]
    return "\n".join(lines)


def _features(names: tuple[str, ...] | None) -> str:
    if names is None:
        return "(no names: trained on arrays)"
    return f"{len(names)} named: " + ", ".join(names)


def _pairs(section: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in section.items())


def _rng(rng: dict[str, Any]) -> str:
    order, samples = rng.get("order_sha256"), rng.get("samples")
    data = "" if samples is None else f"; {samples} samples"
    data += "" if order is None else f", order {order[:12]}…"  # mid-epoch only
    return f"default_rng({rng.get('seed_sequence')}), next batch {rng.get('batch')}{data}"


def _when(created: Any) -> str:
    if not isinstance(created, int | float):
        return "unknown"
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="seconds")


def _size(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
