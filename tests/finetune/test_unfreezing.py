"""``finetune.unfreeze_every``: gradual unfreezing (ULMFiT), the LM's layers joining the training
from the top, each bit-identical to the pretrained LM until its step."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lmscale.config import ConfigError
from lmscale.finetuning import layer_rates
from lmscale.training.resume import CheckpointMismatchError, check_same_optimizer
from tests.conftest import TINY_TRANSFORMER, shared_data, tiny_config


def test_the_plan_and_its_groups():
    assert layer_rates.unfreeze_starts(0, 5, 2) is None
    assert layer_rates.unfreeze_starts(3, 5, 2) == [5, 8, 11]
    assert [layer_rates.unfrozen_groups(s, [5, 8, 11], 5, 2) for s in (4, 5, 7, 8, 11, 99)] == \
        [0, 1, 1, 2, 3, 3]
    assert [layer_rates.unfrozen_groups(s, None, 5, 2) for s in (4, 5)] == [0, 3]
    assert layer_rates.unfreezing_note([5, 8, 11], 10) == (
        "gradual unfreezing: layer 1 from step 5, layer 0 from step 8, embeddings from step 11; "
        "embeddings start(s) at or after train.steps=10 and stay frozen")
    assert layer_rates.unfreezing_note([5, 8, 11], 20, 20, warmup_steps=10) == (
        "gradual unfreezing: layer 1 from step 5, layer 0 from step 8, embeddings from step 11; "
        "embeddings start(s) within optim.warmup_steps=10 of the decay horizon (step 20): the "
        "warmup runs past it")
    assert layer_rates.unfreezing_note([5, 8, 11], 20, 10) == (
        "gradual unfreezing: layer 1 from step 5, layer 0 from step 8, embeddings from step 11; "
        "embeddings start(s) at or after the decay horizon (step 10): at the rate the schedule "
        "ends at")
    assert layer_rates.rates_note(1.0, 2.0, 2) == (
        "discriminative rates: layer 1 1, layer 0 0.5, embeddings 0.25")
    with pytest.raises(ConfigError, match="unfreeze_every must be >= 0"):
        layer_rates.unfreeze_starts(-1, 0, 2)
    # A transformer's stacked blocks: row l is layer l, trained once its group is.
    blocks = (jax.tree_util.DictKey("lm"), jax.tree_util.DictKey("blocks"),
              jax.tree_util.DictKey("qkv"))
    assert [layer_rates.group_of(blocks, 3, row=r) for r in (None, 0, 2)] == [None, 2, 0]
    rows = [layer_rates.trains_top(g, 3)(blocks) for g in (0, 1, 2, 3)]
    assert rows[0] is False and rows[3] is True and layer_rates.trains_top(4, 3) is None
    assert [list(r) for r in rows[1:3]] == [[False, False, True], [False, True, True]]


def test_a_resume_that_moves_the_holds_is_refused():
    """On/off changes the optimizer state's tree; another pace or freeze would hold again the
    groups that had started (an audit saw trained layers stop moving after such a resume)."""
    run = lambda every, freeze=0: {"optim": {"clip": 0.25, "weight_decay": 0.0},
                                   "finetune": {"unfreeze_every": every, "freeze_steps": freeze}}
    for old, new, key in [(run(0), run(10), "unfreeze_every=0"), (run(5), run(10), "unfreeze_every=5"),
                          (run(5, 2), run(5, 4), "freeze_steps=2")]:
        with pytest.raises(CheckpointMismatchError, match=f"finetune.{key}; resuming it .* "
                                                          "count from the run's start"):
            check_same_optimizer(old, new, "runs/ft", fine_tuning=True)
    check_same_optimizer(run(5, 2), run(5, 2), "runs/ft", fine_tuning=True)
    older = {"optim": {"clip": 0.25, "weight_decay": 0.0}, "finetune": {"freeze_steps": 0}}
    check_same_optimizer(older, run(0), "runs/ft", fine_tuning=True)  # recorded before the field


@pytest.fixture(scope="module", params=["mlstm", "transformer"])
def two_layer_lm(request, tmp_path_factory) -> str:
    from lmscale.training.loop import train
    workdir = str(tmp_path_factory.mktemp("lm2") / "run")
    model = TINY_TRANSFORMER if request.param == "transformer" else {"model.layers": 2}
    train(tiny_config(f"{shared_data('sst_binary')}/train.csv", **model, **{
        "data.text_column": "sentence", "data.split": "8,1,0", "data.shard_tokens": 65536,
        "train.steps": 4, "train.eval_every": 0}), workdir)
    return workdir


def test_layers_join_from_the_top_each_untouched_until_its_step(two_layer_lm, data, tmp_path,
                                                                 capsys):
    """A transformer's blocks (one array, a layer a row) join row by row, as recurrent layers."""
    from lmscale.finetuning.classifier import load_classifier
    from lmscale.finetuning.loop import finetune
    from lmscale.training.checkpoints import Checkpointer
    from lmscale.training.metrics import read_metrics
    from lmscale.training.restore import load_trained
    from tests.finetune.conftest import ft_config
    run = str(tmp_path / "ft")
    finetune(ft_config(two_layer_lm, data["sst_train"], data["sst_val"], **{
        "train.steps": 5, "finetune.freeze_steps": 1, "finetune.unfreeze_every": 1,
        "finetune.layer_lr_decay": 2.0, "finetune.aux_lm_weight": 0.1, "checkpoint.every": 1, "checkpoint.keep": 10,
        "train.log_every": 1, "train.progress_bar": True}), run)
    assert ("gradual unfreezing: layer 1 from step 1, layer 0 from step 2, embeddings from "
            "step 3") in capsys.readouterr().err
    pretrained = jax.device_get(load_trained(two_layer_lm).params)
    like = load_classifier(run).params
    ck = Checkpointer(run, async_save=False)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    at = {k: jax.device_get(ck.restore_params(like, device, k)) for k in range(1, 6)}
    ck.close()
    # (the decoder learns from the auxiliary LM loss only)
    parts = {"decoder": lambda p: p["decoder"], "layer 1": lambda p: p["layers"][1],
             "layer 0": lambda p: p["layers"][0], "embedding": lambda p: p["embedding"]}
    if "blocks" in pretrained:
        row = lambda r: lambda p: jax.tree.map(lambda x: x[r], p["blocks"])
        parts = {"decoder": lambda p: (p["head"], p["head_bias"]), "layer 1": row(1),
                 "layer 0": row(0), "embedding": lambda p: (p["embedding"],
                                                            p["position_embedding"])}
    # checkpoint k holds k updates (steps 0..k-1): a group starting at step s first moves in s+1
    first_moved = {"decoder": 2, "layer 1": 2, "layer 0": 3, "embedding": 4}
    for name, pick in parts.items():
        for k in range(1, 6):
            same = all(np.array_equal(a, b) for a, b in zip(
                jax.tree.leaves(pick(at[k]["lm"])), jax.tree.leaves(pick(pretrained))))
            assert same == (k < first_moved[name]), (name, k)
    # The logged LM rate is the top group's: 0 while frozen, the rate from step 2 on.
    lm_lrs = [r["lm_lr"] for r in read_metrics(run) if r["split"] == "train"]
    assert lm_lrs[0] == 0.0 and all(lr == pytest.approx(3e-3) for lr in lm_lrs[1:])


