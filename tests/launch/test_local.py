"""Multi-process training on one machine through launch/local.py and jax.distributed (gloo on
CPU): the same losses as one process, shared checkpoints and resume, a clear message when the
coordinator cannot be reached; and the pure settings logic of lmscale.distributed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from lmscale.distributed import DistributedError, ProcessGroup, cpu_pool_size, resolve
from lmscale.training.metrics import read_metrics
from tests.conftest import REPO, tiny_train_command, write_corpus

LAUNCHER = str(REPO / "launch" / "local.py")


def launch(workdir, data, steps: int, *, processes: int, devices: int, extra=(), launcher_flags=(),
           timeout: int = 300) -> subprocess.CompletedProcess:
    """``launch/local.py`` running lmscale.train on a tiny model: global batch 8 x 16 characters."""
    train = tiny_train_command(workdir, data, "--initialization_timeout=60", *extra, **{
        "train.batch_size": 8, "train.steps": steps, "optim.decay_steps": 12,
        "train.log_every": 1, "train.eval_batch_size": 8, "train.eval_steps": 2,
        "checkpoint.every": 3})
    command = [sys.executable, LAUNCHER, f"--num_processes={processes}",
               f"--devices_per_process={devices}", "--platform=cpu", *launcher_flags, "--", *train]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def train_losses(workdir) -> dict[int, tuple[float, float]]:
    return {r["step"]: (r["loss"], r["bpc"]) for r in read_metrics(str(workdir)) if r["split"] == "train"}


def checkpoint_steps(workdir) -> list[int]:
    return sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """2 processes x 2 devices (process 0 prepares the raw text), resumed from 6 to 8 steps;
    and 1 process x 4 devices on the dataset the first run prepared, 8 steps at once."""
    root = tmp_path_factory.mktemp("multiprocess")
    corpus = write_corpus(root / "corpus")
    two, one = root / "two_processes", root / "one_process"
    first = launch(two, corpus, 6, processes=2, devices=2)
    assert first.returncode == 0, first.stderr[-3000:]
    after_first = {"losses": train_losses(two), "checkpoints": checkpoint_steps(two)}
    resumed = launch(two, corpus, 8, processes=2, devices=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    single = launch(one, two / "data", 8, processes=1, devices=4)
    assert single.returncode == 0, single.stderr[-3000:]
    return {"two": two, "one": one, "first": first, "after_first": after_first, "resumed": resumed}


def test_two_processes_give_the_losses_of_one(runs):
    two, one = train_losses(runs["two"]), train_losses(runs["one"])
    assert sorted(two) == sorted(one) == list(range(1, 9))
    np.testing.assert_allclose(np.array([two[s] for s in range(1, 9)]),
                               np.array([one[s] for s in range(1, 9)]), rtol=0, atol=1e-5)
    assert one[8][0] < one[1][0]


def test_processes_joined_through_the_coordinator(runs):
    err = runs["first"].stderr
    assert "process 0/2: connecting to coordinator 127.0.0.1:" in err
    assert "[process 1] process 1/2: connecting to coordinator 127.0.0.1:" in err
    config = (runs["two"] / "config.json").read_text()
    assert '"processes": 2' in config and '"devices": 4' in config
    assert (runs["two"] / "data" / "metadata.json").exists()  # prepared once, by process 0


def test_checkpoints_are_shared_and_a_rerun_resumes(runs):
    assert runs["after_first"]["checkpoints"] == [3, 6]
    assert checkpoint_steps(runs["two"]) == [3, 6, 8]
    before = runs["after_first"]["losses"]
    after = train_losses(runs["two"])
    assert sorted(before) == list(range(1, 7))
    assert {s: after[s] for s in before} == before  # steps 1-6 kept, 7-8 continued from step 6


def test_unreachable_coordinator_fails_in_bounded_time_with_a_message(tmp_path):
    """Only process 1 of 2 is started: nobody serves the coordinator."""
    start = time.monotonic()
    proc = launch(tmp_path / "run", "python_stdlib", 2, processes=2, devices=1,
                  extra=["--initialization_timeout=5"], launcher_flags=["--process_ids=1"],
                  timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 90
    assert "process 1/2: connecting to coordinator 127.0.0.1:" in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "process 1 was aborted (SIGABRT)" in error[0]
    assert "could not reach the coordinator" in error[0]


def test_bad_data_on_process_0_stops_every_process(tmp_path):
    """Process 0 fails to prepare the data; process 1, waiting for it, fails too (or is stopped)."""
    proc = launch(tmp_path / "run", tmp_path / "missing.txt", 2, processes=2, devices=1, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert any(line.startswith("error: data.train=") and "no such file or directory: " in line
               and "missing.txt" in line for line in errors)
    assert errors[-1].startswith("error: process ")
    for line in errors:  # process 1's own message, unless the launcher stopped it first
        assert not line.startswith("[process 1]") or "process 0 could not prepare" in line


def test_launcher_names_a_failed_process_and_its_status(tmp_path):
    proc = subprocess.run([sys.executable, LAUNCHER, "--num_processes=2", "--platform=cpu", "--",
                           sys.executable, "-c", "import os, sys; "
                           "sys.exit(3 if os.environ['LMSCALE_PROCESS_ID'] == '1' else 0)"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3  # its own status, as srun passes it on (the trainer's 3: diverged)
    assert "error: process 1 exited with status 3" in proc.stderr


def test_a_later_process_dying_while_process_0_runs_stops_the_launch_at_once(tmp_path):
    """Process 1 dies while process 0 would run for a minute (as if waiting in a collective for
    it): the launcher names process 1 and stops process 0 within its grace period."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, LAUNCHER, "--num_processes=2", "--platform=cpu", "--",
                           sys.executable, "-c", "import os, sys, time; "
                           "time.sleep(60) if os.environ['LMSCALE_PROCESS_ID'] == '0' "
                           "else sys.exit(5)"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 5
    assert "error: process 1 exited with status 5" in proc.stderr
    assert time.monotonic() - start < 40


