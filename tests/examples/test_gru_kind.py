"""A model family of one's own (examples/gru_kind.py): its equations against NumPy, and every
tool finding it through LMSCALE_MODEL_MODULES — those that read a run's config.json too (they
refused the kind in a traceback: only a config file could import it)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lmscale.models import build_model, registry
from tests.conftest import REPO, tiny_train_command, write_corpus

EXAMPLES = os.path.join(str(REPO), "examples")
B, T, V, E, H = 3, 7, 20, 8, 16


@pytest.fixture(scope="module")
def gru():
    sys.path.insert(0, EXAMPLES)
    try:
        yield importlib.import_module("gru_kind")  # registers model.kind="gru"
    finally:
        sys.path.remove(EXAMPLES)
        registry._KINDS.pop("gru", None)  # the other tests of this process see the built-ins
        sys.modules.pop("gru_kind", None)


def _numpy_gru(model, tokens, resets, h0):
    """Logits [B, T, V] and each layer's last h, float64, from the GRU equations."""
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    x = np.asarray(model.embedding.embedding[...], np.float64)[tokens]
    last = []
    for l, layer in enumerate(model.layers):
        wi, wh, bi, bh = (np.asarray(a[...], np.float64) for a in (layer.wi, layer.wh, layer.bi, layer.bh))
        h, out = h0[l].copy(), np.zeros((B, T, H))
        for t in range(T):
            h[resets[:, t]] = 0
            gi, gh = x[:, t] @ wi + bi, h @ wh + bh
            r, z = sig(gi[:, :H] + gh[:, :H]), sig(gi[:, H:2 * H] + gh[:, H:2 * H])
            h = (1 - z) * np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:]) + z * h
            out[:, t] = h
        x = out
        last.append(h)
    kernel, bias = (np.asarray(a[...], np.float64) for a in (model.decoder.kernel, model.decoder.bias))
    return x @ kernel + bias, last


def test_the_example_kind_follows_its_equations(gru):
    config = ml_collections.ConfigDict(dict(kind="gru", embed=E, hidden=H, layers=2, dropout=0.0))
    model = build_model(config, V, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, V, (B, T)).astype(np.int32)
    resets = np.zeros((B, T), bool)
    resets[1, 4] = True
    h0 = [rng.normal(size=(B, H)) * 0.5 for _ in range(2)]
    want, want_last = _numpy_gru(model, tokens, resets, h0)
    carry = tuple(jnp.asarray(h, jnp.float32) for h in h0)
    got, new = model(jnp.asarray(tokens), carry, jnp.asarray(resets))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)  # float32 vs float64
    for c, w in zip(new, want_last):
        np.testing.assert_allclose(np.asarray(c), w, atol=1e-5)
    plain, _ = _numpy_gru(model, tokens, np.zeros((B, T), bool), h0)
    state = carry
    for t in range(T):  # one token at a time, as generation reads it
        logits, state = model.decode_step(jnp.asarray(tokens[:, t]), state)
        np.testing.assert_allclose(np.asarray(logits), plain[:, t], atol=1e-5)


