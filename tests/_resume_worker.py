"""One training problem shared by the resume tests and the fresh process that resumes it.

Run: python tests/_resume_worker.py BACKEND CHECKPOINT_DIR OUT — resumes the fit from the
latest checkpoint in CHECKPOINT_DIR, saves its final state to OUT and prints the steps the
resumed fit took.
"""

from __future__ import annotations

import sys

import asynctrain as at

EPOCHS, BATCH, N = 3, 150, 1000  # 7 steps per epoch, the last one short


def data() -> at.data.Dataset:
    return at.data.synthetic("mlp", n=N, seed=3)


def trainer(backend: str) -> at.Trainer:
    """A trainer whose optimizer state mixes arrays, ints and a schedule's count."""
    schedule = at.optim.warmup_cosine_decay(1e-2, warmup_steps=3, decay_steps=30)
    optimizer = at.optim.chain(at.optim.clip_by_global_norm(1.0), at.optim.adamw(schedule))
    return at.Trainer(
        at.models.MLP((128, 32, 10)),
        optimizer,
        backend=backend,
        workers=None if backend == "inline" else 2,
        batch_size=BATCH,
        shards=3,
        seed=11,
    )


async def resume(backend: str, directory: str, out: str) -> int:
    tr = trainer(backend)
    result = await tr.fit(data(), epochs=EPOCHS, checkpoint_dir=directory, resume=True)
    await tr.save(out)
    return result.steps


if __name__ == "__main__":
    print(at.run(resume(*sys.argv[1:4])))
