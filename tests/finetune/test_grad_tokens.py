"""``finetune.grad_tokens``: long texts read in pieces, gradients through their last tokens.

References are written here from the LM's interface, one text at a time and unpadded: the
text before its last K tokens read under ``stop_gradient`` of the parameters, the last K from
the state it leaves, the features pooled over the whole text (lmscale/finetuning/truncated.py).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lmscale.config import ConfigError
from lmscale.finetuning import truncated
from lmscale.finetuning.data import make_batch
from lmscale.finetuning.head import init_classifier, pool
from lmscale.finetuning.loop import init_finetune_state
from lmscale.finetuning.steps import BATCH_KEYS, make_finetune_step
from lmscale.training import mesh as mesh_lib
from lmscale.training.precision import Policy
from lmscale.training.state import state_shardings
from tests.conftest import (TINY_TRANSFORMER, meminfo_file, script_result, tiny_config,
                            xla_flags)

KINDS = {"mlstm": {"model.layers": 2}, "lstm": {"model.kind": "lstm"},
         "qrnn": {"model.kind": "qrnn", "model.layers": 2}}
LENGTHS = (1, 5, 17, 40, 23)  # tokens; K = 8 below: shorter than, equal to none of, longer than K


def _classifier(kind: str, poolings: str = "last,mean,max,min", states: str = "") -> tuple:
    config = tiny_config("unused.txt", **KINDS[kind])
    with config.unlocked():
        config.finetune.pooling, config.finetune.state = poolings, states
    graphdef, params, _ = init_classifier(config, 257, 3, jnp.float32)
    return config, graphdef, params


def _texts(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 257, n).astype(np.int32) for n in LENGTHS]


def _batch(texts: list[np.ndarray], rows: int) -> dict[str, np.ndarray]:
    labels = np.arange(len(texts)) % 3
    return make_batch(texts, labels, rows, pad=0, bucket=16, max_len=None,
                      row_weights=np.ones(len(texts), np.float32))


@pytest.mark.parametrize("kind", KINDS)
def test_features_read_in_pieces_equal_the_whole_texts(kind):
    _, graphdef, params = _classifier(kind, states=",".join(
        {"qrnn": ("cell",)}.get(kind, ("cell", "hidden"))))
    model = nnx.merge(graphdef, params)
    batch = _batch(_texts(), rows=6)  # one filler row
    tokens, lengths = jnp.asarray(batch["tokens"]), jnp.asarray(batch["lengths"])
    whole = model.features(tokens, lengths)
    k = 8
    aligned = truncated.aligned_batch(tokens, lengths, jnp.asarray(batch["lm_weights"]), k)
    assert aligned["tokens"].shape[1] == 48  # W = 48 (bucket 16): 6 pieces
    prefix = truncated.read_prefix(model, aligned, k, model.lm.initial_carry(6))
    pieces = truncated.window_features(model, truncated.last_piece(aligned, k), lengths, prefix)
    np.testing.assert_allclose(np.asarray(pieces), np.asarray(whole), rtol=2e-5, atol=2e-6)


def _reference_grads(graphdef, params, texts, labels, weights, k: int, aux_weight: float):
    """Gradient of the batch loss written per text (module docstring)."""
    def loss(p):
        frozen = nnx.merge(graphdef, jax.lax.stop_gradient(p))
        model = nnx.merge(graphdef, p)
        lm = model.lm
        total, nll, targets = 0.0, 0.0, 0
        for x, y, w in zip(texts, labels, weights):
            x = jnp.asarray(x)[None]
            n = x.shape[1]
            carry = lm.initial_carry(1)
            before = {}
            if n > k:
                out = frozen.lm.features(x[:, :n - k], carry)
                carry, before = out["carry"], {s: out[s][-1][0] for s in model.states}
            window = x[:, max(0, n - k):]
            out = lm.features(window, carry)
            feats = []
            for s in model.states:
                seq = out[s][-1]  # [1, K', F]
                if s in before:
                    seq = jnp.concatenate([before[s][None], seq], axis=1)
                for pooling in model.poolings:
                    feats.append(pool(seq, jnp.asarray([n]), pooling))
            logits = model.head(jnp.concatenate(feats, axis=-1))
            total = total + w * optax.softmax_cross_entropy_with_integer_labels(
                logits, jnp.asarray([y]))[0]
            if window.shape[1] > 1:
                lm_logits, _ = lm(window, carry)
                nll = nll + jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
                    lm_logits[0, :-1], window[0, 1:]))
                targets += window.shape[1] - 1
        return total + aux_weight * nll / targets
    return jax.jit(jax.grad(loss))(params)  # one program: eager op by op took ~10 s


def step_delta(kind: str, grad_tokens: int, aux_weight: float) -> tuple[Any, Any, dict]:
    """(params, params before - after one SGD step at rate 1 = the step's gradient, batch)
    of a fine-tuning step on this process's devices."""
    config, graphdef, params = _classifier(kind)
    mesh = mesh_lib.make_mesh()
    tx = optax.sgd(1.0)
    state = init_finetune_state(config, Policy.from_compute("float32"), tx, params, mesh)
    step = make_finetune_step(graphdef, tx, mesh, multilabel=False, class_weights=None,
                              aux_weight=aux_weight, train_lm=True, dropout=False,
                              grad_tokens=grad_tokens)
    rows = mesh_lib.batch_sharded(mesh)
    step = jax.jit(step, in_shardings=(state_shardings(state, mesh), dict.fromkeys(BATCH_KEYS, rows)))
    batch = _batch(_texts(), rows=6)
    before = jax.device_get(state.params)
    after, _ = step(state, {k: batch[k] for k in BATCH_KEYS})
    delta = jax.tree.map(lambda a, b: a - b, before, jax.device_get(after.params))
    return before, delta, batch


@pytest.mark.parametrize("kind", ["mlstm", "qrnn"])
def test_the_step_back_propagates_through_each_texts_last_tokens(kind):
    k, aux_weight = 8, 0.5
    params, delta, batch = step_delta(kind, k, aux_weight)
    _, graphdef, _ = _classifier(kind)
    texts = _texts()
    want = _reference_grads(graphdef, params, texts, batch["labels"][:len(texts)],
                            batch["row_weights"][:len(texts)], k, aux_weight)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(delta)[0], jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6,
                                   err_msg=jax.tree_util.keystr(path))
    # And the whole-text gradient differs (the test can tell the two apart).
    _, whole, _ = step_delta(kind, 0, aux_weight)
    assert max(float(np.max(np.abs(a - b))) for a, b in
               zip(jax.tree.leaves(whole), jax.tree.leaves(delta))) > 1e-4