def _tool(args: list[str], plugin: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([EXAMPLES, str(REPO)]))
    env.pop("LMSCALE_MODEL_MODULES", None)
    if plugin:
        env["LMSCALE_MODEL_MODULES"] = "gru_kind"
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_every_tool_finds_a_kind_named_in_the_environment(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    train = _tool(tiny_train_command(run, corpus, **{"model.kind": "gru", "train.steps": 6,
                                                     "checkpoint.every": 6}))
    assert train.returncode == 0, train.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["model"]["kind"] == "gru"
    eval_ = _tool([sys.executable, "-m", "lmscale.eval", f"--workdir={run}", "--max_steps=2"])
    assert eval_.returncode == 0 and "bpc" in eval_.stdout, eval_.stderr[-3000:]
    sample = _tool([sys.executable, "-m", "lmscale.generate", f"--workdir={run}", "--length=20",
                    "--prompt=ab", "--neuron=3", "--neuron_value=1.0",
                    f"--output={tmp_path / 'samples'}"])
    assert sample.returncode == 0 and sample.stdout.strip(), sample.stderr[-3000:]
    # Without the module named: one line naming the way to add it (was a ValueError traceback).
    refused = _tool([sys.executable, "-m", "lmscale.eval", f"--workdir={run}"], plugin=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "error: unknown model.kind 'gru'; expected one of ['lstm', 'mlstm', 'qrnn', "
        "'transformer'] (a kind of your own registers itself when its module is imported: "
        "name the module in LMSCALE_MODEL_MODULES=module[,module...]"), refused.stderr[-3000:]
    env_bad = dict(os.environ, LMSCALE_MODEL_MODULES="no_such_module_here")
    bad = subprocess.run([sys.executable, "-m", "lmscale.eval", f"--workdir={run}"], cwd=REPO,
                         env=env_bad, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1] == (
        "error: cannot import the model module 'no_such_module_here' (LMSCALE_MODEL_MODULES): "
        "ModuleNotFoundError: No module named 'no_such_module_here'"), bad.stderr[-3000:]


def test_a_kind_of_ones_own_has_config_fields_of_its_own(tmp_path):
    """A field of the kind's own (its ModelKind.settings) was "unknown config field": only
    default_config's were allowed. A config file adds it; config.json keeps it for the tools
    that read the run; a misspelt one is still refused."""
    corpus = write_corpus(tmp_path / "corpus")
    config = tmp_path / "gru_config.py"
    config.write_text(
        "from lmscale.config import default_config\n"
        "def get_config():\n"
        "    c = default_config()\n"
        f"    c.data.train = {str(corpus)!r}\n"
        "    c.data.split = '8,1,1'\n"
        "    c.model.kind, c.model.hidden, c.model.embed = 'gru', 32, 16\n"
        "    c.model.gru_update_bias = 1.0\n"
        "    c.train.batch_size, c.train.seq_len, c.train.steps = 4, 16, 4\n"
        "    c.train.eval_every, c.train.progress_bar = 0, False\n"
        "    c.lock()\n"
        "    return c\n")
    run = tmp_path / "run"
    train = _tool([sys.executable, "-m", "lmscale.train", f"--config={config}",
                   f"--workdir={run}", "--config.model.gru_update_bias=2.0"])
    assert train.returncode == 0, train.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["model"]["gru_update_bias"] == 2.0
    eval_ = _tool([sys.executable, "-m", "lmscale.eval", f"--workdir={run}", "--max_steps=2"])
    assert eval_.returncode == 0, eval_.stderr[-3000:]
    config.write_text(config.read_text().replace("gru_update_bias", "gru_updte_bias"))
    typo = _tool([sys.executable, "-m", "lmscale.train", f"--config={config}",
                  f"--workdir={tmp_path / 'typo'}"])
    assert typo.returncode == 1 and typo.stderr.strip().splitlines()[-1] == (
        "error: unknown config field model.gru_updte_bias (did you mean "
        "model.gru_update_bias?): lmscale/config.py lists every field"), typo.stderr[-3000:]
    # From the command line, on a config file that does not add it (was "unknown config key").
    cli = _tool(tiny_train_command(tmp_path / "cli", corpus, **{
        "model.kind": "gru", "train.steps": 2, "model.gru_update_bias": 1.5}))
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["model"]["gru_update_bias"] == 1.5
    cli_typo = _tool(tiny_train_command(tmp_path / "cli_typo", corpus, **{
        "model.kind": "gru", "train.steps": 2, "model.gru_updte_bias": 1.5}))
    assert cli_typo.returncode == 1 and cli_typo.stderr.strip().splitlines()[-1].startswith(
        "error: unknown config key 'gru_updte_bias' in --config.model.gru_updte_bias=1.5"), \
        cli_typo.stderr[-3000:]


PLUGIN_WITH_OWN_STATE = '''
import dataclasses
import gru_kind
from lmscale.models.registry import register


class RenamedStateGRU(gru_kind.GRULM):
    feature_states = ("h",)

    def features(self, *args, **kwargs):
        out = super().features(*args, **kwargs)
        return {"h": out["hidden"], "carry": out["carry"]}

    def fix_unit(self, state, unit, value, which):
        if which != "h":
            raise ValueError(f"which must be 'h', got {which!r}")
        return super().fix_unit(state, unit, value, "hidden")


def _build(m, vocab_size, *, rngs, dtype=None):
    model = gru_kind._build(m, vocab_size, rngs=rngs, **({} if dtype is None else {"dtype": dtype}))
    model.__class__ = RenamedStateGRU
    return model


register(dataclasses.replace(gru_kind.KIND, name="gru_h", build=_build))
'''


def test_the_state_flags_take_the_kinds_own_state_names(tmp_path):
    """--state (transfer) and --neuron_state (generate) were cell/hidden only: a kind whose
    states have other names could not be asked for them (absl's enum refused them)."""
    (tmp_path / "gru_h_kind.py").write_text(PLUGIN_WITH_OWN_STATE)
    corpus = write_corpus(tmp_path / "corpus")
    rows = [("1" if i % 2 else "0", ("a good film " if i % 2 else "a bad film ") * (1 + i % 3))
            for i in range(40)]
    for name in ("train", "val"):
        (tmp_path / f"{name}.csv").write_text(
            "label,sentence\n" + "".join(f"{label},{text}\n" for label, text in rows))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), EXAMPLES, str(REPO)]),
               LMSCALE_MODEL_MODULES="gru_h_kind")

    def tool(args):
        return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    run = tmp_path / "run"
    train = tool(tiny_train_command(run, corpus, **{"model.kind": "gru_h", "train.steps": 4,
                                                    "checkpoint.every": 4}))
    assert train.returncode == 0, train.stderr[-3000:]
    transfer = tool([sys.executable, "-m", "lmscale.transfer", f"--workdir={run}", "--state=h",
                     f"--train={tmp_path / 'train.csv'}", f"--val={tmp_path / 'val.csv'}",
                     f"--output={tmp_path / 'transfer'}", "--baseline=none", "--C=0.5"])
    assert transfer.returncode == 0, transfer.stderr[-3000:]
    assert json.loads((tmp_path / "transfer" / "results.json").read_text())["features"]["state"] == "h"
    sample = tool([sys.executable, "-m", "lmscale.generate", f"--workdir={run}", "--length=8",
                   "--prompt=ab", "--neuron=3", "--neuron_state=h", f"--output={tmp_path / 's'}"])
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert json.loads((tmp_path / "s" / "samples.json").read_text())["neuron_state"] == "h"
    wrong = tool([sys.executable, "-m", "lmscale.generate", f"--workdir={run}", "--length=8",
                  "--neuron=3", "--neuron_state=cell", f"--output={tmp_path / 's2'}"])
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr, wrong.stderr[-3000:]
    assert "'h'" in wrong.stderr.strip().splitlines()[-1], wrong.stderr[-3000:]


PLUGIN_SETTING_IN_FIELDS = '''
import dataclasses
import gru_kind
from lmscale.models.registry import register

register(dataclasses.replace(gru_kind.KIND, name="gru_w", fields=("embed", "hidden", "layers", "gru_update_bias"),
                             settings={"gru_update_bias": 0.5}))
'''


def test_a_kinds_own_setting_not_given_is_recorded_at_its_default(tmp_path):
    """A kind's own setting left at its default was absent from the config: config.json did
    not record it, and a kind naming it among its ``fields`` (it defines the architecture)
    stopped training with a KeyError traceback (registry.architecture)."""
    corpus = write_corpus(tmp_path / "corpus")
    (tmp_path / "gru_w_kind.py").write_text(PLUGIN_SETTING_IN_FIELDS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), EXAMPLES, str(REPO)]),
               LMSCALE_MODEL_MODULES="gru_w_kind")
    run = tmp_path / "run"
    train = subprocess.run(tiny_train_command(run, corpus, **{"model.kind": "gru_w", "train.steps": 2}),
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["model"]["gru_update_bias"] == 0.5
