"""Splitting a CPU host into one data-parallel device per core (training/host_devices.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lmscale.config import ConfigError
from lmscale.training.host_devices import auto_device_count, cpu_runs_the_step, user_device_count
from tests.conftest import REPO


def test_auto_count_is_the_largest_divisor_of_the_batch_up_to_the_cores():
    assert auto_device_count(2, 32) == 2
    assert auto_device_count(8, 12) == 6
    assert auto_device_count(4, 7) == 1  # a prime batch stays on one device
    assert auto_device_count(16, 128) == 16
    assert auto_device_count(3, 5, per_device_batch_size=4) == 3  # the batch follows the count


def test_a_count_the_user_set_is_read_from_the_environment():
    assert user_device_count({"XLA_FLAGS": "--xla_dump_to=/x --xla_force_host_platform_device_count=8"}) == 8
    assert user_device_count({"JAX_NUM_CPU_DEVICES": "3"}) == 3
    assert user_device_count({"XLA_FLAGS": "--xla_dump_to=/x", "JAX_NUM_CPU_DEVICES": ""}) is None


def test_hosts_with_an_accelerator_are_left_alone():
    none = lambda name: False
    assert cpu_runs_the_step({}, none)
    assert not cpu_runs_the_step({}, lambda name: name == "jax_cuda12_plugin")
    assert cpu_runs_the_step({"JAX_PLATFORMS": "cpu"}, lambda name: True)
    assert not cpu_runs_the_step({"JAX_PLATFORMS": "cuda,cpu"}, none)


def test_usable_cores_counts_the_affinity_and_the_cgroup_cpu_quota(tmp_path, monkeypatch):
    """docker --cpus=2 and Kubernetes CPU limits set a CFS quota while the affinity lists every
    core: a 2-CPU container of a 32-core host split into 32 devices, steps 3-5x slower."""
    from lmscale.training import host_devices
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    cg = tmp_path / "cgroup"
    monkeypatch.setattr(host_devices, "PROC_CGROUP", str(cg), raising=False)
    monkeypatch.setattr(host_devices, "CGROUP_ROOT", str(tmp_path / "v2"), raising=False)
    (tmp_path / "v2" / "job").mkdir(parents=True)
    cg.write_text("0::/job\n")
    (tmp_path / "v2" / "job" / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: 2 threads
    assert host_devices.usable_cores() == 2
    (tmp_path / "v2" / "cpu.max").write_text("100000 100000\n")  # an ancestor's is tighter
    assert host_devices.usable_cores() == 1
    (tmp_path / "v2" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "v2" / "job" / "cpu.max").write_text("max 100000\n")  # no quota: the affinity
    assert host_devices.usable_cores() == 8
    v1 = tmp_path / "v1" / "cpu,cpuacct"  # v1 in a container: the mount is the cgroup's own
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    cg.write_text("4:cpu,cpuacct:/docker/abc\n")
    monkeypatch.setattr(host_devices, "CGROUP_ROOT", str(tmp_path / "v1"))
    assert host_devices.usable_cores() == 3
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert host_devices.usable_cores() == 8


_PROBE = """
import json, sys
import jax
from lmscale.config import default_config as get_config
from lmscale.training.host_devices import split_host
c = get_config()
with c.unlocked():
    c.train.batch_size = int(sys.argv[1]); c.parallel.cpu_devices = int(sys.argv[2])
if sys.argv[4] == "config":
    set_to = split_host(c, multi_process=sys.argv[3] == "1")
else:  # the notebook entry point, called before or after JAX has started
    import lmscale
    if sys.argv[4] == "late":
        jax.devices()
    set_to = lmscale.use_cpu_cores(c.train.batch_size, c.parallel.cpu_devices)
