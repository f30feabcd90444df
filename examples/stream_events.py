"""Follow a fit step by step: stream its events, and stop early from your own code.

``trainer.steps`` is an async iterator of StepEvent (one per optimizer step) and
EpochEvent (one per epoch). Breaking out of the loop stops training at once; wrap the
iterator in ``contextlib.aclosing`` so its resources are released right there.

Run: python examples/stream_events.py
"""

from __future__ import annotations

import contextlib

import asynctrain as at


async def main(n: int = 20_000, target_loss: float = 0.3) -> int:
    train, val = at.data.synthetic("logreg", n=n, seed=0).split(0.2, seed=0)
    model = at.models.LogisticRegression(train.n_features)
    async with at.Trainer(model, at.optim.adam(1e-2), batch_size=256) as trainer:
        events = trainer.steps(train, epochs=5, validation=val)
        async with contextlib.aclosing(events):
            async for event in events:
                if event.kind == "epoch":
                    print(f"epoch {event.epoch}: val_accuracy {event.val_accuracy:.3f}")
                    continue
                if event.step % 10 == 0:
                    print(
                        f"step {event.step:4d}  loss {event.loss:.4f}  "
                        f"|g| {event.grad_norm:.3f}  {event.samples_per_s:,.0f} samples/s"
                    )
                if event.loss < target_loss:
                    print(f"loss {event.loss:.4f} < {target_loss} at step {event.step}: stopping")
                    break
        steps = trainer.state.step
    print(f"trained {steps} steps")
    return steps


if __name__ == "__main__":
    at.run(main())
