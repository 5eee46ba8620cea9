"""The host-memory check of the compiled training step (a GPU config on a CPU host)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from lmscale.config import ConfigError
from lmscale.training import fits
from lmscale.training.loop import train
from tests.conftest import lowered_programs, tiny_config


def _meminfo(tmp_path, available_kb: int, swap_kb: int = 0) -> str:
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       24000000 kB\nMemFree:         1000000 kB\n"
                    f"MemAvailable:   {available_kb:>9} kB\nSwapTotal:      {swap_kb} kB\n"
                    f"SwapFree:       {swap_kb} kB\n")
    return str(path)


def test_available_memory_is_read_from_meminfo(tmp_path):
    assert fits.available_host_bytes(_meminfo(tmp_path, 2048, swap_kb=1024)) == 3072 * 1024
    assert fits.available_host_bytes(_meminfo(tmp_path, 2048, swap_kb=1024), swap=False) == 2048 * 1024
    (tmp_path / "bad").write_text("MemTotal: 5 kB\n")  # an old kernel: no MemAvailable
    assert fits.available_host_bytes(str(tmp_path / "bad")) is None
    assert fits.available_host_bytes(str(tmp_path / "absent")) is None


def test_a_step_larger_than_the_host_is_refused_and_a_fitting_one_compiles_once():
    """The ahead-of-time compile is the one the call then runs: one lowering in all."""
    step = jax.jit(lambda w, x: (w, jnp.tanh(x @ w) @ w.T), donate_argnums=0)
    w, x = jnp.ones((256, 256)), jnp.ones((512, 256))
    with pytest.raises(ConfigError, match=r"needs 1.0 MiB .* and 0.0 MiB is available: lower train.batch_size"):
        fits.check_step_fits_host(step, (w, x), available=1024)
    step = jax.jit(lambda w, x: (w, jnp.sin(x @ w) @ w.T), donate_argnums=0)
    with lowered_programs() as built:
        fits.check_step_fits_host(step, (w, x), available=2 ** 40)
        jax.block_until_ready(step(w, x))
    assert len(built) == 1, built


def test_training_a_step_too_large_for_the_host_stops_before_it_runs(tmp_path, corpus,
                                                                    monkeypatch):
    """The kernel's OOM killer ended such a run with a bare "Killed" (a GPU config, say
    configs/mlstm4096_8gpu.py, on a laptop): now one error before the first step, naming the
    settings to lower; a host with the memory trains as before."""
    monkeypatch.setattr(fits, "MEMINFO", _meminfo(tmp_path, 100))  # 100 kB available
    with pytest.raises(ConfigError, match=r"the training step needs .* train.seq_len"):
        train(tiny_config(corpus, **{"train.steps": 2}), str(tmp_path / "small_host"))
    monkeypatch.setattr(fits, "MEMINFO", _meminfo(tmp_path, 16 * 1024 * 1024))
    result = train(tiny_config(corpus, **{"train.steps": 2}), str(tmp_path / "small_host"))
    assert result["step"] == 2, result
