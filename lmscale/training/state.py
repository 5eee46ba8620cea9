"""The training state: everything a step reads and writes, in one pytree.

It is what a checkpoint holds, so that continuing a run needs nothing else: parameters,
optimizer state, the step, the RNN carry persisted across batches (truncated BPTT), the
base dropout key, the running sums behind the next train log record, and the loss scale.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from lmscale.training import mesh as mesh_lib
from lmscale.training.precision import LossScale


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any  # nnx.State of the model's nnx.Param variables (float32 master weights)
    opt_state: optax.OptState
    carry: Any  # state carried between batches (model.initial_carry); leaves [batch, ...], sharded along batch; () if none
    rng: jax.Array  # uint32[2] base key; step k uses fold_in(rng, k)
    acc: dict[str, jax.Array]  # sums since the last train log: nats, count (targets), bytes (of text), steps
    loss_scale: LossScale  # dynamic loss scale (float16); inert (S = 1) otherwise


def host_zeros(zeros_fn: Callable[[], Any]) -> Any:
    """NumPy zeros shaped like the arrays ``zeros_fn()`` returns (which must be zeros, such as
    ``zero_acc``), taken from ``jax.eval_shape``: resetting the sums eagerly compiled a small
    program per array in every process."""
    return host_zeros_like(jax.eval_shape(zeros_fn))


def host_zeros_like(shapes: Any) -> Any:
    """Fresh NumPy zeros for ``jax.eval_shape``'s ``shapes``. A loop resetting the same zeros
    keeps the shapes: ``jax.eval_shape`` of a module-level function (``zero_acc``) adds an
    entry to JAX's tracing cache at every call (a new ``jit`` each time; ~2048 kept)."""
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def zero_carry(initial_carry: Callable[[int], Any], rows: int, sharding: jax.sharding.Sharding
               ) -> Any:
    """A model's initial carry (zeros) for a global batch of ``rows``, placed with ``sharding``:
    ``host_zeros`` of ``initial_carry(rows)``, so no device program is compiled and run for it
    (an eager ``jnp.zeros`` is one program per shape)."""
    def carry_shapes() -> Any:  # its trace event carries this name (shapes only, no program)
        return initial_carry(rows)
    return jax.device_put(host_zeros(carry_shapes), sharding)


def zero_acc() -> dict[str, jax.Array]:
    return {"nats": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.float32),
            "bytes": jnp.zeros((), jnp.float32), "steps": jnp.zeros((), jnp.int32)}


def create_state(model: nnx.Module, tx: optax.GradientTransformation, batch_size: int,
                 seed: int, loss_scale: LossScale | None = None) -> tuple[nnx.GraphDef, TrainState]:
    """Splits the model into (graphdef, params) and builds the initial state (unsharded)."""
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, initial_state(params, tx, carry=model.initial_carry(batch_size), seed=seed,
                                   acc=zero_acc(), loss_scale=loss_scale)


def initial_state(params: Any, tx: optax.GradientTransformation, *, carry: Any, seed: int,
                  acc: dict[str, jax.Array], loss_scale: LossScale | None = None) -> TrainState:
    """Step 0 around ``params``: ``tx``'s optimizer state, the base key of ``seed``, zero sums
    ``acc`` (training's or a fine-tune's), an inert loss scale unless one is given."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        carry=carry,
        rng=jax.random.PRNGKey(seed + 1),
        acc=acc,
        loss_scale=LossScale.create(dynamic=False) if loss_scale is None else loss_scale,
    )


# JAX's default before a run recorded its own (``derived.prng_impl``)
DEFAULT_PRNG_IMPL = "threefry2x32"


def run_prng_impl(saved: dict[str, Any] | None) -> str:
    """The random-key implementation of a run: the one it began with (its checkpoint's
    ``derived.prng_impl``; threefry2x32, JAX's default, where none is recorded), or JAX's
    current default for a run that begins now (``JAX_DEFAULT_PRNG_IMPL``). Training and
    fine-tuning run under it (``jax.default_prng_impl``): keys of another implementation
    have another shape, and a run resumed under another setting read its key as an
    unreadable checkpoint ("no checkpoint is left before it: start afresh")."""
    if saved is None:
        return str(jax.config.jax_default_prng_impl)
    return str((saved.get("derived") or {}).get("prng_impl") or DEFAULT_PRNG_IMPL)


def state_shardings(state: TrainState, mesh: Mesh) -> TrainState:
    """Replicated everything, except the carry (if any): split along the batch axis."""
    rep, rows = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
    shardings = jax.tree.map(lambda _: rep, state)
    return shardings.replace(carry=jax.tree.map(lambda _: rows, state.carry))


def placed_on(mesh: Mesh | None) -> Callable[[TrainState], TrainState] | None:
    """``state_shardings`` on ``mesh``, as ``models.built_in_one_program``'s ``shardings``
    (None without a mesh: the state stays on the default device)."""
    return None if mesh is None else (lambda shapes: state_shardings(shapes, mesh))