def test_two_devices_take_the_same_step_as_one():
    script = ("import json, jax, numpy as np\n"
              "from tests.finetune.test_grad_tokens import step_delta\n"
              "_, d, _ = step_delta('mlstm', 8, 0.5)\n"
              "print(json.dumps({'devices': jax.device_count(), "
              "'delta': [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(d)]}))")
    one, two = (script_result(script, XLA_FLAGS=xla_flags(n)) for n in (1, 2))
    assert (one["devices"], two["devices"]) == (1, 2)
    for a, b in zip(one["delta"], two["delta"]):  # float32 sums in another order: within 1e-7,
        # or 2e-5 of the parameter's own gradient scale (measured: <= 3.2e-7 of it; with the four
        # poolings two small elements of a 1e-2-scale bias missed the absolute 1e-7 by 7.7e-7)
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=max(1e-7, 2e-5 * float(np.max(np.abs(a)))))


def test_a_model_without_state_between_pieces_is_refused():
    with pytest.raises(ConfigError, match="grad_tokens=64 .* carries no state"):
        truncated.check_grad_tokens(64, max_len=TINY_TRANSFORMER["model.max_len"])
    with pytest.raises(ConfigError, match="grad_tokens must be >= 0"):
        truncated.check_grad_tokens(-1, max_len=None)
    truncated.check_grad_tokens(64, max_len=None)
    with pytest.raises(ConfigError, match="grad_tokens=1 leaves finetune.aux_lm_weight's loss no "
                                          "target"):
        truncated.check_grad_tokens(1, max_len=None, aux_lm_weight=0.1)
    truncated.check_grad_tokens(1, max_len=None)
    truncated.check_grad_tokens(2, max_len=None, aux_lm_weight=0.1)


