"""Loading a trained run back for inference: config, tokenizer and parameters from a workdir.

Used by eval, transfer, generation, convert and the notebook API. Only the parameters are
read from the checkpoint (orbax partial restore): no optimizer state, no training-batch
carry, so the training batch need not divide this machine's devices.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from lmscale.atomic import absolute_path
from lmscale.config import COMPUTE_DTYPES, ConfigError, config_from_record, load_config
from lmscale.config_values import AVERAGING_OPTIMIZERS
from lmscale.data.tokenizer import tokenizer_from_dict
from lmscale.models import model_params
from lmscale.models.registry import architecture, carries_state
from lmscale.training import mesh as mesh_lib
from lmscale.training.checkpoints import (CheckpointError, Checkpointer, CheckpointMismatchError,
                                          ModelMismatchError, UnreadableCheckpointError)
from lmscale.training.model_signature import check_same_model, model_signature
from lmscale.training.run_paths import best_folder


@dataclasses.dataclass
class TrainedLM:
    """A trained language model: what it is (config, tokenizer) and its weights."""
    config: ml_collections.ConfigDict
    derived: dict[str, Any]
    tokenizer: Any  # see lmscale.data.tokenizer for the interface
    graphdef: nnx.GraphDef
    params: Any  # nnx.State of the parameters (replicated over the mesh)
    step: int
    mesh: Mesh
    workdir: str = ""
    # Weights as a decoder reads them, kept between generate() and featurize() calls
    # (prepared_weights), and the weights' fingerprint; clear() frees them.
    decode_cache: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False,
                                                     compare=False)
    compute: str = "float32"  # the matmuls' operand dtype (``with_compute``)
    best: bool = False  # the weights kept as validated best (WORKDIR/best/), not a checkpoint's

    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params)

    def carries_state(self) -> bool:
        """``registry.carries_state`` of the model (a recurrent kind's; a transformer carries
        nothing and reads texts whole), traced once per model structure."""
        if self.graphdef not in _CARRIES:
            _CARRIES[self.graphdef] = carries_state(self.model().initial_carry)
        return _CARRIES[self.graphdef]


_CARRIES: dict[nnx.GraphDef, bool] = {}  # graphdef -> whether its model carries a state


@functools.lru_cache(maxsize=32)
def _preparer(graphdef: nnx.GraphDef) -> Callable:
    """Jitted params -> the model's ``prepare_decode()``; cached per model structure."""
    def prepare_decode(params: Any) -> Any:  # named so in JAX_LOG_COMPILES and profiles
        return nnx.merge(graphdef, params).prepare_decode()
    return jax.jit(prepare_decode)


def prepared_weights(lm: TrainedLM) -> Any:
    """The weights as the decoder and featurizer read them (weight norm applied, cast to the
    compute dtype, transposed: ``prepare_decode``), computed once and kept in
    ``lm.decode_cache`` until ``lm.params`` changes (any leaf replaced). Preparing is a pass
    over every weight with transposing copies: ~0.3 s of each ``generate`` call for the
    12 x 768 transformer and the 4096-unit mLSTM on 2 CPU cores, a quarter of a 100-token
    call (``benchmarks/README.md``)."""
    leaves = jax.tree.leaves(lm.params)
    cache = lm.decode_cache
    held, prepared = cache.get("leaves"), cache.get("prepared")
    if (held is None or prepared is None or len(held) != len(leaves)
            or any(a is not b for a, b in zip(held, leaves))):
        # read and written by value: another thread's clear() between them loses no key
        prepared = _preparer(lm.graphdef)(lm.params)
        cache.clear()
        cache.update(prepared=prepared, leaves=leaves)  # leaves kept: their ids stay unique
    return prepared


def weights_fingerprint(lm: TrainedLM) -> str:
    """A digest of the parameters' names, dtypes, shapes and bytes (this process's replica,
    copied to the host): names the weights whatever workdir or step they are read from, so
    that cached features and saved classifiers notice a workdir retrained in place
    (``--config.resume=false``) or a checkpoint replaced. Kept in ``lm.decode_cache`` until
    ``lm.params`` changes; hashing is ~0.3 s for the 4096-unit mLSTM's 360 MB."""
    leaves = jax.tree_util.tree_leaves_with_path(lm.params)
    held = lm.decode_cache.get("fingerprint")
    if held is not None and len(held[0]) == len(leaves) and all(
            a is b for a, (_, b) in zip(held[0], leaves)):
        return held[1]
    h = hashlib.sha256()
    for path, leaf in leaves:
        value = jax.device_get(leaf.addressable_shards[0].data)
        h.update(f"{jax.tree_util.keystr(path)}:{value.dtype}:{value.shape};".encode())
        h.update(memoryview(value.tobytes()))
    digest = h.hexdigest()[:32]
    lm.decode_cache["fingerprint"] = ([leaf for _, leaf in leaves], digest)
    return digest