@pytest.mark.parametrize("model", [{"model.layers": 2}, TINY_TRANSFORMER],
                         ids=["mlstm", "transformer"])
def test_each_group_starts_its_own_adam_at_its_step_at_its_rate(model):
    """The first update of a group that joins at step s is Adam's first step (bias-corrected
    from 1, not from s) at lr / d^g: one Adam state per group (per row of a transformer's
    stacked blocks)."""
    import functools
    import jax.numpy as jnp
    import optax
    from lmscale.config import default_config
    from lmscale.finetuning.head import init_classifier
    from lmscale.training.optimizer import make_finetune_optimizer
    _, params, _ = init_classifier(tiny_config("x", **model), 257, 2, jnp.float32)
    grads = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=jnp.float32)).reshape(p.shape),
                         params)
    o = default_config().optim
    with o.unlocked():
        o.clip, o.schedule, o.warmup_steps = 0.0, "constant", 0
    lr, d, starts = 1e-2, 2.0, [1, 2, 3]
    groups = (functools.partial(layer_rates.group_of, num_layers=2), starts,
              [1.0, 1 / d, 1 / d ** 2])
    tx, _ = make_finetune_optimizer(o, 10, lr=lr, head_lr=lr, freeze_steps=1, groups=groups)
    # Each step's gradient another multiple of the first (with one gradient throughout, Adam's
    # bias-corrected step is the same whether or not a held group's moments ran on: a hold
    # that advanced them passed)
    at_step = lambda k: jax.tree.map(lambda g: (1.0 + 3.0 * k) * g, grads)
    state, updates = tx.init(params), []
    for k in range(4):
        u, state = tx.update(at_step(k), state, params)
        updates.append(jax.device_get(u))
    adam = lambda rate: optax.adam(rate, b1=o.b1, b2=o.b2, eps=o.eps)
    flat_updates = [jax.tree.leaves(u["lm"]) for u in updates]
    # A group starting at or after the decay horizon: at the rate its schedule ends at, as the
    # rest of the LM by then (linear: 0, it never moves; constant: its peak, it trains).
    for schedule, moves in (("linear", False), ("constant", True)):
        with o.unlocked():
            o.schedule = schedule
        tx3, _ = make_finetune_optimizer(o, 3, lr=lr, head_lr=lr, freeze_steps=1, groups=groups)
        state3, embedding_moves = tx3.init(params), []
        for _ in range(5):
            u, state3 = tx3.update(grads, state3, params)
            embedding_moves.append(float(jnp.max(jnp.abs(jax.tree.leaves(u["lm"]["embedding"])[0]))))
        assert embedding_moves[:3] == [0.0] * 3 and (embedding_moves[3] > 0) == moves, schedule
    with o.unlocked():
        o.schedule = "constant"
    for i, (path, g) in enumerate(jax.tree_util.tree_flatten_with_path(grads["lm"])[0]):
        stacked = layer_rates.group_of(path, 2) is None
        for row in range(g.shape[0]) if stacked else [None]:
            group = layer_rates.group_of(path, 2, row=row)
            pick = (lambda x: x[row]) if stacked else (lambda x: x)
            g_start = (1.0 + 3.0 * starts[group]) * pick(g)
            first, _ = adam(lr / d ** group).update(g_start, adam(lr / d ** group).init(g_start))
            for step, leaves in enumerate(flat_updates):
                if step < starts[group]:
                    np.testing.assert_array_equal(pick(leaves[i]), 0.0)
                elif step == starts[group]:
                    np.testing.assert_allclose(pick(leaves[i]), np.asarray(first), rtol=1e-5,
                                               err_msg=f"{jax.tree_util.keystr(path)} {row}")