print(json.dumps({"set": set_to, "devices": jax.device_count()}))
"""


def _probe(batch: int, cpu_devices: int, multi: bool = False, via: str = "config", **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    out = subprocess.run([sys.executable, "-c", _PROBE, str(batch), str(cpu_devices), str(int(multi)),
                          via],
                         capture_output=True, text=True, env={**clean, "JAX_PLATFORMS": "cpu", **env},
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_split_host_sets_the_device_count_before_jax_starts():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    want = auto_device_count(cores, 12)
    assert _probe(12, 0) == {"set": want if want > 1 else None, "devices": want}
    assert _probe(12, 3) == {"set": 3, "devices": 3}  # an explicit count, whatever the cores
    assert _probe(12, 1) == {"set": None, "devices": 1}
    # The user's own choice wins; a multi-process run keeps one device per process.
    assert _probe(12, 3, XLA_FLAGS="--xla_force_host_platform_device_count=4") == {"set": None, "devices": 4}
    assert _probe(12, 0, multi=True) == {"set": None, "devices": 1}


def test_notebooks_split_the_host_through_use_cpu_cores_before_jax_starts():
    assert _probe(12, 3, via="api") == {"set": 3, "devices": 3}
    assert _probe(12, 3, via="late") == {"set": None, "devices": 1}  # too late: JAX started


def test_a_negative_count_is_a_config_error():
    from lmscale.config import default_config as get_config, validate
    c = get_config()
    with c.unlocked():
        c.parallel.cpu_devices = -1
    with pytest.raises(ConfigError, match="parallel.cpu_devices must be >= 0"):
        validate(c, 1)


def test_use_cpu_cores_refuses_a_batch_size_below_one():
    import lmscale
    for bad in (0, -4, 2.5):  # each returned a device count
        with pytest.raises(ValueError, match="batch_size must be the global batch size"):
            lmscale.use_cpu_cores(bad)


def test_use_cpu_cores_names_a_bad_device_count_before_jax_starts():
    """devices='2' was a TypeError from '<'; -1 named parallel.cpu_devices, not the argument;
    3 for a batch of 32 was applied, and train() refused it only once JAX had started."""
    import lmscale
    for bad in ("2", -1, 1.5, True):
        with pytest.raises(ValueError, match=f"devices must be an int >= 0 \\(0: one per core\\), got {bad!r}"):
            lmscale.use_cpu_cores(32, bad)
    with pytest.raises(ValueError, match="devices=3 does not divide batch_size=32"):
        lmscale.use_cpu_cores(32, 3)


def test_load_classifier_names_a_path_that_is_no_path():
    import lmscale
    with pytest.raises(TypeError, match="path must be a classifier's folder \\(a str or path\\), got None"):
        lmscale.load_classifier(None)


@pytest.mark.parametrize("cpu_devices", [0, 1])
def test_eval_uses_the_device_count_the_run_recorded(tmp_path, cpu_devices):
    """A run trained on 4 devices chosen with XLA_FLAGS (not parallel.cpu_devices): eval ran on
    the host's automatic count and missed the logged validation in the 7th digit; with
    parallel.cpu_devices=1 set too, eval took the config's 1 over the recorded 4, and the run
    ignored it without a word."""
    import re

    from tests.conftest import tiny_train_command, write_corpus, xla_flags
    corpus = write_corpus(tmp_path / "corpus")
    workdir = tmp_path / "run"
    env = {**os.environ, "XLA_FLAGS": xla_flags(4), "JAX_PLATFORMS": "cpu"}
    trained = subprocess.run(tiny_train_command(workdir, corpus, **{"train.steps": 4, "train.batch_size": 8,
                                                          "train.eval_batch_size": 4,
                                                          "parallel.cpu_devices": cpu_devices}),
                   cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=300)
    if cpu_devices:
        assert ("note: the environment sets 4 CPU devices (XLA_FLAGS or JAX_NUM_CPU_DEVICES); 1 "
                "asked for (parallel.cpu_devices, or the run's record) is not applied"
                in trained.stderr), trained.stderr[-2000:]
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    [val] = [r for r in logged if r["split"] == "val"]
    assert json.loads((workdir / "config.json").read_text())["derived"]["devices"] == 4
    plain = {**env, "XLA_FLAGS": re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                        env["XLA_FLAGS"])}
    proc = subprocess.run([sys.executable, "-m", "lmscale.eval", f"--workdir={workdir}"], cwd=REPO,
                          env=plain, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["loss"] == val["loss"]