def lm_record(lm: TrainedLM, workdir: str) -> dict[str, Any]:
    """Which LM made an output: its folder, step (``best``: its weights kept as validated
    best), weights' fingerprint (what a saved classifier checks) and architecture (its
    kind's fields, not every kind's defaults)."""
    return {"workdir": absolute_path(workdir), "step": lm.step,
            **({"best": True} if lm.best else {}),
            "weights": weights_fingerprint(lm), "model": architecture(lm.config.model)}


def _check_compute(compute: str) -> None:
    if compute not in COMPUTE_DTYPES:
        raise ValueError(f"compute must be one of {list(COMPUTE_DTYPES)}, got {compute!r}")


def with_compute(lm: TrainedLM, compute: str, vocab_size: int | None = None) -> TrainedLM:
    """``lm`` reading the same weights with its matmuls in ``compute`` (float32 accumulation;
    states, pools, softmax and the weights themselves stay float32), as mixed-precision
    training runs them. bfloat16 featurizes 2-3x faster than float32 on a CPU with AMX
    (``benchmarks/README.md``), at ~0.2 % relative change in the features. ``vocab_size``:
    the model's (default: the tokenizer's)."""
    _check_compute(compute)
    if compute == lm.compute:
        return lm
    graphdef, like = model_params(lm.config.model, vocab_size or lm.tokenizer.vocab_size,
                                  dtype=jnp.dtype(compute), abstract=True)
    shapes = lambda tree: [(jax.tree_util.keystr(k), tuple(v.shape))
                           for k, v in jax.tree_util.tree_leaves_with_path(tree)]
    if shapes(like) != shapes(lm.params):
        raise ValueError(f"cannot read {lm.workdir or 'this LM'} in {compute}: its config "
                         "builds parameters of other names or shapes than it holds")
    return dataclasses.replace(lm, graphdef=graphdef, decode_cache={}, compute=compute)


def _not_a_run(workdir: str, config_path: str) -> str:
    """Why ``workdir`` (with no config.json) is no training run, with the way on: OpenAI's
    files or a .pt (the convert command), a file, a transfer output (its loader and LM)."""
    from lmscale.pretrained.errors import unconverted_hint
    hint = unconverted_hint(workdir)
    if hint:
        return hint
    if os.path.isfile(workdir):
        return (f"{workdir} is a file, not a training run: give the run's folder (the one "
                f"holding config.json and checkpoints/)")
    record = os.path.join(workdir, "classifier.json")  # what lmscale.transfer saves
    if os.path.exists(record):
        try:
            with open(record) as f:
                lm = json.load(f).get("lm_workdir")
        except (OSError, ValueError, AttributeError):
            lm = None
        return (f"{workdir} is a transfer output (lmscale.transfer's classifier), not a language "
                f"model: load it with lmscale.load_classifier({str(workdir)!r})"
                + (f"; the LM it read is {lm}" if lm else ""))
    return f"{workdir} is not a training run: {config_path} does not exist"


