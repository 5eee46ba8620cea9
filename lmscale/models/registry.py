"""Model kinds: what the trainer, eval, plan, transfer and generation need of a model family.

The trainer is model-agnostic: it only talks to a :class:`ModelKind` (registered under
``model.kind``) and to the module it builds, which implements the language-model interface
below. A new family is one file that defines its module and registers its kind: inside the
package, imported by ``lmscale/models/__init__.py``; or a module of your own, found by every
tool through ``LMSCALE_MODEL_MODULES`` or a package's ``lmscale.models`` entry points
(:func:`load_plugins`; ``examples/gru_kind.py`` is one, with its NumPy check); its module is
checked against the interface when built (``interface_check``).

The module interface (an ``nnx.Module``; all arrays batch-major):

* ``initial_carry(batch_size) -> carry``: the state carried from one batch to the next of
  the same rows (truncated BPTT), all zeros (callers may fill it on the host from its
  shapes). A pytree whose leaves all have the batch as their leading axis (they are sharded
  along it), or ``()`` for a model that carries nothing (the transformer).
* ``__call__(tokens int32 [B, T], carry, resets bool [B, T] | None = None, *,
  dropout_key=None) -> (logits float32 [B, T, V], new carry)``. ``resets[b, t]`` starts a
  new segment before ``tokens[b, t]`` (a recurrent model zeroes its state, a transformer
  stops attention across it). ``dropout_key``: None (deterministic), one key, or one key per
  row ([B, 2]) so that a row's masks do not depend on the batch it is in.
* ``features(tokens, carry, resets=None, prepared=None, *, dropout_key=None,
  step_key=None) -> dict``: per-layer states for transfer, float32 [L, B, T, F], under each
  name of ``feature_states`` (e.g. "cell", "hidden"), plus ``"carry"``: the new carry.
  ``prepared``: ``prepare_decode``'s (featurizing passes it when that is not None); the keys
  as ``regularized_call``'s (fine-tuning with ``finetune.lm_dropout`` passes them).
* ``feature_states``: tuple of names ``features`` returns; the first is the default.
* ``feature_width``: F; ``num_layers``: L.
* ``max_len``: the longest sequence the model reads at once (None: unbounded, state carried).
* ``init_decode(batch_size, max_length) -> state`` and ``decode_step(tokens int32 [B],
  state, prepared=None) -> (logits float32 [B, V], state)``: one token at a time, for
  generation (a recurrent model's state is its carry; a transformer's is its key/value
  cache). ``prepare_decode() -> prepared``: the weights as ``decode_step`` reads them
  (weight norm applied, cast, laid out), computed once before the token loop, since XLA
  does not hoist that work out of it (None: each step prepares its own).
* ``fix_unit(state, unit, value, which) -> state`` (optional): the decode state with one
  unit of the last layer held at ``value`` (``which`` one of ``feature_states``); models
  without it cannot generate with a fixed neuron.
* ``regularized_call(tokens, carry, resets=None, *, dropout_key=None, step_key=None) ->
  (logits [B, T, V], new carry, penalty float32 [B] | None)`` (optional; the recurrent kinds
  have it): the training forward pass. ``dropout_key`` as in ``__call__`` (per-row masks:
  locked dropout, zoneout); ``step_key`` [2]: one key per training step, the same on every
  device of a data-parallel step, for masks drawn once per forward pass (embedding dropout,
  weight drop). ``penalty``: an auxiliary loss per row (AR/TAR), whose mean over the global
  batch the trainer adds to the training loss only (never to the logged loss or BPC); None
  when there is none. :func:`training_forward` calls it, or ``__call__`` for models
  without it (penalty None), so a model without it needs no change.

Conventions the tools rely on: ``config.model.layers`` is the depth (fine-tuning's layer
groups); the parameters of layer i live under ``layers[i]`` (or a transformer's ``blocks``)
and the embedding under ``embedding`` — ``finetune.layer_lr_decay``/``unfreeze_every`` give
any other parameter the top layer's group; the last layer's ``holdable_states`` (optional)
names the states generation may hold (default ``feature_states``); the CLI's state flags
(``--state``, ``--neuron_state``) take these names. A kind reads existing
``config.model`` fields (``embed``, ``hidden``, ``layers``, ``dropout``...) and fields of
its own, declared in its ``settings`` (a config file adds them before ``c.lock()``; a run
whose config never names them has them at their defaults, and config.json records them; a
setting that shapes the parameters belongs in ``fields`` too, so that a resume checks it). On CPUs, a bfloat16 matmul must return
bfloat16 (XLA:CPU has no bfloat16 x bfloat16 = float32 dot): ``fast_dot.dense`` does it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """A model family: how to build it from ``config.model`` and what it costs.

    ``fields``: the ``config.model`` fields that define the architecture (what a checkpoint
    must match; dropouts are not among them). ``validate(model_config, train_config)`` raises
    ValueError naming the bad key. ``flops_per_token(model_config, vocab_size, seq_len)``:
    forward matmul FLOPs per token (training is about 3x); a kind with an adaptive softmax
    also takes ``tail_shares`` (see :func:`flops_per_token`). ``settings``: the optional
    ``config.model`` settings this kind reads that not every kind does (regularizers and
    options; name -> the default, which leaves them off), for :func:`unused_settings_note`.
    """

    name: str
    fields: tuple[str, ...]
    build: Callable[..., nnx.Module]  # (model_config, vocab_size, *, rngs, dtype) -> module
    validate: Callable[[Any, Any], None]
    flops_per_token: Callable[..., int]
    describe: Callable[[Any], str]  # one line for humans: "mlstm hidden 4096 embed 64 layers 1"
    settings: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    # (model_config, train_config) -> the longest sequence training reaches when the model
    # reads longer ones with parameters it never trains (a transformer's learned positions past
    # train.seq_len), else None: see :func:`trained_length`.
    trained_length: Callable[[Any, Any], int | None] | None = dataclasses.field(default=None,
                                                                               compare=False)
    # (model_config, seq_len) -> forward FLOPs per token a training step computes again under
    # the kind's model.remat, called only with remat on (what the device executes beyond the
    # model's 3x forward); None: the kind recomputes nothing (see
    # :func:`recompute_flops_per_token`).
    recompute_flops_per_token: Callable[[Any, int], int] | None = dataclasses.field(
        default=None, compare=False)


_KINDS: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    if kind.name in _KINDS:
        raise ValueError(f"model kind {kind.name!r} is registered twice")
    _KINDS[kind.name] = kind
    return kind


PLUGIN_GROUP = "lmscale.models"  # entry points naming modules that register model kinds
PLUGIN_ENV = "LMSCALE_MODEL_MODULES"  # comma-separated modules that register model kinds


class UnknownModelKind(ValueError):
    """``model.kind`` names no registered kind (the CLI says it in one line)."""


def model_kinds() -> tuple[str, ...]:
    """The registered kinds: the built-in ones and those of plugins (:func:`load_plugins`)."""
    load_plugins()
    return tuple(sorted(_KINDS))


def get_kind(name: str) -> ModelKind:
    if name not in _KINDS:
        load_plugins()
    if name not in _KINDS:
        raise UnknownModelKind(
            f"unknown model.kind {name!r}; expected one of {list(model_kinds())} (a kind of "
            f"your own registers itself when its module is imported: name the module in "
            f"{PLUGIN_ENV}=module[,module...], or declare it under the {PLUGIN_GROUP!r} entry "
            f"points of an installed package)")
    return _KINDS[name]


_LOADED: set[str] = set()  # plugin modules imported (each once)


def load_plugins() -> None:
    """Imports the modules that register model kinds of their own: those named in the
    ``LMSCALE_MODEL_MODULES`` environment variable (importable from ``sys.path``, e.g. by
    ``PYTHONPATH``) and the ``lmscale.models`` entry points of installed packages. Every tool
    reaches its kinds through :func:`get_kind`, so a run of a plugin kind trains, resumes,
    evaluates, generates and transfers as a built-in one does (the tools that read a run's
    config.json included). A module that fails to import raises, naming it."""
    import importlib
    import os
    from importlib.metadata import entry_points
    loaders = [(n.strip(), PLUGIN_ENV, lambda n=n.strip(): importlib.import_module(n))
               for n in os.environ.get(PLUGIN_ENV, "").split(",") if n.strip()]
    loaders += [(e.value, f"entry point {e.name!r}", e.load) for e in entry_points(group=PLUGIN_GROUP)]
    for name, source, load in loaders:
        if name in _LOADED:
            continue
        _LOADED.add(name)
        before = dict(_KINDS)
        try:
            load()
        except Exception as e:  # any error of the user's module: named, not a bare traceback
            _LOADED.discard(name)
            _KINDS.clear()  # a kind it registered before failing is not half there
            _KINDS.update(before)
            raise UnknownModelKind(f"cannot import the model module {name!r} ({source}): "
                                   f"{type(e).__name__}: {e}") from e


def build_model(model_config: Any, vocab_size: int, *, rngs: nnx.Rngs,
                dtype: Any = jnp.float32) -> nnx.Module:
    """The module of ``model_config.kind`` (parameters float32, matmuls in ``dtype``); a
    kind of one's own is checked against the interface first (``interface_check``)."""
    from lmscale.config_values import BUILT_IN_KINDS
    kind = get_kind(model_config.kind)
    model = kind.build(model_config, vocab_size, rngs=rngs, dtype=dtype)
    if kind.name not in BUILT_IN_KINDS:
        from lmscale.models.interface_check import check_module
        check_module(kind.name, repr(sorted(architecture(model_config).items())), model,
                     vocab_size)
    return model


