"""At most two dispatched steps unfinished, in every loop whose steps hold a collective.

JAX dispatches jitted steps asynchronously, so a loop that does not wait runs ahead of the
devices and queues steps. On a CPU host split into one device per core
(``parallel.cpu_devices``, lmscale/training/host_devices.py) every queued step's per-device
parts share one thread pool, and with JAX 0.10 a queue of some 30-100 steps whose
all-reduces wait on each other outlasts XLA's 40-s rendezvous limit: the process exits with
"Termination timeout for `all reduce ...`" (reproduced with ``lmscale.train`` on the
quickstart at ``train.log_every=400``; JAX 0.12 ran the same queue). Waiting for step N-1
right after dispatching step N costs nothing: step N is queued while N-1 finishes and the
host builds the next batch, so the devices never wait for the host.
"""

from __future__ import annotations

import collections
from typing import Any

import jax


class InFlight:
    """Remembers each step's small output; waits for the oldest once ``depth`` are unfinished."""

    def __init__(self, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self._pending: collections.deque = collections.deque()

    def add(self, output: Any) -> None:
        """``output``: a pytree the step returned and nothing donates later (its metrics)."""
        self._pending.append(output)
        while len(self._pending) >= self.depth:
            jax.block_until_ready(self._pending.popleft())

    def __len__(self) -> int:
        return len(self._pending)
