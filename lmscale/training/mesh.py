"""Device mesh and shardings: data parallel over every device along a ``data`` axis.

Parameters and optimizer state are replicated; the batch and the RNN carry are split
along their leading (batch) axis. The same code path serves one CPU and many GPUs.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over all devices of all processes (or the given ones)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the ``data`` axis, other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def local_rows(mesh: Mesh, global_rows: int) -> tuple[int, int]:
    """The [start, stop) rows of a global batch that this process feeds.

    Rows are assigned to devices in mesh order; a process feeds the contiguous block of
    its addressable devices (jax orders devices by process, so the block is contiguous).
    """
    devices = list(mesh.devices.flat)
    per_device = global_rows // len(devices)
    mine = [i for i, d in enumerate(devices) if d.process_index == jax.process_index()]
    start, stop = mine[0] * per_device, (mine[-1] + 1) * per_device
    if stop - start != per_device * len(mine):
        raise RuntimeError("this process's devices are not contiguous in the mesh")
    return start, stop


def put_global(local: np.ndarray, sharding: NamedSharding, global_rows: int) -> jax.Array:
    """Builds a global array sharded along axis 0 from this process's rows."""
    global_shape = (global_rows,) + tuple(local.shape[1:])
    return jax.make_array_from_process_local_data(sharding, local, global_shape)


def tree_put_global(tree: Any, sharding: NamedSharding, global_rows: int) -> Any:
    return jax.tree.map(lambda x: put_global(np.asarray(x), sharding, global_rows), tree)