def test_a_fine_tune_in_pieces_runs_records_its_setting_and_refuses_a_transformer(
        sst_run, data, tmp_path, capsys):
    from lmscale.config import load_config
    from lmscale.finetuning.loop import finetune
    from lmscale.training.loop import train
    from lmscale.training.metrics import read_metrics
    from tests.conftest import shared_data
    from tests.finetune.conftest import ft_config
    run = str(tmp_path / "ft")
    overrides = {"train.steps": 4, "finetune.grad_tokens": 32, "finetune.aux_lm_weight": 0.1,
                 "finetune.pooling": "last,mean"}  # widths of 128 and 256: read in pieces
    results = finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **overrides), run)
    assert load_config(os.path.join(run, "config.json"))[0].finetune.grad_tokens == 32
    train_recs = [r for r in read_metrics(run) if r["split"] == "train"]
    assert train_recs and all(np.isfinite(r["loss"]) and r["aux_lm_loss"] > 0 for r in train_recs)
    assert 0.0 <= results["metrics"]["val"]["accuracy"] <= 1.0
    capsys.readouterr()
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **{
        **overrides, "train.steps": 6, "finetune.grad_tokens": 64}), run)  # a resume
    assert ("note: resumed at step 4 with finetune.grad_tokens=64; the steps before it trained "
            "with finetune.grad_tokens=32") in capsys.readouterr().err
    lm = str(tmp_path / "tlm")
    train(tiny_config(f"{shared_data('sst_binary')}/train.csv", **TINY_TRANSFORMER, **{
        "data.text_column": "sentence", "data.split": "8,1,0", "train.steps": 2,
        "train.eval_every": 0}), lm)
    with pytest.raises(ConfigError, match="carries no state"):
        finetune(ft_config(lm, data["sst_train"], data["sst_val"], **overrides), str(tmp_path / "t"))
    assert not os.path.exists(tmp_path / "t")  # refused before the workdir got any folder


def test_long_training_texts_read_whole_get_a_note():
    note = truncated.long_text_note(100_000, grad_tokens=0, max_len=None)
    assert "100000 tokens" in note and "config.finetune.grad_tokens = 1024" in note  # the API's
    assert truncated.long_text_note(100_000, grad_tokens=512, max_len=None) is None
    assert truncated.long_text_note(100_000, grad_tokens=0, max_len=256) is None  # cut to max_len
    assert truncated.long_text_note(truncated.LONG_TEXT_TOKENS, 0, None) is None
    assert truncated.long_text_note(900, grad_tokens=1024, max_len=None) == (
        "note: finetune.grad_tokens=1024 is not shorter than the longest training text (900 "
        "tokens): no text's gradient is cut (the gradients of grad_tokens=0)")
    assert truncated.long_text_note(1025, grad_tokens=1024, max_len=None) is None
    assert truncated.fits_advice(0, 256) == ("lower train.batch_size; this step may be meant "
                                             "for a larger host")  # a transformer


def test_a_fine_tuning_step_too_large_for_the_host_is_refused_naming_grad_tokens(
        sst_run, data, tmp_path, monkeypatch):
    """Long texts on a CPU host: one error at the width's first step, not the OOM killer's
    "Killed" (tests/training/test_fits.py has the check itself)."""
    from lmscale.finetuning.loop import finetune
    from lmscale.training import fits
    from tests.finetune.conftest import ft_config
    monkeypatch.setattr(fits, "MEMINFO", meminfo_file(tmp_path, 100))  # 100 kB available
    config = ft_config(sst_run, data["sst_train"], data["sst_val"], **{"train.steps": 2})
    with pytest.raises(ConfigError, match=r"the fine-tuning step on 16 texts \d+ tokens wide "
                                          r"needs .* set finetune.grad_tokens=1024"):
        finetune(config, str(tmp_path / "ft"))
    config = ft_config(sst_run, data["sst_train"], data["sst_val"], **{
        "train.steps": 2, "finetune.grad_tokens": 32})
    with pytest.raises(ConfigError, match=r"read in pieces of 32 needs .* a smaller "
                                          r"finetune.grad_tokens \(now 32\)"):
        finetune(config, str(tmp_path / "ft2"))


def test_multilabel_class_weights_scale_the_step_loss():
    """Class weights all 2: the multi-label loss the step sums is twice the unweighted one."""
    config, graphdef, params = _classifier("qrnn", poolings="last")
    mesh = mesh_lib.make_mesh()
    rows = mesh_lib.batch_sharded(mesh)
    batch = _batch(_texts(), rows=6)
    batch["labels"] = np.eye(3, dtype=np.float32)[np.asarray(batch["labels"]) % 3]
    losses = []
    for weights in (None, np.full(3, 2.0, np.float32)):
        tx = optax.sgd(0.0)
        state = init_finetune_state(config, Policy.from_compute("float32"), tx, params, mesh)
        step = make_finetune_step(graphdef, tx, mesh, multilabel=True, class_weights=weights,
                                  aux_weight=0.0, train_lm=True, dropout=False)
        step = jax.jit(step, in_shardings=(state_shardings(state, mesh),
                                           dict.fromkeys(BATCH_KEYS, rows)))
        after, _ = step(state, {k: batch[k] for k in BATCH_KEYS})
        losses.append(float(after.acc["loss"]))
    assert losses[0] > 0
    np.testing.assert_allclose(losses[1], 2.0 * losses[0], rtol=1e-5)