def test_the_step_gives_a_stacked_leaf_gradients_in_its_trained_rows_only():
    """With the top block of two trained (``trains_top(1, 2)``), one SGD step at rate 1 moves
    row 1 of every block parameter by exactly its full-training gradient, row 0 and the
    embeddings not at all: the frozen rows give nothing to the global norm a clip reads; and
    the frozen block runs forward only."""
    import jax.numpy as jnp
    import optax
    from lmscale.finetuning.data import make_batch
    from lmscale.finetuning.head import init_classifier
    from lmscale.finetuning.loop import init_finetune_state
    from lmscale.finetuning.steps import BATCH_KEYS, make_finetune_step
    from lmscale.training import mesh as mesh_lib
    from lmscale.training.precision import Policy
    config = tiny_config("unused.txt", **TINY_TRANSFORMER)
    graphdef, params, _ = init_classifier(config, 257, 2, jnp.float32)
    mesh, tx = mesh_lib.make_mesh(), optax.sgd(1.0)
    rng = np.random.default_rng(0)
    texts = [rng.integers(1, 257, n).astype(np.int32) for n in (5, 17, 30, 9)]
    batch = make_batch(texts, np.arange(4) % 2, 4, pad=0, bucket=16, max_len=32,
                       row_weights=np.ones(4, np.float32))

    block_passes = {}

    def delta(trains):
        state = init_finetune_state(config, Policy.from_compute("float32"), tx, params, mesh)
        step = make_finetune_step(graphdef, tx, mesh, multilabel=False, class_weights=None,
                                  aux_weight=0.5, train_lm=True, dropout=False, trains=trains)
        inputs = {k: batch[k] for k in BATCH_KEYS}
        block_passes[trains is None] = sum(_scan_lengths(jax.make_jaxpr(step)(state, inputs).jaxpr))
        step = jax.jit(step)
        before = jax.device_get(state.params)
        after, metrics = step(state, inputs)
        return (jax.tree.map(lambda a, b: a - b, before, jax.device_get(after.params))["lm"],
                float(metrics["grad_norm"]))

    full, full_norm = delta(None)
    top, top_norm = delta(layer_rates.trains_top(1, 2))
    # Blocks run by the step's scans, in its two LM passes (the head's features, the aux loss):
    # all trained, 2 forward + 2 backward each; the top one, the frozen block forward only
    # (scanned apart) and the top block forward and backward (one scan over both: 8 as well).
    assert block_passes == {True: 8, False: 6}, block_passes
    for (path, f), t in zip(jax.tree_util.tree_flatten_with_path(full["blocks"])[0],
                            jax.tree.leaves(top["blocks"])):
        np.testing.assert_array_equal(t[0], 0.0, err_msg=jax.tree_util.keystr(path))
        np.testing.assert_allclose(t[1], f[1], rtol=1e-5, atol=3e-7)  # (after - before: ulps of the weights)
        assert np.abs(f[0]).max() > 0
    for name in ("embedding", "position_embedding"):
        np.testing.assert_array_equal(top[name], 0.0)
    assert 0 < top_norm < full_norm


def _scan_lengths(jaxpr) -> list[int]:
    """The ``length`` of every ``scan`` in a jaxpr, nested ones included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            out.append(eqn.params["length"])
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out += _scan_lengths(inner)
    return out
