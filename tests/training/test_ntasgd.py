"""AWD-LSTM optimization: NT-ASGD's trigger on a scripted validation sequence, the running
average, averaged weights used for validation and export, resume with the history, coupled
L2, learning-rate drops at epochs, and the default Adam chain unchanged."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmscale.config import ConfigError, default_config, derive, validate
from lmscale.training import ntasgd
from lmscale.training.loop import train
from lmscale.training.metrics import read_metrics
from lmscale.training.ntasgd import NTASGDMonitor, average_after_switch, should_switch, switch_on
from lmscale.training.optimizer import make_optimizer
from tests.conftest import tiny_config


def test_rule_is_the_code_rule_on_a_scripted_sequence():
    # awd-lstm-lm main.py: len(h) > n and v > min(h[:-n]), h = the earlier passes.
    assert not should_switch([5.0, 4.0, 3.0], 3.5, 2)  # min(h[:-2]) = 5
    assert should_switch([5.0, 4.0, 3.0, 3.2], 4.5, 2)  # min([5, 4]) = 4 < 4.5
    assert not should_switch([5.0, 4.0], 9.0, 2)  # not more than n passes yet
    losses = [10.0, 9.0, 8.0, 8.5, 8.7, 9.1, 7.0]
    monitor = NTASGDMonitor(nonmono=2)
    switched = [i for i, v in enumerate(losses) if monitor.after_validation(v, step=100 * i)]
    # pass 3 (8.5) is worse than the last best (8.0) but not than min(h[:-2]) = 10; pass 4 (8.7)
    # not than 9; pass 5 (9.1) is worse than 8 = min of the passes more than 2 ago: switch.
    assert switched == [5] and monitor.switch_step == 500
    assert monitor.history == losses[:6]  # nothing recorded after the switch
    again = NTASGDMonitor(2, monitor.record())  # what a checkpoint's meta restores
    assert again.history == monitor.history and again.switch_step == 500


def torch_asgd_average(iterates, t0: int = 0):
    """torch.optim.ASGD's ``ax`` after these parameter iterates (lambd=0), as its step loop
    writes it: ``ax = p`` while mu == 1, else ``ax += (p - ax) * mu``; then, after the step,
    ``mu = 1 / max(1, step - t0)`` (so the second step copies too)."""
    ax, mu = None, 1.0
    for step, p in enumerate(iterates, start=1):
        p = np.asarray(p, np.float64)
        ax = p.copy() if mu == 1 else ax + (p - ax) * mu
        mu = 1.0 / max(1, step - t0)
    return ax


def test_average_starts_at_the_switch_and_is_torch_asgds():
    """From the switch, awd-lstm-lm's torch ASGD(t0=0, lambd=0): the mean of the iterates
    2..k since it (lmscale averaged 1..k: 0.22 apart after 2 steps on this problem)."""
    tx = optax.chain(optax.sgd(0.5), average_after_switch())
    params = {"w": jnp.array([1.0, -2.0])}
    state = tx.init(params)
    iterates = []
    for k in range(8):
        if k == 2:
            state = switch_on(state, step=k)
            assert ntasgd.eval_params(params, state) is params  # on, nothing averaged yet
        grads = {"w": jnp.array([0.3 * (k + 1), 1.0])}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        iterates.append(params["w"])
    avg = ntasgd.find_average(state)
    assert bool(avg.active) and int(avg.start) == 2 and int(avg.count) == 6
    np.testing.assert_allclose(avg.avg["w"], torch_asgd_average(iterates[2:]), rtol=1e-6)
    np.testing.assert_allclose(avg.avg["w"], np.mean(iterates[3:], axis=0), rtol=1e-6)
    assert not np.allclose(avg.avg["w"], np.mean(iterates[2:], axis=0), rtol=1e-3)
    assert ntasgd.eval_params(params, state) is avg.avg


def test_coupled_l2_is_grad_plus_wd_times_param_after_clipping():
    optim = default_config().optim
    optim.update(name="sgd", weight_decay=0.01, clip=1.0, schedule="constant")
    tx, _ = make_optimizer(optim, 10, lr=30.0)
    params = {"w": jnp.array([3.0, -1.0]), "b": jnp.array([0.5])}
    grads = {"w": jnp.array([6.0, 8.0]), "b": jnp.array([0.0])}  # global norm 10 -> clipped by 10
    updates, _ = tx.update(grads, tx.init(params), params)
    for k in params:
        expected = -30.0 * (grads[k] / 10.0 + 0.01 * params[k])
        np.testing.assert_allclose(updates[k], expected, rtol=1e-6)


def test_learning_rate_drops_after_listed_epochs():
    config = default_config()
    config.optim.update(schedule="constant", lr_drop_epochs="3,2", lr_drop_factor=0.1)
    validate(config)
    derived = derive(config, steps_per_epoch=10)
    assert derived["lr_drop_steps"] == [20, 30]
    _, schedule = make_optimizer(config.optim, 100, lr=1.0, lr_drop_steps=derived["lr_drop_steps"])
    assert [float(schedule(s)) for s in (0, 19, 20, 29, 30)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    for bad in ("2,x", "nan", "2,inf"):  # nan, inf: ValueError/OverflowError in derive()
        config.optim.lr_drop_epochs = bad
        with pytest.raises(ConfigError, match="optim.lr_drop_epochs"):
            validate(config)
    assert "lr_drop_steps" not in derive(default_config(), 10)  # default derived values unchanged


def test_default_adam_chain_is_unchanged():
    optim = default_config().optim
    tx, schedule = make_optimizer(optim, 100, lr=1e-3)
    reference = optax.chain(optax.clip_by_global_norm(optim.clip),
                            optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps),
                            optax.scale_by_learning_rate(schedule))
    params = {"w": jnp.arange(4.0)}
    grads = {"w": jnp.array([0.1, -2.0, 3.0, 0.0])}
    a, b = tx.init(params), reference.init(params)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for _ in range(3):
        ua, a = tx.update(grads, a, params)
        ub, b = reference.update(grads, b, params)
        assert np.array_equal(ua["w"], ub["w"])


NTASGD = {"optim.name": "ntasgd", "optim.schedule": "constant", "optim.lr": 1.0, "optim.clip": 0.25,
          "optim.warmup_steps": 0, "optim.weight_decay": 1e-4, "model.kind": "lstm",
          "train.eval_every": 2, "train.steps": 6, "checkpoint.every": 2, "train.eval_steps": 2,
          "checkpoint.keep_best": True}


def test_averaged_weights_are_validated_exported_and_resume_decides_the_same(tmp_path, corpus,
                                                                            monkeypatch):
    # A scripted trigger: switch at the second validation pass (history of one), so the
    # switch at step 4 depends on the pass at step 2 — which the resumed run only has from
    # the checkpoint's record.
    monkeypatch.setattr(ntasgd, "should_switch", lambda history, loss, n: len(history) >= 1)
    # 8 steps: torch's average of the 4 updates since the switch (iterates 2..4) differs from
    # the raw weights (after 2 updates it is the last iterate, as torch's is)
    settings = {**NTASGD, "train.steps": 8}
    full = str(tmp_path / "full")
    train(tiny_config(corpus, **settings), full)
    val = [r for r in read_metrics(full) if r["split"] == "val"]
    assert [(r["step"], r["averaged"]) for r in val] == [(2, False), (4, False), (6, True),
                                                         (8, True)]

    from lmscale.training import mesh as mesh_lib
    from lmscale.training.best import read_best
    from lmscale.training.checkpoints import Checkpointer
    from lmscale.training.evaluate_trained import evaluate_data
    from lmscale.training.restore import load_trained
    lm = load_trained(full)  # export / eval: the averaged weights
    again = evaluate_data(lm, lm.derived["dataset"], split="val")
    assert again["loss"] == pytest.approx(val[-1]["loss"], rel=1e-6)
    ckpt = Checkpointer(full, async_save=False)
    raw = ckpt.restore_params(lm.params, mesh_lib.replicated(lm.mesh), 8)
    ckpt.close()
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(raw), jax.tree.leaves(lm.params)))
    # The checkpoint at the switch (step 4: averaging on, nothing averaged yet) holds the
    # weights validated there, not the initial ones its empty average was made from.
    at_switch = load_trained(full, 4)
    assert evaluate_data(at_switch, lm.derived["dataset"], split="val")["loss"] == pytest.approx(
        val[1]["loss"], rel=1e-6)
    best = min(val, key=lambda r: r["loss"])  # checkpoint.keep_best: the weights validated best
    assert read_best(full) == {"step": best["step"], "loss": best["loss"], "averaged": best["averaged"]}
    kept = load_trained(full, best=True)
    assert kept.step == best["step"]
    from lmscale.config import ConfigError
    with pytest.raises(ConfigError, match="give one"):  # eval --best --step=2 ignored --step
        load_trained(full, 2, best=True)
    monkeypatch.chdir(tmp_path)  # a relative workdir, as the README's commands give it
    assert load_trained("full", best=True).step == best["step"]
    assert evaluate_data(kept, lm.derived["dataset"], split="val")["loss"] == pytest.approx(best["loss"], rel=1e-6)

    split = str(tmp_path / "split")
    train(tiny_config(corpus, **{**settings, "train.steps": 2}), split)
    train(tiny_config(corpus, **settings), split)
    keys = ("step", "split", "loss", "lr", "grad_norm", "averaged")
    strip = lambda rs: [{k: r[k] for k in keys if k in r} for r in rs]
    assert strip(read_metrics(full)) == strip(read_metrics(split))  # bitwise


def test_resume_with_another_optimizer_layout_is_refused_naming_the_field():
    from lmscale.training.checkpoints import CheckpointMismatchError
    from lmscale.training.resume import check_resumable
    old = default_config()
    old.data.train = "corpus"
    legacy = old.to_dict()
    del legacy["optim"]["name"], legacy["optim"]["weight_decay"]  # a checkpoint before these fields
    check_resumable({"config": legacy}, old, "W")
    # A link of the optimizer chain on in one and off in the other (orbax called the
    # checkpoint unreadable, and the advised fallback moved good checkpoints aside).
    for section, key, value in (("optim", "name", "ntasgd"), ("optim", "weight_decay", 1e-6),
                                ("optim", "clip", 0.0), ("train", "variable_bptt", True)):
        new = default_config()
        new.data.train = "corpus"
        new[section][key] = value
        with pytest.raises(CheckpointMismatchError, match=f"trained with {section}.{key}="):
            check_resumable({"config": old.to_dict()}, new, "W")
    same = default_config()
    same.data.train = "corpus"
    same.optim.clip = 2 * old.optim.clip  # another value, the same chain: resumable
    check_resumable({"config": old.to_dict()}, same, "W")


def test_a_run_stopped_off_the_validation_grid_continues_as_one_run(tmp_path, corpus, monkeypatch):
    """train.steps=3 then 6, validating every 2: the end-of-run validation at step 3 is not one
    NT-ASGD counts, so the switch (scripted at the second scheduled validation) comes at step 4
    as in one 6-step run (it came at 3)."""
    monkeypatch.setattr(ntasgd, "should_switch", lambda history, loss, n: len(history) >= 1)
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    train(tiny_config(corpus, **NTASGD), full)
    train(tiny_config(corpus, **{**NTASGD, "train.steps": 3, "checkpoint.every": 3}), split)
    train(tiny_config(corpus, **NTASGD), split)
    keys = ("step", "split", "loss", "averaged")
    scheduled = lambda rs: [{k: r[k] for k in keys if k in r} for r in rs
                            if r["split"] == "val" and r["step"] % 2 == 0]
    assert scheduled(read_metrics(full)) == scheduled(read_metrics(split))
    assert [r["averaged"] for r in scheduled(read_metrics(split))] == [False, False, True]


def test_ntasgd_without_scheduled_validations_is_refused():
    """It decides on the scheduled validations only: with eval_every 0 it never would."""
    from lmscale.config import ConfigError, validate
    c = tiny_config("corpus", **{**NTASGD, "train.eval_every": 0})
    with pytest.raises(ConfigError, match=r"train.eval_every steps \(or "
                                          r"train.eval_every_epochs\): set one > 0"):
        validate(c)
    validate(tiny_config("corpus", **{**NTASGD, "train.eval_every": 0,
                                      "train.eval_every_epochs": 1.0}))  # once an epoch
    with pytest.raises(ConfigError, match="train.eval_every_epochs must be >= 0"):
        validate(tiny_config("corpus", **{"train.eval_every_epochs": -1.0}))


def test_the_switch_to_averaging_is_said_on_the_progress_lines(tmp_path, corpus, monkeypatch,
                                                               capfd):
    monkeypatch.setattr(ntasgd, "should_switch", lambda history, loss, n: len(history) >= 1)
    train(tiny_config(corpus, **{**NTASGD, "train.steps": 4, "train.progress_bar": True}),
          str(tmp_path / "run"))
    assert "step 4: NT-ASGD switches to averaging" in capfd.readouterr().err
