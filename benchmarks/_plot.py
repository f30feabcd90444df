"""PNG charts of a bench run (``--plot DIR``), drawn with matplotlib when it is installed.

Charts read the ``details`` the suites attach to their figures:

* ``time_to_accuracy/<problem>``: ``details["systems"]`` = {system: seconds or None};
* ``scaling/<problem>/<backend>`` and ``scaling/ceiling``: the median speed-up;
* ``loop_lag/<state>``: ``details`` has ``p50_ms``, ``p99_ms`` and ``max_ms``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._figure import Figure


def plot(figures: Sequence[Figure], directory: str | Path) -> list[Path]:
    """Write the charts the figures allow into ``directory``; return the files written.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'asynctrain[bench]'``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (
        ("time_to_accuracy.png", _time_to_accuracy),
        ("scaling.png", _scaling),
        ("loop_lag.png", _loop_lag),
    ):
        chosen = [f for f in figures if f.name.startswith(name.removesuffix(".png") + "/")]
        if not any(not f.skipped for f in chosen):
            continue
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        draw(ax, chosen)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        written.append(out / name)
    return written


def _time_to_accuracy(ax: Any, figures: Sequence[Figure]) -> None:
    problems = [f for f in figures if f.name.count("/") == 1 and "systems" in f.details]
    systems = sorted({s for f in problems for s in f.details["systems"]})
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        xs = [p + i * width for p in range(len(problems))]
        ys = [f.details["systems"].get(system) or 0.0 for f in problems]
        ax.bar(xs, ys, width, label=system)
    ax.set_xticks([p + 0.4 - width / 2 for p in range(len(problems))])
    ax.set_xticklabels([f.name.split("/")[1] for f in problems])
    ax.set_yscale("log")
    reached = [t for f in problems for t in f.details["systems"].values() if t]
    if reached:
        ax.set_ylim(bottom=min(reached) / 2)
    ax.set_ylabel("seconds to target accuracy (log)")
    ax.set_xlabel("no bar: not reached within the budget")
    ax.set_title("Time to accuracy")
    ax.legend(fontsize="small", ncols=2)


def _scaling(ax: Any, figures: Sequence[Figure]) -> None:
    for f in figures:
        if f.skipped or (f.name.count("/") != 2 and f.name != "scaling/ceiling"):
            continue
        label = f.name.removeprefix("scaling/")
        style = "k--" if label == "ceiling" else "o-"
        ax.plot([1, 2], [1.0, f.value], style, label=label.replace("ceiling", "machine ceiling"))
    ax.plot([1, 2], [1, 2], ":", color="grey", label="linear")
    ax.set_xticks([1, 2])
    ax.set_xlabel("workers (cores)")
    ax.set_ylabel("speed-up of an epoch (median)")
    ax.set_title("Scaling with workers")
    ax.legend(fontsize="small")


def _loop_lag(ax: Any, figures: Sequence[Figure]) -> None:
    measured = [f for f in figures if not f.skipped and "p99_ms" in f.details]
    labels = [f.name.removeprefix("loop_lag/") for f in measured]
    for offset, key in ((-0.25, "p50_ms"), (0.0, "p99_ms"), (0.25, "max_ms")):
        xs = [i + offset for i in range(len(measured))]
        ax.bar(xs, [f.details[key] for f in measured], 0.25, label=key.removesuffix("_ms"))
    ax.set_xticks(range(len(measured)))
    ax.set_xticklabels(labels)
    ax.set_ylabel("lag of a 1 ms heartbeat (ms)")
    ax.set_title("Event-loop lag while training")
    ax.legend(fontsize="small")
