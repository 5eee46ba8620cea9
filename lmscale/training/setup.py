"""From a config to the pieces of a training run: model, optimizer, state, jitted step.

Shared by the training loop and the plan tool, so that what ``plan`` compiles is exactly
what ``train`` runs. ``abstract=True`` builds the state as shapes only (``jax.eval_shape``),
so a 8192-d model can be planned without allocating it, and a resumed run restores into
shapes without computing an initial state it would discard. Given the ``mesh``, the initial
state is computed straight into its training shardings.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from lmscale.models import build_model, built_in_one_program, uses_dropout
from lmscale.training import mesh as mesh_lib
from lmscale.training.fits import check_state_fits_host
from lmscale.training.optimizer import make_optimizer
from lmscale.training.precision import LossScale, Policy
from lmscale.training.state import TrainState, create_state, placed_on, state_shardings
from lmscale.training.steps import make_train_step

BATCH_KEYS = ("inputs", "targets", "weights", "resets")


@dataclasses.dataclass
class TrainSetup:
    policy: Policy
    graphdef: nnx.GraphDef
    state: TrainState  # concrete (on the mesh given, else the default device) or abstract (ShapeDtypeStructs)
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    dropout: bool = False  # whether any dropout of the model is on (training)
    byte_lengths: np.ndarray | None = None  # UTF-8 bytes per token id (None: one per token)
    lr_length_base: int = 0  # variable BPTT: the step's learning rate is scaled by length / this
    grad_accum_steps: int = 1  # segments per step whose gradients are summed (train.grad_accum_steps)
    grad_reduce_dtype: Any = jnp.float32  # the gradients' dtype in the all-reduce (parallel.grad_reduce_dtype)

    @property
    def num_params(self) -> int:
        return int(sum(x.size for x in jax.tree.leaves(self.state.params)))


def build_train_setup(config: ml_collections.ConfigDict, vocab_size: int, *, decay_steps: int,
                      lr: float, abstract: bool = False,
                      byte_lengths: np.ndarray | None = None,
                      lr_drop_steps: tuple[int, ...] | list[int] = (),
                      mesh: Mesh | None = None, check_fits: bool = False) -> TrainSetup:
    """Model in the config's compute dtype, optax chain, and the initial state.

    ``config.train.batch_size`` must already be the global batch (``with_global_batch``).
    ``byte_lengths``: the tokenizer's bytes per id, for bits per character (None: 1 per id).
    ``lr_drop_steps``: ``derived["lr_drop_steps"]`` (optim.lr_drop_epochs in steps).
    ``mesh``: the state is computed placed as the train step takes it (``state_shardings``);
    None: on the default device. ``check_fits``: a state larger than a CPU host's available
    memory (each of its devices holding it) is refused before it is computed or restored.
    """
    policy = Policy.from_compute(config.precision.compute)
    variable = bool(config.train.variable_bptt)
    tx, schedule = make_optimizer(config.optim, decay_steps, lr=lr, lr_drop_steps=lr_drop_steps,
                                  step_factor=variable)

    def initial_train_state() -> tuple[nnx.GraphDef, TrainState]:
        model = build_model(config.model, vocab_size, rngs=nnx.Rngs(config.seed),
                            dtype=policy.compute)
        loss_scale = LossScale.for_precision(policy, config.precision)
        return create_state(model, tx, config.train.batch_size, config.seed, loss_scale)

    devices = 1 if mesh is None else len(mesh.local_devices)
    check = ((lambda shapes, temp=0: check_state_fits_host(shapes, devices, temp_per_device=temp))
             if check_fits else None)
    graphdef, state = built_in_one_program(initial_train_state, abstract=abstract,
                                           shardings=placed_on(mesh), check=check)
    return TrainSetup(policy=policy, graphdef=graphdef, state=state, tx=tx, schedule=schedule,
                      dropout=uses_dropout(config.model), byte_lengths=byte_lengths,
                      lr_length_base=config.train.seq_len if variable else 0,
                      grad_accum_steps=int(config.train.grad_accum_steps),
                      grad_reduce_dtype=jnp.dtype(config.parallel.grad_reduce_dtype))


def jit_train_step(setup: TrainSetup, mesh: Mesh, dropout: bool | None = None
                   ) -> tuple[Callable[..., Any], TrainState]:
    """The train step jitted over ``mesh`` with explicit shardings and the state donated.

    ``dropout`` None: as the model config says (``setup.dropout``). Returns (step, state shardings).
    """
    shardings = state_shardings(setup.state, mesh)
    rows = mesh_lib.batch_sharded(mesh)
    dropout = setup.dropout if dropout is None else dropout
    step = jax.jit(make_train_step(setup.graphdef, setup.tx, setup.schedule, mesh, dropout,
                                   setup.byte_lengths, lr_length_base=setup.lr_length_base,
                                   grad_accum_steps=setup.grad_accum_steps,
                                   grad_reduce_dtype=setup.grad_reduce_dtype),
                   in_shardings=(shardings, dict.fromkeys(BATCH_KEYS, rows)),
                   out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)
    return step, shardings
