"""The host-memory check of the compiled training step (a GPU config on a CPU host)."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from lmscale.config import ConfigError
from lmscale.training import fits
from lmscale.training.loop import train
from tests.conftest import REPO, lowered_programs, meminfo_file, tiny_config


def test_available_memory_is_read_from_meminfo(tmp_path):
    assert fits.available_host_bytes(meminfo_file(tmp_path, 2048, swap_kb=1024)) == 3072 * 1024
    assert fits.available_host_bytes(meminfo_file(tmp_path, 2048, swap_kb=1024),
                                     swap=False) == 2048 * 1024
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
    wide = {"train.steps": 2, "train.batch_size": 64, "train.seq_len": 64}  # logits: 4 MiB
    monkeypatch.setattr(fits, "MEMINFO", meminfo_file(tmp_path, 2048))  # the state (0.25 MiB) fits
    with pytest.raises(ConfigError, match=r"the training step needs .* train.seq_len"):
        train(tiny_config(corpus, **wide), str(tmp_path / "small_host"))
    monkeypatch.setattr(fits, "MEMINFO", meminfo_file(tmp_path, 16 * 1024 * 1024))
    result = train(tiny_config(corpus, **wide), str(tmp_path / "small_host"))
    assert result["step"] == 2, result


def test_a_state_larger_than_the_host_is_refused_before_it_is_made(tmp_path, corpus,
                                                                   monkeypatch):
    """A state larger than what ``ulimit -v`` leaves failed in JAX's initialization with a
    47-line RESOURCE_EXHAUSTED traceback, or hung there ignoring SIGTERM (the 4096-d mLSTM
    under a 2.4 GiB limit); each device holds the whole state."""
    shapes = {"w": jax.ShapeDtypeStruct((1024, 256), jnp.float32)}  # 1 MiB
    fits.check_state_fits_host(shapes, 2, available=2 * 2 ** 20)
    from lmscale.training.state import TrainState
    state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=shapes, opt_state=(),
                       carry=jax.ShapeDtypeStruct((1024, 256), jnp.float32),  # 1 MiB of rows
                       rng=jax.ShapeDtypeStruct((2,), jnp.uint32), acc={}, loss_scale=())
    fits.check_state_fits_host(state, 2, available=3 * 2 ** 20 + 64)  # the rows split: 2 x 1.5
    with pytest.raises(ConfigError, match=r"on each of 2 CPU devices\) needs 3 MiB"):
        fits.check_state_fits_host(state, 2, available=3 * 2 ** 20)
    with pytest.raises(ConfigError, match=r"training state \(parameters, optimizer moments, "
                                          r"carry: 1.0 MiB on each of 3 CPU devices\) needs "
                                          r"3.0 MiB .* and 2.0 MiB is available: use a smaller "
                                          r"model .*parallel.cpu_devices=1"):
        fits.check_state_fits_host(shapes, 3, available=2 * 2 ** 20)
    monkeypatch.setattr(fits, "MEMINFO", meminfo_file(tmp_path, 100))  # 100 kB available
    with pytest.raises(ConfigError, match=r"the model's training state .* needs"):
        train(tiny_config(corpus, **{"train.steps": 2}), str(tmp_path / "small_host"))


def test_a_memory_cgroup_limit_caps_what_is_available(tmp_path):
    """Containers and Slurm jobs limit memory by cgroup while /proc/meminfo shows the whole
    machine's: the check took a 2 GiB container on a 24 GiB host for 24 GiB."""
    meminfo = meminfo_file(tmp_path, 24 * 1024 * 1024)
    v2 = tmp_path / "v2"
    (v2 / "job").mkdir(parents=True)
    (v2 / "job" / "memory.max").write_text(f"{2 * 2**30}\n")
    (v2 / "job" / "memory.current").write_text(f"{2**30}\n")
    (v2 / "job" / "memory.stat").write_text(f"anon 1\ninactive_file {2**28}\n")
    cg = tmp_path / "cgroup_v2"
    cg.write_text("0::/job\n")
    assert fits.available_host_bytes(meminfo, proc_cgroup=str(cg), root=str(v2)) == 2**30 + 2**28
    (v2 / "job" / "memory.max").write_text("max\n")  # unlimited: meminfo's
    assert fits.available_host_bytes(meminfo, proc_cgroup=str(cg), root=str(v2)) == 24 * 2**30
    v1 = tmp_path / "v1" / "memory"  # v1 in a container: the path is the host's, the mount its own
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{4 * 2**30}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{2**30}\n")
    cg.write_text("4:memory:/docker/abc\n")
    assert fits.available_host_bytes(meminfo, proc_cgroup=str(cg), root=str(tmp_path / "v1")) == 3 * 2**30


def test_a_refusal_near_the_boundary_says_two_different_sizes():
    """812 MiB needed, 800 available: said "needs 0.8 GiB ... and 0.8 GiB is available"."""
    assert fits.sizes(812 * 2**20, 406 * 2**20, 800 * 2**20) == ["812 MiB", "406 MiB", "800 MiB"]
    assert fits.sizes(3 * 2**30, 2**30, 2 * 2**30) == ["3.0 GiB", "1.0 GiB", "2.0 GiB"]