def test_a_mistyped_command_is_one_line():
    """It was a Python traceback ending in FileNotFoundError (audit)."""
    proc = subprocess.run([sys.executable, LAUNCHER, "--num_processes=2", "--platform=cpu", "--",
                           "pyhton", "-m", "lmscale.train"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "error: cannot start 'pyhton' (the command after '--'): No such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def _two_processes(tmp_path, on_sigterm: str, last: str) -> subprocess.CompletedProcess:
    """The launcher running two Python processes: each installs ``on_sigterm`` as its SIGTERM
    handler; process 1 then says so in a file, which process 0 waits for before it exits 4
    (so the launcher's SIGTERM cannot land before the handler, under any load); process 1
    then sleeps 0.5 s and runs ``last``."""
    ready = tmp_path / "ready"
    code = ("import os, signal, sys, time; "
            f"signal.signal(signal.SIGTERM, {on_sigterm}); "
            "one = os.environ['LMSCALE_PROCESS_ID'] == '1'; "
            f"open({str(ready)!r}, 'w').close() if one else None; "
            f"[time.sleep(0.01) for _ in range(6000) if not one and not os.path.exists({str(ready)!r})]; "
            f"sys.exit(4) if not one else (time.sleep(0.5), {last})")
    return subprocess.run([sys.executable, LAUNCHER, "--num_processes=2", "--platform=cpu", "--",
                           sys.executable, "-c", code], capture_output=True, text=True, timeout=90)


def test_a_process_failing_on_its_own_is_not_said_stopped_by_the_launcher(tmp_path):
    """Every process refusing the same thing (a locked workdir) exits 1; the launcher saw
    process 0 first and said "stopped process 1", which had failed by itself."""
    proc = _two_processes(tmp_path, "signal.SIG_IGN", "sys.exit(1)")  # busy failing
    assert proc.returncode == 4  # the first failed process's status
    assert "error: process 0 exited with status 4" in proc.stderr
    assert "stopped process 1" not in proc.stderr and "process 1 failed too" in proc.stderr


def test_launcher_refuses_a_command_line_without_a_command():
    proc = subprocess.run([sys.executable, LAUNCHER, "--num_processes=2"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "after '--'" in proc.stderr


# The settings logic: pure functions of flags and an environment.

def test_no_flags_no_cluster_is_a_single_process():
    assert resolve(None, None, None, {}) is None
    assert resolve(None, None, None, {"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None


def test_flags_give_an_explicit_group():
    group = resolve("10.0.0.1:1234", 4, 3, {})
    assert group == ProcessGroup("10.0.0.1:1234", 4, 3, 3, 4, "flags")
    assert group.describe(10) == ("process 3/4: connecting to coordinator 10.0.0.1:1234 "
                                  "(timeout 10 s; settings from flags)")


def test_environment_fills_in_and_flags_win():
    env = {"LMSCALE_COORDINATOR_ADDRESS": "127.0.0.1:9999", "LMSCALE_NUM_PROCESSES": "2",
           "LMSCALE_PROCESS_ID": "1"}
    assert resolve(None, None, None, env) == ProcessGroup("127.0.0.1:9999", 2, 1, 1, 2,
                                                           "LMSCALE_* environment")
    group = resolve(None, None, 0, env)
    assert (group.process_id, group.source) == (0, "flags and LMSCALE_* environment")
    assert resolve(None, 1, 0, env) is None  # one process: nothing to join
    with pytest.raises(DistributedError, match="process id 1 is outside 0..0"):
        resolve(None, 1, None, env)


SLURM = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_NTASKS": "16",
         "SLURM_PROCID": "9", "SLURM_LOCALID": "1"}


def test_slurm_and_open_mpi_are_left_to_jax_detection():
    # count and rank from jax's detection; the coordinator named here: the first node, jax's port
    assert resolve(None, None, None, SLURM) == ProcessGroup("node01:61517", None, None, 9, 16, "SLURM")
    ompi = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2",
            "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911"}
    assert resolve(None, None, None, ompi) == ProcessGroup(None, None, None, 2, 4, "Open MPI")
    group = resolve("node01:5000", None, None, SLURM)  # a flag overrides part of the detection
    assert (group.coordinator_address, group.num_processes, group.rank) == ("node01:5000", None, 9)
    assert "flags and SLURM" in group.source
    assert resolve(None, 1, None, SLURM) is None  # --num_processes=1 runs one process anyway


def test_two_steps_of_one_slurm_job_get_their_own_coordinators():
    """Two multi-task steps of one job on one first node (`srun -n4 ... &` twice on an 8-GPU
    node) had one coordinator port (jax's is of the job id alone): the second step's tasks
    connected to the first's coordinator and aborted the running step ("unexpectedly tried to
    connect with a different incarnation")."""
    step = {**SLURM, "SLURM_STEP_NODELIST": "node01"}
    ports = {resolve(None, None, None, {**step, "SLURM_STEP_ID": str(i)}).coordinator_address
             for i in range(64)}
    assert len(ports) == 64 and all(61440 <= int(a.rsplit(":")[1]) <= 65535 for a in ports)
    assert resolve(None, None, None, {**step, "JAX_COORDINATOR_PORT": "7000"}
                   ).coordinator_address == "node01:7000"  # jax's own override, honoured


@pytest.mark.parametrize("nodelist, first", [
    ("node01", "node01"), ("node01,gpu2", "node01"), ("node[07-09,12],gpu1", "node07"),
    ("node[012,001-3]", "node012"), ("rack1-[2-3]-ib,x", "rack1-2-ib"), ("a[1-2]b[3-4]", "a1b3"),
])
def test_the_slurm_coordinator_is_the_steps_first_node(nodelist, first):
    group = resolve(None, None, None, {**SLURM, "SLURM_STEP_NODELIST": nodelist})
    assert group.coordinator_address.rsplit(":", 1)[0] == first


@pytest.mark.parametrize("flags, env, message", [
    ((None, 2, 0), {}, "missing --coordinator_address"),
    (("127.0.0.1:1", None, None), {}, "missing --num_processes, --process_id"),
    (("127.0.0.1:1", 2, 2), {}, "process id 2 is outside 0..1"),
    (("nohost", 2, 0), {}, "must be HOST:PORT"),
    ((None, None, None), {"LMSCALE_NUM_PROCESSES": "two"}, "LMSCALE_NUM_PROCESSES must be an integer"),
    ((None, None, None), {**SLURM, "SLURM_STEP_NODELIST": None}, "SLURM_STEP_NODELIST unset"),
    ((None, None, None), {**SLURM, "SLURM_PROCID": "16"}, "SLURM_PROCID='16' is not a task id 0..15"),
    ((None, None, None), {**SLURM, "SLURM_PROCID": ""}, "SLURM_PROCID='' is not a task id"),
    ((None, 4, None), SLURM, "--num_processes=4 but this SLURM job step has 16 tasks"),
    ((None, None, None), {"OMPI_COMM_WORLD_SIZE": "2"}, "pass --coordinator_address"),
])
def test_incomplete_or_contradicting_settings_are_refused(flags, env, message):
    env = {k: v for k, v in env.items() if v is not None}
    with pytest.raises(DistributedError, match=message):
        resolve(*flags, env)


def test_open_mpi_without_its_uri_takes_ranks_from_its_variables():
    group = resolve("10.0.0.1:5000", None, None, {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"})
    assert (group.coordinator_address, group.num_processes, group.process_id) == ("10.0.0.1:5000", 2, 1)


def test_cpu_thread_pool_is_enlarged_only_where_collectives_would_starve_it():
    two = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true --xla_force_host_platform_device_count=2"}
    assert cpu_pool_size(two, cpus=2) == 4
    assert cpu_pool_size(two, cpus=16) is None
    assert cpu_pool_size({**two, "PJRT_NPROC": "3"}, cpus=2) is None
    assert cpu_pool_size({}, cpus=1) == 2
    assert cpu_pool_size({}, cpus=2, num_cpu_devices=4) == 8


def _launcher_module():
    spec = importlib.util.spec_from_file_location("launch_local", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launcher_environment_per_process():
    local = _launcher_module()
    env = local.process_env({"XLA_FLAGS": "--xla_dump_to=/tmp/x"}, 1, 2, "127.0.0.1:5", 2, None)
    assert env["LMSCALE_PROCESS_ID"] == "1" and env["LMSCALE_NUM_PROCESSES"] == "2"
    assert env["LMSCALE_COORDINATOR_ADDRESS"] == "127.0.0.1:5"
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=2"
    gpu = local.process_env({}, 1, 2, "127.0.0.1:5", 2, ["0", "1", "2", "3"])
    assert gpu["CUDA_VISIBLE_DEVICES"] == "2,3" and "XLA_FLAGS" not in gpu
    assert local.describe_exit(0, -9, "h:1") == "process 0 was killed by SIGKILL — often the out-of-memory killer"
    assert local.describe_exit(0, -9, "h:1", sent=9) == "process 0 was stopped by the launcher (SIGKILL)"


def test_a_process_that_stops_cleanly_on_the_launchers_signal_is_said_stopped(tmp_path):
    """A trainer stopped by the launcher's SIGTERM exits 0 now (saved, or nothing to save):
    it was named neither stopped nor failed."""
    proc = _two_processes(tmp_path, "lambda *a: sys.exit(0)", "time.sleep(30)")
    assert proc.returncode == 4
    assert "error: process 0 exited with status 4" in proc.stderr
    assert "stopped process 1" in proc.stderr, proc.stderr


def test_processes_failing_at_the_same_time_are_all_named():
    """Two processes failing together (each refusing the same thing in one collective): the
    second had exited before the launcher stopped anyone, and the summary left it out."""
    local = _launcher_module()
    line = local.failure_summary(0, 1, {0: 1, 1: 1}, [], {}, "127.0.0.1:1")
    assert line == "process 0 exited with status 1 (its error is above); process 1 failed too"
    stopped = local.failure_summary(0, 1, {0: 1, 1: -15, 2: 3}, [1, 2], {1: 15, 2: 15}, "a:1")
    assert stopped.endswith("; stopped process 1; process 2 failed too"), stopped


def test_commands_log_records_the_launch_not_one_processs_command(runs):
    """Process 0's own command, pasted, resumed as one process with its 2 devices; and
    "2 processes x 4 devices" read as 8. The launch is recorded, and it runs again."""
    log = (runs["two"] / "commands.log").read_text().splitlines()
    assert len(log) == 6 and "start at step 0, 2 processes x 2 devices (4 in all)" in log[0]
    assert "start at step 6, 2 processes x 2 devices (4 in all)" in log[3]
    assert log[1].startswith(f"cd {REPO} && ") and f"{LAUNCHER} --num_processes=2 " in log[1]
    assert log[2].startswith("# (launch/local.py; process 0 ran: ") and "-m lmscale.train" in log[2]
    again = subprocess.run(["bash", "-c", log[1]], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is already trained to step 8 (train.steps=6)" in again.stderr, again.stderr[-3000:]


def test_the_launchers_recorded_environment_is_the_command_logs():
    """launch/local.py imports no lmscale and keeps its own copy of the names; a plugin
    model's LMSCALE_MODEL_MODULES was missing from a recorded launch."""
    import importlib.util

    from lmscale.training.command_log import RECORDED_ENV
    spec = importlib.util.spec_from_file_location("launch_local", REPO / "launch" / "local.py")
    local = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(local)
    assert local.RECORDED_ENV == RECORDED_ENV


def test_ctrl_z_stops_every_process_with_the_launcher_and_fg_continues_them(tmp_path):
    """The processes run in sessions of their own: a Ctrl-Z (SIGTSTP) stopped the launcher
    alone, and the run went on (one process stopped alone past jax's heartbeat aborted it)."""
    import signal
    ticks = [tmp_path / f"ticks{pid}" for pid in range(2)]
    tick = f"{str(tmp_path)!r} + '/ticks' + os.environ['LMSCALE_PROCESS_ID']"
    proc = subprocess.Popen([sys.executable, LAUNCHER, "--num_processes=2", "--platform=cpu",
                             "--", sys.executable, "-c", "import os, time\n"
                             f"path = {tick}\n"
                             "while True:\n    open(path, 'a').write('.')\n    time.sleep(0.05)"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not all(t.exists() for t in ticks) and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(2):  # and a second time (its handler set again after the first)
            proc.send_signal(signal.SIGTSTP)
            time.sleep(1)
            sizes = [t.stat().st_size for t in ticks]
            time.sleep(1)
            assert [t.stat().st_size for t in ticks] == sizes  # stopped with the launcher
            proc.send_signal(signal.SIGCONT)
            time.sleep(1)
            assert all(t.stat().st_size > s for t, s in zip(ticks, sizes))  # continued
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()


def test_a_ctrl_z_past_jaxs_heartbeat_is_said_as_the_processes_stop_and_when_the_run_ends(
        tmp_path):
    """Stopped together, the processes still found jax's heartbeats stale as they continued
    (a stop past 100 s): the run aborted at `fg`, its error line blaming the coordinator or
    another process, with nothing said of the stop."""
    import signal
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import os, time\nimport jax\n"
        "jax.distributed.initialize(os.environ['LMSCALE_COORDINATOR_ADDRESS'], "
        "int(os.environ['LMSCALE_NUM_PROCESSES']), int(os.environ['LMSCALE_PROCESS_ID']), "
        "heartbeat_timeout_seconds=3)  # the run's is 100 s\n"
        f"open({str(tmp_path)!r} + '/up' + os.environ['LMSCALE_PROCESS_ID'], 'w').close()\n"
        "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, LAUNCHER, "--num_processes=2", "--platform=cpu",
                             "--", sys.executable, str(worker)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while (not all((tmp_path / f"up{pid}").exists() for pid in range(2))
               and time.monotonic() < deadline):
            time.sleep(0.1)
        proc.send_signal(signal.SIGTSTP)
        time.sleep(8)  # past the heartbeat
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1, err[-2000:]
    assert "launch: 2 processes stopped with the launcher; continue them within 100 s" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: process ") and "(SIGABRT)" in last, err[-2000:]
    assert "stopped with the launcher (Ctrl-Z) for " in last and "s heartbeat" in last
