"""The training step compiled in a background thread while the run gets ready.

Without a warm compilation cache, a process compiles its training step at the first call,
after everything else: restoring a checkpoint (seconds for the 4096-d state), writing the
run's records. ``jit(f).lower(shapes).compile()`` fills the cache that ``jit(f)(args)`` looks
up, so the step compiled here from the state's and the batch's shapes is the one the first
call runs: the compile overlaps the restore instead of following it. XLA compiles in C++
with the GIL released, so the two proceed together on a multi-core host.

A failed compile here is not reported: the first call compiles again and raises the error
where the loop expects it.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import jax


def shapes_of(tree: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct`` leaves of arrays or shapes, with ``shardings`` (a matching tree).

    The sharding is part of what the compiled step is looked up by: a step jitted with
    ``in_shardings`` and compiled for shapes without one is compiled again at the first call."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(
        x.shape, x.dtype, weak_type=getattr(x, "weak_type", False), sharding=s), tree, shardings)


class CompiledAhead:
    """Compiles ``jitted`` in a thread for ``args``: ``jax.ShapeDtypeStruct``s with the
    shardings the call's arrays will have (``shapes_of``)."""

    def __init__(self, jitted: Callable[..., Any], *args: Any) -> None:
        self._thread = threading.Thread(target=self._compile, args=(jitted, args),
                                        name="lmscale-compile-ahead", daemon=True)
        self.seconds: float | None = None  # the compile's wall time, once done (None: failed)
        self._thread.start()

    def _compile(self, jitted: Callable[..., Any], args: tuple) -> None:
        start = time.perf_counter()
        try:
            jitted.lower(*args).compile()
        except Exception:  # noqa: BLE001 - reported by the first call instead (module doc)
            return
        self.seconds = time.perf_counter() - start

    def wait(self) -> None:
        """Blocks until the compile is done (before the first call, so it is not compiled twice)."""
        self._thread.join()