def flops_per_token(model_config: Any, vocab_size: int, seq_len: int = 1,
                    tail_shares: tuple[float, ...] | None = None) -> int:
    """Forward matmul FLOPs per token of ``model_config`` at sequence length ``seq_len``.

    With ``model.adaptive_cutoffs``, all V logits are counted (what inference forms) unless
    ``tail_shares`` gives the fraction of targets in each tail cluster: then the training
    loss's logits (the head's, and each target's cluster's; ``adaptive_softmax.tail_shares``).
    """
    kind = get_kind(model_config.kind)
    if tail_shares is None:
        return int(kind.flops_per_token(model_config, vocab_size, seq_len))
    return int(kind.flops_per_token(model_config, vocab_size, seq_len, tail_shares=tail_shares))


def recompute_flops_per_token(model_config: Any, seq_len: int) -> int:
    """Forward FLOPs per token a training step of ``model_config`` computes again under its
    ``model.remat``: 0 without remat, and for a kind that declares no count (it recomputes
    nothing); else the kind's count under its remat."""
    kind = get_kind(model_config.kind)
    if model_config.get("remat", "none") == "none" or kind.recompute_flops_per_token is None:
        return 0
    return int(kind.recompute_flops_per_token(model_config, seq_len))


def trained_length(config: Any) -> int | None:
    """The longest sequence a run of ``config`` trains its model on, when the model reads
    longer ones with parameters that training never reaches (a transformer's learned
    positions from ``train.seq_len`` to ``model.max_len``); None when every length it reads is
    trained (recurrent kinds, sinusoidal positions, seq_len = max_len)."""
    kind = get_kind(config.model.kind)
    return None if kind.trained_length is None else kind.trained_length(config.model, config.train)