def load_trained(workdir: str, step: int | None = None, mesh: Mesh | None = None,
                 best: bool = False, compute: str = "float32") -> TrainedLM:
    """Restores the parameters of the latest (or given) checkpoint of ``workdir``; ``best``
    (or ``workdir`` given as WORKDIR/best): the weights with the lowest validation loss
    (``checkpoint.keep_best``, in WORKDIR/best/);
    ``compute``: the matmuls' dtype for inference (``with_compute``)."""
    _check_compute(compute)  # before the restore, which is the slow part
    workdir, in_best = best_folder(workdir)
    best = best or in_best
    if best and step is not None:
        raise ConfigError(f"the best weights and step {step} name two different weights of "
                          f"{workdir}: give one (best: those validated best, at their own step)")
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(_not_a_run(workdir, config_path))
    config, derived = _run_config(workdir, config_path)
    if "class_names" in derived:  # a lmscale.finetune run: a classifier, not a language model
        raise FileNotFoundError(
            f"{workdir} is a fine-tuned classifier (lmscale.finetune), not a language model: "
            f"load it with lmscale.load_classifier({str(workdir)!r}); the LM it started from is "
            f"{config.get('init_from') or 'named by its config.json init_from'}")
    step = None if step is None else _step_number(step)
    latest = step is None
    mesh = mesh or mesh_lib.make_mesh()
    # A run stopped before its first checkpoint (killed, diverged) after a validation kept its
    # best weights: config.json names their tokenizer and shapes.
    alone = (not step_folders(os.path.join(workdir, "checkpoints")) and "tokenizer" in derived
             and _kept_best(workdir))
    if alone and not best:
        raise FileNotFoundError(f"{workdir} holds no checkpoint; the weights it validated best "
                                f"are kept: read them with --best (load_lm's best=True)")
    if alone:
        tokenizer, vocab_size, graphdef, params, step = _best_alone(workdir, config, derived, mesh)
    for attempt in range(0 if alone else 3):  # a run in the workdir may rotate the newest away
        checkpointer = open_reader(workdir, config.checkpoint.keep)  # lists the steps
        try:
            on_disk = checkpointer.steps()  # newest first
            step = (on_disk[0] if on_disk else None) if latest else step
            if step is None and attempt < 2 and step_folders(checkpointer.directory):
                time.sleep(0.1)  # listed while the newest appeared and the oldest went
                continue
            if step is None:
                raise FileNotFoundError(f"{workdir} holds no checkpoint (looked in {checkpointer.directory})")
            if not best and step not in on_disk:
                raise FileNotFoundError(f"{workdir} holds no checkpoint of step {step}; its steps are "
                                        f"{sorted(on_disk)}")
            try:
                tokenizer, vocab_size, graphdef, params, step = _restore_step(
                    checkpointer, workdir, config, derived, step, best, mesh)
                break
            except UnreadableCheckpointError as e:
                time.sleep(0.2)  # a deletion under way (its files go first, then its folder)
                # --best reads the newest checkpoint's record only (its model): a rotated one is
                # read again at the newest left, as the latest's weights are
                if os.path.isdir(checkpointer.path(step)):
                    older = [s for s in on_disk if s < step]
                    if best or not older:
                        raise
                    raise UnreadableCheckpointError(
                        f"{e}; --step={older[0]} reads the one before it (lmscale.eval, generate "
                        f"and transfer; load_lm(..., step={older[0]}))") from None
                if not latest or attempt == 2:  # removed while being read
                    raise FileNotFoundError(
                        f"checkpoint {checkpointer.path(step)} was removed while being read (a "
                        f"training run in {workdir} keeps its newest {config.checkpoint.keep}); "
                        f"its steps are now {step_folders(checkpointer.directory)}") from None
        finally:
            checkpointer.close()
    lm = TrainedLM(config=config, derived=derived, tokenizer=tokenizer, graphdef=graphdef,
                   params=params, step=step, mesh=mesh, workdir=absolute_path(workdir),
                   best=best)
    return with_compute(lm, compute, vocab_size)


def open_reader(workdir: str, keep: int = 3) -> Checkpointer:
    """A read-only Checkpointer of ``workdir``. Orbax reads each step folder's time as it
    lists them, and a run training in the workdir may delete one meanwhile (a raw
    FileNotFoundError in 1 % of loads while a run saved every step, or orbax's
    NotADirectoryError when the folder went between its exists() and is_dir()): listed
    again, 3 times."""
    for _ in range(3):
        try:
            return Checkpointer(workdir, keep=keep, read_only=True)
        except (FileNotFoundError, NotADirectoryError) as e:
            if not os.path.isdir(os.path.join(workdir, "checkpoints")):
                raise  # nothing to read: named by the Checkpointer
            error = e
            time.sleep(0.1)
    raise FileNotFoundError(f"the checkpoints of {workdir} kept changing while being listed "
                            f"(a training run rotating them: {error})")


def step_folders(directory: str) -> list[int]:
    """The step numbers of the folders in ``directory`` (orbax's listing aside), ascending."""
    try:
        return sorted(int(n) for n in os.listdir(directory) if n.isdigit())
    except FileNotFoundError:
        return []