def test_the_initializing_programs_temporaries_count_with_the_state():
    """configs/mlstm8192.py's 7.6 GiB state (2 CPU devices) peaked at 16.5 GiB while computed
    (random bits, casts): under ulimit -v 11000000 it passed the state check and hung in JAX's
    initialization ignoring SIGTERM; the compiled init program's temporaries now count."""
    from lmscale.models.building import built_in_one_program
    seen = []

    def build():
        w = jax.random.normal(jax.random.key(0), (512, 512), jnp.float32) * 2.0
        return None, {"w": w.astype(jnp.bfloat16)}

    def check(shapes, temp=0):
        seen.append(temp)
        fits.check_state_fits_host(shapes, 1, available=2 ** 20, temp_per_device=temp)

    with pytest.raises(ConfigError, match=r"carry, and the temporaries that compute it"):
        built_in_one_program(build, check=check)  # 0.5 MiB state fits, its float32 temps not
    assert seen[0] == 0 and seen[1] >= 512 * 512 * 4, seen


def test_a_step_of_minutes_on_this_cpu_is_said_before_the_first(monkeypatch):
    """configs/mlstm4096.py on a CPU (17 TFLOP a step) printed nothing for hours in a log:
    its lines come every train.log_every=100 steps."""
    import os
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    note = fits.slow_cpu_step_note(17e12, 100, progress_bar=False)
    assert note == ("note: a training step is 17.0 TFLOP: on this host's 2 CPU core(s), at best "
                    "~85 s a step (this config may be meant for GPUs); in a log its lines come "
                    "every train.log_every=100 steps")
    assert fits.slow_cpu_step_note(120e12, 100, progress_bar=True).endswith(
        "at best ~10 minutes a step (this config may be meant for GPUs)")
    assert fits.slow_cpu_step_note(1e12, 100, progress_bar=False) is None  # ~5 s: no note


def test_the_slow_step_note_counts_the_cores_a_cpu_quota_allows(tmp_path, monkeypatch):
    """In a 1-CPU container of an 8-core host the note counted 8 cores: ~21 s a step, said
    nothing, and each step took minutes."""
    from lmscale.training import host_devices
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    (tmp_path / "cgroup").write_text("0::/\n")
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    monkeypatch.setattr(host_devices, "PROC_CGROUP", str(tmp_path / "cgroup"), raising=False)
    monkeypatch.setattr(host_devices, "CGROUP_ROOT", str(tmp_path), raising=False)
    assert fits.slow_cpu_step_note(17e12, 100, progress_bar=True) == (
        "note: a training step is 17.0 TFLOP: on this host's 1 CPU core(s), at best ~3 minutes "
        "a step (this config may be meant for GPUs)")


def test_disabled_jit_is_refused_in_words(corpus, tmp_path):
    """JAX_DISABLE_JIT (a user debugging) crashed training with JAX's "Disable jit is not
    supported in the AOT path" traceback, and fine-tuning ran its steps op by op for hours."""
    from lmscale.config import default_config
    from lmscale.finetuning.loop import finetune
    with jax.disable_jit():
        with pytest.raises(ConfigError, match="JAX_DISABLE_JIT is set .*: training compiles"):
            train(tiny_config(corpus), str(tmp_path / "run"))
        ft = default_config()
        ft.init_from = str(tmp_path / "run")
        with pytest.raises(ConfigError, match="JAX_DISABLE_JIT is set .*: fine-tuning compiles"):
            finetune(ft, str(tmp_path / "ft"))
    assert not (tmp_path / "run").exists() and not (tmp_path / "ft").exists()


@pytest.mark.parametrize("pipeline", [False, True])
def test_bench_under_disabled_jit_is_refused_in_words(tmp_path, pipeline):
    """lmscale.bench times compiled programs: JAX_DISABLE_JIT was JAX's AOT traceback; with
    --pipeline it is refused before the data is prepared, not after."""
    work = tmp_path / "bench"
    extra = ["--pipeline", f"--workdir={work}"] if pipeline else []
    p = subprocess.run([sys.executable, "-m", "lmscale.bench", "--config=configs/quickstart.py",
                        "--config.model.hidden=16", "--config.train.batch_size=2",
                        "--config.train.seq_len=8", *extra], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "JAX_DISABLE_JIT": "1"})
    assert p.returncode == 1, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith(
        "error: JAX_DISABLE_JIT is set (jax_disable_jit): lmscale.bench compiles"), p.stderr
    assert not work.exists()


@pytest.mark.parametrize("setting", ["debug_nans", "debug_infs"])
def test_debug_nans_in_float16_is_refused_in_words(corpus, tmp_path, setting):
    """JAX_DEBUG_NANS (a user hunting a NaN) stopped float16 training's first step with a
    FloatingPointError traceback: dynamic loss scaling overflows on purpose. bfloat16 trains."""
    from lmscale.config import default_config
    from lmscale.finetuning.loop import finetune
    name = f"JAX_{setting.upper()}"
    config = tiny_config(corpus)
    config.train.steps = 2
    with getattr(jax, setting)(True):
        config.precision.compute = "float16"
        with pytest.raises(ConfigError, match=f"{name} is set: training in float16 overflows"):
            train(config, str(tmp_path / "run16"))
        ft = default_config()
        ft.init_from = str(tmp_path / "run16")
        ft.precision.compute = "float16"
        with pytest.raises(ConfigError, match=f"{name} is set: fine-tuning in float16 over"):
            finetune(ft, str(tmp_path / "ft"))
        assert not (tmp_path / "run16").exists() and not (tmp_path / "ft").exists()
        from lmscale.training import bench
        with pytest.raises(ConfigError, match=f"{name} is set: lmscale.bench in float16 over"):
            bench.run_bench(config, steps=1, warmup=0)  # it timed a FloatingPointError
        config.precision.compute = "bfloat16"
        assert train(config, str(tmp_path / "run"))["step"] == 2