def untrained_positions_note(config: Any, longest: int, what: str) -> str | None:
    """A note when ``what`` (e.g. "3 of 100 texts run") reads ``longest`` tokens, past
    :func:`trained_length`; None when it does not."""
    trained = trained_length(config)
    if trained is None or longest <= trained:
        return None
    return (f"note: {what} past the {trained} positions this LM was trained at "
            f"(train.seq_len={config.train.seq_len}, model.max_len={config.model.max_len}): "
            f"its positions {trained}..{config.model.max_len - 1} were never trained, so what "
            f"it reads there is unreliable")


def trained_length_note(config: Any) -> str | None:
    """For a training run: a note when it trains only the first of the model's positions."""
    trained = trained_length(config)
    if trained is None:
        return None
    return (f"note: model.max_len={config.model.max_len} is longer than the {trained} tokens "
            f"this run trains on (train.seq_len={config.train.seq_len}): its positions "
            f"{trained}..{config.model.max_len - 1} are never trained, and featurizing or "
            f"generating past {trained} tokens reads them (scoring reads windows of {trained}); "
            f"set model.max_len={trained}, or train.seq_len={config.model.max_len}")


def architecture(model_config: Any) -> dict[str, Any]:
    """The fields that define the architecture of ``model_config`` (its kind's ``fields``)."""
    kind = get_kind(model_config.kind)
    return {"kind": kind.name, **{f: model_config[f] for f in kind.fields}}