def _run_config(workdir: str, config_path: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """The run's config and derived values from its config.json; where that is unreadable
    (torn, hand-damaged), from the newest checkpoint's own record of them, with a note (the
    file is left as it is: the next training run in the workdir sets it aside and writes it
    again)."""
    try:
        return load_config(config_path)
    except ConfigError as e:
        reader = Checkpointer(workdir, read_only=True)
        try:
            steps = reader.steps()
            meta = reader.read_meta(steps[0]) if steps else {}
        except CheckpointError:
            meta = {}
        finally:
            reader.close()
        if not meta.get("config"):
            raise
        config, derived = config_from_record({**meta["config"], "derived": meta.get("derived")},
                                             f"{reader.path(steps[0])} (its config record)")
        print(f"note: {e}; using the config recorded in checkpoint {reader.path(steps[0])}",
              file=sys.stderr, flush=True)
        return config, derived


def _step_number(step: Any) -> int:
    """A checkpoint step given as an int (or a string of digits, as from a command line)."""
    if isinstance(step, (int, np.integer)) and not isinstance(step, bool):
        return int(step)
    if isinstance(step, str) and step.strip().isdigit():
        return int(step)
    raise ValueError(f"step must be a checkpoint's step number (an int), got {step!r}")


def _restore_step(checkpointer: Checkpointer, workdir: str, config: ml_collections.ConfigDict,
                  derived: dict[str, Any], step: int, best: bool, mesh: Mesh) -> tuple[Any, ...]:
    """(tokenizer, vocab size, graphdef, params, step) of checkpoint ``step`` (``best``: of
    WORKDIR/best/, its step)."""
    signature = checkpointer.read_meta(step)["signature"]
    tokenizer = tokenizer_from_dict(signature["data.tokenizer"], base_dir=workdir)
    vocab_size = signature["vocab_size"]
    # Shapes only: nothing is initialized just to be replaced.
    graphdef, like = model_params(config.model, vocab_size, abstract=True)
    try:
        check_same_model(signature, model_signature(config, tokenizer.to_dict(), vocab_size, True),
                         workdir, ignore=("train.batch_size",))  # the carry is not restored
    except ModelMismatchError as e:  # training's way out (--config.resume) is no flag here
        record = os.path.join(checkpointer.path(step), "meta", "metadata")
        raise CheckpointMismatchError(
            f"{os.path.join(workdir, 'config.json')} does not describe checkpoint "
            f"{checkpointer.path(step)}: {e.key} is {e.current!r} in config.json and "
            f"{e.saved!r} in the checkpoint (config.json edited, or the checkpoint copied from "
            f"another run); restore config.json to the config the checkpoint was trained with "
            f"(recorded in {record}), or read a checkpoint of this model") from None
    if best:
        from lmscale.training.best import restore_best_params
        params, step = restore_best_params(workdir, like, mesh_lib.replicated(mesh))
    else:
        params = checkpointer.restore_params(like, mesh_lib.replicated(mesh), step)
    if config.optim.name in AVERAGING_OPTIMIZERS and not best:  # the averaged weights, once averaging is on
        params = _averaged_params(checkpointer, config, derived, like, params, mesh, step)
    return tokenizer, vocab_size, graphdef, params, step


def _kept_best(workdir: str) -> bool:
    """Whether best.json names weights WORKDIR/best/ holds (an older lmscale stopped mid-offer
    left it naming none: --best's error sent the user back to the checkpoints, and theirs to
    --best)."""
    from lmscale.training.best import BEST_DIR, read_best
    record = read_best(workdir)
    return record is not None and os.path.isdir(os.path.join(workdir, BEST_DIR,
                                                             str(int(record["step"]))))


def _best_alone(workdir: str, config: ml_collections.ConfigDict, derived: dict[str, Any],
                mesh: Mesh) -> tuple[Any, ...]:
    """(tokenizer, vocab size, graphdef, params, step) of WORKDIR/best/ in a run with no
    checkpoint, its tokenizer and vocabulary as config.json records them."""
    from lmscale.training.best import restore_best_params
    tokenizer = tokenizer_from_dict(derived["tokenizer"], base_dir=workdir)
    vocab_size = derived["vocab_size"]
    graphdef, like = model_params(config.model, vocab_size, abstract=True)
    params, step = restore_best_params(workdir, like, mesh_lib.replicated(mesh))
    return tokenizer, vocab_size, graphdef, params, step


def _averaged_params(checkpointer: Checkpointer, config: ml_collections.ConfigDict,
                     derived: dict[str, Any], like: Any, params: Any, mesh: Mesh, step: int) -> Any:
    """The NT-ASGD average of a checkpoint if averaging was on at ``step``, else ``params``."""
    from lmscale.training.ntasgd import eval_params
    from lmscale.training.optimizer import make_optimizer
    tx, _ = make_optimizer(config.optim, derived.get("decay_steps", 1), lr=derived.get("lr"),
                           lr_drop_steps=derived.get("lr_drop_steps", ()),
                           step_factor=bool(config.train.variable_bptt))
    opt_like = jax.eval_shape(tx.init, like)
    opt_state = checkpointer.restore_field("opt_state", opt_like, mesh_lib.replicated(mesh), step)
    return eval_params(params, opt_state)
