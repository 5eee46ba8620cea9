"""awd-lstm-lm finetune.py's stage (prototype): ASGD averaging from the first update, and the
non-monotone rule ending the run (optim.name="asgd")."""

import jax.numpy as jnp
import numpy as np
import optax

from lmscale.config import default_config
from lmscale.training import ntasgd
from lmscale.training.ntasgd import NTASGDMonitor
from lmscale.training.optimizer import make_optimizer


def test_asgd_averages_from_the_first_update_over_sgd_iterates():
    c = default_config()
    c.optim.name, c.optim.lr, c.optim.clip, c.optim.schedule, c.optim.warmup_steps = "asgd", 0.5, 0.0, "constant", 0
    tx, _ = make_optimizer(c.optim, 10, lr=0.5)
    params, state, iterates = {"w": jnp.array([1.0, -2.0])}, None, []
    state = tx.init(params)
    avg = ntasgd.find_average(state)
    assert bool(avg.active) and int(avg.start) == 0
    for k in range(4):
        updates, state = tx.update({"w": jnp.array([0.3 * (k + 1), 1.0])}, state, params)
        params = optax.apply_updates(params, updates)
        iterates.append(np.asarray(params["w"]))
    # torch ASGD(t0=0, lambd=0) made before the first step: the mean of iterates 2..k
    np.testing.assert_allclose(ntasgd.find_average(state).avg["w"], np.mean(iterates[1:], 0), rtol=1e-6)


def test_stop_rule_is_finetune_py_on_its_own_history():
    m = NTASGDMonitor(2, stops=True)
    decisions = [m.after_validation(v, 10 * (i + 1)) for i, v in enumerate([5.0, 4.0, 4.5, 4.8, 4.9, 3.0])]
    # 4.8: min([5]) = 5, on; 4.9: history [5, 4, 4.5, 4.8], 4.9 > min([5, 4]) -> stop
    assert decisions == [False, False, False, False, True, True]
    assert m.stop_step == 50 and m.record()["switch_step"] == 0
    again = NTASGDMonitor(2, m.record(), stops=True)
    assert again.stop_step == 50 and again.history == m.history


NTASGD_LSTM = {"optim.name": "ntasgd", "optim.schedule": "constant", "optim.lr": 1.0,
               "optim.clip": 0.25, "optim.warmup_steps": 0, "model.kind": "lstm",
               "train.eval_every": 2, "train.steps": 6, "checkpoint.every": 2,
               "train.eval_steps": 2, "checkpoint.keep_best": True}


def test_a_run_started_from_another_runs_best_weights_with_asgd(tmp_path, corpus, capsys,
                                                                monkeypatch):
    """awd's finetune.py: the saved best weights, a fresh ASGD averaging from the first step,
    validated first (its stored_loss); the rule ends the run (checkpointed, a re-run does
    nothing); the run split in two equals it whole; another model is refused."""
    import json
    import os

    import pytest

    from lmscale.config import ConfigError
    from lmscale.training.best import read_best
    from lmscale.training.loop import train
    from lmscale.training.metrics import read_metrics
    from tests.conftest import tiny_config
    base = str(tmp_path / "base")
    train(tiny_config(corpus, **NTASGD_LSTM), base)
    best = read_best(base)
    asgd = {**NTASGD_LSTM, "optim.name": "asgd", "train.steps": 8,
            "train.start_from": os.path.join(base, "best")}
    whole = str(tmp_path / "whole")
    capsys.readouterr()
    train(tiny_config(corpus, **asgd), whole)
    assert (f"note: starting from {base}'s best weights (step {best['step']}; "
            f"train.start_from)") in capsys.readouterr().err
    val = [r for r in read_metrics(whole) if r["split"] == "val"]
    assert val[0]["step"] == 0 and val[0]["loss"] == pytest.approx(best["loss"], rel=1e-6)
    assert [r["step"] for r in val] == [0, 2, 4, 6, 8] and all(r["averaged"] for r in val[1:])
    derived = json.load(open(os.path.join(whole, "config.json")))["derived"]
    assert derived["started_from"]["step"] == best["step"] and derived["started_from"]["best"]
    split = str(tmp_path / "split")
    train(tiny_config(corpus, **{**asgd, "train.steps": 4}), split)
    train(tiny_config(corpus, **asgd), split)
    keys = ("step", "split", "loss", "averaged")
    strip = lambda rs: [{k: r[k] for k in keys if k in r} for r in rs]
    assert strip(read_metrics(split)) == strip(read_metrics(whole))

    # the rule (scripted: worse at the second pass) ends the run before train.steps
    monkeypatch.setattr(ntasgd, "should_switch", lambda history, loss, n: len(history) >= 1)
    ruled = str(tmp_path / "ruled")
    capsys.readouterr()
    result = train(tiny_config(corpus, **asgd), ruled)
    assert result["stopped_by_rule"] and result["step"] == 4
    assert "step 4: ASGD stops" in capsys.readouterr().err  # said without a progress bar too
    again = train(tiny_config(corpus, **asgd), ruled)
    assert again["stopped_by_rule"] and set(again) == set(result)
    assert again["already_trained"] and "was ended at step 4 (of train.steps=8) by the asgd " \
        "rule (optim.name='asgd')" in capsys.readouterr().err

    with pytest.raises(ConfigError, match="is another model: model.hidden 32 there, 48 here"):
        train(tiny_config(corpus, **{**asgd, "model.hidden": 48}), str(tmp_path / "other"))