def unused_settings_note(model_config: Any) -> str | None:
    """A note naming the settings of other kinds (their ``settings``) moved from their
    defaults in a model of ``model_config.kind``, which ignores them (config.json records
    them as given; a config can be rerun as another kind for comparison), and a recurrent
    model's between-layer dropouts set with one layer. None when there are none. Sizes
    (``hidden``, ``d_model``, ...) are not named: a training run prints its ``describe`` line.
    """
    own = get_kind(model_config.kind).settings
    owners: dict[str, list[str]] = {}
    defaults: dict[str, Any] = {}
    for name in model_kinds():
        for field, default in _KINDS[name].settings.items():
            if field not in own:
                owners.setdefault(field, []).append(name)
                defaults[field] = default
    groups: dict[tuple[str, ...], list[str]] = {}
    for field, kinds in owners.items():
        value = model_config.get(field, defaults[field])
        if value != defaults[field]:
            groups.setdefault(tuple(kinds), []).append(f"model.{field}={value!r}")
    parts = []
    for kinds, moved in groups.items():
        what = "is a setting" if len(moved) == 1 else "are settings"
        of = (f"model.kind={kinds[0]!r}" if len(kinds) == 1 else
              "model.kind " + ", ".join(map(repr, kinds[:-1])) + f" or {kinds[-1]!r}")
        parts.append(f"{', '.join(moved)} {what} of {of}")
    note = f"note: {'; '.join(parts)}, unused by model.kind={model_config.kind!r}" if parts else None
    between = [f"model.{f}={model_config[f]!r}" for f in _unused_between_layers(model_config)
               if float(model_config.get(f, 0.0)) > 0]
    if between:
        one = (f"note: {', '.join(between)} drop{'s' if len(between) == 1 else ''} between "
               f"stacked layers, unused with model.layers=1 (model.input_dropout and "
               f"output_dropout drop the layer's input and output)")
        note = one if note is None else f"{note}\n{one}"
    return note


def _unused_between_layers(model_config: Any) -> tuple[str, ...]:
    """The dropout fields a recurrent kind applies between stacked layers, when it has one
    layer (no such place); () otherwise."""
    recurrent = "hidden_dropout" in get_kind(model_config.kind).settings
    return ("dropout", "hidden_dropout") if recurrent and int(model_config.layers) == 1 else ()


def is_dropout_field(name: str) -> bool:
    """Whether ``config.model.<name>`` is a dropout rate (``dropout``, ``*_dropout``,
    ``*_zoneout``)."""
    return name == "dropout" or name.endswith(("_dropout", "_zoneout"))


def feature_dropouts(model_config: Any) -> dict[str, float]:
    """The dropout rates above 0 that reach a model's states in training and vanish at
    evaluation (fine-tuning's ``finetune.lm_dropout`` scales them): its kind's own dropout
    fields but ``output_dropout`` (the decoder's input only), a QRNN's zoneout (evaluation
    reads f times 1 - zoneout: it stays as trained) and, with one recurrent layer, those
    between stacked layers."""
    own = get_kind(model_config.kind).settings
    unused = _unused_between_layers(model_config)
    rates = {}
    for name in model_config.keys():
        if (not is_dropout_field(name) or name.endswith("_zoneout")
                or (name != "dropout" and name not in own) or name == "output_dropout"
                or name in unused):
            continue
        if float(model_config[name]) > 0:
            rates[name] = float(model_config[name])
    return rates


def with_dropouts_scaled(model_config: Any, factor: float) -> Any:
    """A copy of ``model_config`` whose ``feature_dropouts`` are times ``factor`` (ULMFiT's
    drop_mult: fine-tuning's ``finetune.lm_dropout``); its other dropouts, never drawn in
    fine-tuning, 0; zoneout as trained."""
    import ml_collections
    scaled = ml_collections.ConfigDict(model_config.to_dict())
    applied = feature_dropouts(model_config)
    for name in scaled.keys():
        if is_dropout_field(name) and not name.endswith("_zoneout"):
            scaled[name] = applied.get(name, 0.0) * float(factor)
    return scaled


def uses_dropout(model_config: Any) -> bool:
    """Whether any dropout field of ``model_config`` is above 0."""
    return any(float(model_config[k]) > 0 for k in model_config.keys() if is_dropout_field(k))


def carries_state(initial_carry: Callable[[int], Any]) -> bool:
    """Whether a model's carry holds anything (the recurrent kinds; a transformer's is ())."""
    import jax
    return bool(jax.tree.leaves(jax.eval_shape(lambda: initial_carry(1))))


def training_forward(model: nnx.Module, tokens: Any, carry: Any, resets: Any, *,
                     dropout_key: Any = None, step_key: Any = None) -> tuple[Any, Any, Any]:
    """The training forward pass of any model: (logits, new carry, penalty [B] or None).

    Uses the model's optional ``regularized_call`` (see the module docstring), else
    ``__call__`` with no penalty (``step_key`` is then unused).
    """
    if hasattr(model, "regularized_call"):
        return model.regularized_call(tokens, carry, resets, dropout_key=dropout_key,
                                      step_key=step_key)
    logits, new_carry = model(tokens, carry, resets, dropout_key=dropout_key)
    return logits, new_carry, None
