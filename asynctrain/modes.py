"""Training modes as objects: ``Trainer(model, mode=asynctrain.modes.Local(steps=8))``.

A mode says how a step's shard tasks are scheduled and their results applied; the
Trainer also takes a mode by name (``mode="local", local_steps=8``), which builds the same
object. See docs/modes.md for what each mode waits for and guarantees.

=========================  ==========================================  =============
object                     what waits for what                         deterministic
=========================  ==========================================  =============
``Sync()``                 every step waits for all its shards         yes
``Local(steps=k)``         shards take k steps alone, then average     yes
``SSP(staleness=s)``       step i computes on step i - s - 1's params  yes
``Async()``                each gradient applied as it arrives         no
=========================  ==========================================  =============

Example:
    >>> import asynctrain as at
    >>> at.modes.SSP(staleness=1)
    SSP(staleness=1)
    >>> at.modes.Local(steps=8).settings
    {'local_steps': 8}
"""

from __future__ import annotations

from asynctrain._engine import SSP, Async, Local, Mode, Sync

__all__ = ["SSP", "Async", "Local", "Mode", "Sync"]
