"""The processes of one run agree before they train: the same config, one shared workdir that
process 0 could lock, the same process count; a coordinator port in use is one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO, tiny_train_command, write_corpus
from tests.launch.test_local import _launcher_module
from tests.launch.test_stop import finish


def run_two(commands: list[list[str]], timeout: float = 240,
            cwds: tuple = (REPO, REPO)) -> list[tuple[int, str]]:
    """Two processes of one run (1 CPU device each), each with its own command (and folder)."""
    local = _launcher_module()
    address = f"127.0.0.1:{local.free_port()}"
    procs = [subprocess.Popen(cmd, cwd=cwds[pid], env=local.process_env(dict(os.environ), pid, 2,
                                                                         address, 1, None),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for pid, cmd in enumerate(commands)]
    return finish(procs, timeout)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("agree") / "corpus")


def command(workdir, corpus, *flags: str) -> list[str]:
    return tiny_train_command(workdir, corpus, "--initialization_timeout=60", *flags,
                              **{"train.steps": 4, "checkpoint.every": 2})


def prepare(text, output) -> None:
    subprocess.run([sys.executable, "-m", "lmscale.prepare", f"--input={text}",
                    f"--output={output}", "--split=8,1,1", "--progress=false"], cwd=REPO,
                   check=True, capture_output=True)


def command_reading_ds(run) -> list[str]:
    """``command`` of a run whose data.train is "ds", relative to each process's folder (its
    config by absolute path)."""
    config = f"--config={os.path.join(REPO, 'configs', 'quickstart.py')}"
    return [config if a.startswith("--config=") else a for a in command(run, "ds")]


def test_processes_given_other_configs_are_refused(tmp_path, corpus):
    """Process 1 with another seed and lr trained its own replica (both exited 0 before)."""
    run = tmp_path / "run"
    results = run_two([command(run, corpus), command(run, corpus, "--config.seed=1")])
    for status, err in results:
        assert status == 1, err[-2000:]
        assert error_lines(err) == ["error: process(es) [1] were started with another config than "
                                    "process 0 (other --config.* flags or config file): every "
                                    "process of a run must be given the same command"], err[-2000:]
    assert not (run / "checkpoints").exists()


def test_a_workdir_that_is_not_shared_is_refused_at_the_start(tmp_path, corpus):
    """Host-local workdirs: process 0 trained, then both hung at the first checkpoint (10 min)."""
    data = tmp_path / "data"
    prepare(corpus, data)
    results = run_two([command(tmp_path / "a", data), command(tmp_path / "b", data)], timeout=120)
    for status, err in results:
        assert status == 1, err[-2000:]
        assert "is not one folder for all processes: process(es) [1] do not see process 0's" in \
            "\n".join(error_lines(err)), err[-2000:]


def test_processes_reading_other_data_under_one_path_are_refused(tmp_path, corpus):
    """The same relative data.train from two working directories (or node-local copies that
    differ): the run trained on a mix of two corpora, exit 0. The processes compare the
    prepared dataset's fingerprint with process 0's now."""
    other = write_corpus(tmp_path / "other", lines=40, files=2)
    for name, text in (("a", corpus), ("b", other)):
        (tmp_path / name).mkdir()
        prepare(text, tmp_path / name / "ds")
    cmd = command_reading_ds(tmp_path / "run")
    results = run_two([cmd, cmd], cwds=(tmp_path / "a", tmp_path / "b"))
    for status, err in results:
        assert status == 1, err[-2000:]
        assert error_lines(err) == ["error: process(es) [1] read another dataset than process 0 "
                                    "from data.train='ds' (a relative path resolved in another "
                                    "working directory, or node-local copies that differ): every "
                                    "process of a run must read the same data"], err[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_dataset_missing_on_one_host_is_refused_on_every_process(tmp_path, corpus):
    """A prepared dataset that process 1 cannot see (a host without the copy): process 0 went
    on to train and process 1 to wait for it to prepare — two collectives, a hang that SIGTERM
    did not end."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    prepare(corpus, tmp_path / "a" / "ds")
    cmd = command_reading_ds(tmp_path / "run")
    results = run_two([cmd, cmd], timeout=120, cwds=(tmp_path / "a", tmp_path / "b"))
    for status, err in results:
        assert status == 1, err[-2000:]
        assert error_lines(err) == ["error: data.train='ds' is a prepared dataset on process 0 "
                                    "but not on process 1: every process must see the same data "
                                    "(a filesystem shared by all hosts, or the same copy on "
                                    "each)"], err[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


# Process 1's checkpoint writes fail as on a host whose mount of the shared workdir is
# read-only (orbax writes each process's array metadata through this Python function).
_READ_ONLY_HOST = """
import errno, runpy, sys
from orbax.checkpoint._src.path import async_path
async def refused(path, *args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system", str(path))
async_path.write_text = refused
sys.argv = ["lmscale.train", *sys.argv[1:]]
runpy.run_module("lmscale.train", run_name="__main__")
"""


def test_a_checkpoint_that_fails_on_one_host_stops_every_process(tmp_path, corpus):
    """Orbax's wait for a save whose part failed on one process joined a thread held in a
    barrier for that part: both processes hung, silently, until a 20-minute timeout (process 1
    printed orbax's tracebacks). Now process 1 names the checkpoint and the others stop too."""
    run = tmp_path / "run"
    cmd = tiny_train_command(run, corpus, "--initialization_timeout=60",
                             **{"train.steps": 12, "checkpoint.every": 4, "train.log_every": 2})
    results = run_two([cmd, [sys.executable, "-c", _READ_ONLY_HOST, *cmd[3:]]], timeout=150)
    (status_0, err_0), (status_1, err_1) = results
    assert status_1 == 1 and error_lines(err_1) == [
        f"error: checkpoint 4 could not be written in {run / 'checkpoints'}: [Errno 30] Read-only "
        f"file system: '{run / 'checkpoints'}/4.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/"
        f"array_metadatas/process_1'; no checkpoint is complete yet (a re-run starts afresh "
        f"once the cause is fixed)"], err_1[-3000:]
    assert "Traceback" not in err_1, err_1[-3000:]
    assert status_0 == 1 and error_lines(err_0) == [
        f"error: a checkpoint could not be written by another process of the run (process 1: "
        f"{error_lines(err_1)[0][len('error: '):]})"], err_0[-3000:]


def test_a_coordinator_port_in_use_is_one_line(tmp_path, corpus):
    """Process 0 crashed in jax (a segmentation fault) on a taken port; an address with a
    scheme passed the check and aborted after the timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for address, message in ((f"127.0.0.1:{port}", f"the coordinator's port {port} is already "
                                                       f"in use on this host"),
                                 ("http://127.0.0.1:1234", "coordinator address must be HOST:PORT "
                                                           "(no scheme or path)")):
            proc = subprocess.run(tiny_train_command(
                tmp_path / "run", corpus, f"--coordinator_address={address}", "--num_processes=2",
                "--process_id=0", "--initialization_timeout=5"), cwd=REPO, capture_output=True,
                text=True, timeout=120)
            assert proc.returncode == 1 and message in "\n".join(error_lines(proc.stderr)), \
                proc.stderr[-2000:]


def test_a_workdir_in_use_is_refused_on_every_process(tmp_path, corpus):
    """Process 0 said so; process 1 waited on a collective until a Gloo timeout (35 s)."""
    from lmscale.training.workdir_lock import hold_workdir
    run = tmp_path / "run"
    run.mkdir()
    held = hold_workdir(str(run))  # another lmscale process (this one) trains there
    try:
        (status0, err0), (status1, err1) = run_two([command(run, corpus), command(run, corpus)],
                                                   timeout=120)
    finally:
        held.close()
    assert status0 == status1 == 1
    assert f"is in use by another lmscale process (pid {os.getpid()} on " in err0
    assert error_lines(err1) == [f"error: process 0 refused {run}: it is in use by another "
                                 f"lmscale process, or cannot be written (see process 0's "
                                 f"error)"], err1[-2000:]


def test_a_workdir_process_0_cannot_lock_is_refused_on_every_process(tmp_path, corpus):
    """Process 0 could not write its lock (here a folder where the lock file goes; a full disk
    alike) and said so; process 1 waited on the agreement's collective until a Gloo timeout."""
    run = tmp_path / "run"
    (run / ".lock").mkdir(parents=True)
    (status0, err0), (status1, err1) = run_two([command(run, corpus), command(run, corpus)],
                                               timeout=120)
    assert status0 == status1 == 1
    assert f"cannot write in the workdir {run}" in err0, err0[-2000:]
    assert error_lines(err1) == [f"error: process 0 refused {run}: it is in use by another "
                                 f"lmscale process, or cannot be written (see process 0's "
                                 f"error)"], err1[-2000:]


@pytest.mark.parametrize("env", [
    {"LMSCALE_NUM_PROCESSES": "2", "LMSCALE_PROCESS_ID": "1",
     "LMSCALE_COORDINATOR_ADDRESS": "127.0.0.1:1234"},  # what launch/local.py sets
    {"SLURM_NTASKS": "2", "SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "localhost",
     "SLURM_PROCID": "1", "SLURM_LOCALID": "1"},  # a task of srun --ntasks=2
])
def test_finetune_started_as_several_processes_says_it_runs_as_one(tmp_path, env):
    """Under launch/local.py each process began its own fine-tune in the one workdir until the
    workdir lock stopped all but one (config.json then said 1 device)."""
    proc = subprocess.run([sys.executable, "-m", "lmscale.finetune",
                           "--config=configs/finetune_sst.py", f"--workdir={tmp_path / 'ft'}"],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert error_lines(proc.stderr) == [l for l in proc.stderr.splitlines() if l.strip()], proc.stderr
    assert "lmscale.finetune runs as one process" in proc.stderr, proc.stderr
    assert not (tmp_path / "ft").exists()


def test_a_process_told_another_count_is_named_by_the_one_left_waiting(tmp_path, corpus):
    """Process 1 said why it left (its count differs), and process 0 died ~30 s later in its
    first collective with a Gloo DEADLINE_EXCEEDED traceback: now one line that repeats why."""
    run = tmp_path / "run"
    (status0, err0), (status1, err1) = run_two(
        [command(run, corpus), command(run, corpus, "--num_processes=3")], timeout=180)
    why = ("this process was started as one of 3 processes, and the run has 2 (as process 0 "
           "was told): give every process the same count")
    assert status1 == 1 and error_lines(err1) == [f"error: {why}"], err1[-2000:]
    assert status0 == 1, err0[-2000:]
    assert error_lines(err0) == [f"error: a process of the run left before the processes agreed "
                                 f"on their settings (process 1: {why})"], err0[-2000:]
    assert "Traceback" not in err0, err0[-2000:]


@pytest.mark.parametrize("tool,flags", [
    ("lmscale.eval", ["--workdir=RUN"]),
    ("lmscale.generate", ["--workdir=RUN"]),
    ("lmscale.transfer", ["--workdir=RUN", "--train=a.csv", "--val=b.csv"]),
    ("lmscale.classify", ["--workdir=RUN", "--input=a.csv", "--output=p.csv"]),
    ("lmscale.prepare", ["--input=a.txt", "--output=OUT"]),
])
def test_the_other_tools_started_as_several_processes_say_they_run_as_one(tmp_path, tool, flags):
    """Under launch/local.py (or srun with several tasks) each process did the whole job:
    transfer wrote the same transfer/ and features/ files from every process, eval printed
    its line once per process."""
    env = {"LMSCALE_NUM_PROCESSES": "2", "LMSCALE_PROCESS_ID": "1",
           "LMSCALE_COORDINATOR_ADDRESS": "127.0.0.1:1234"}
    flags = [f.replace("RUN", str(tmp_path / "run")).replace("OUT", str(tmp_path / "out"))
             for f in flags]
    proc = subprocess.run([sys.executable, "-m", tool, *flags], cwd=tmp_path,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert [l for l in proc.stderr.splitlines() if l.strip()] == [
        f"error: {tool} runs as one process (over the devices of its host), and this one was "
        f"started as one of several (process 1 of 2, from LMSCALE_* environment): start it "
        f"once, without "
        f"launch/local.py (or with srun --ntasks=1)"], proc.stderr
    assert not os.listdir(tmp_path)


def test_finetune_in_an_sbatch_scripts_own_environment_runs_as_its_one_process():
    """A plain `python -m lmscale.finetune` in an sbatch --ntasks=4 script inherits
    SLURM_NTASKS=4 without a step's variables: one process, not refused."""
    from lmscale.distributed import refuse_several_processes
    refuse_several_processes("lmscale.finetune",
                             {"SLURM_NTASKS": "4", "SLURM_JOB_ID": "1", "SLURM_PROCID": "0"})


def test_a_previous_run_process_0_cannot_archive_is_refused_on_every_process(tmp_path, corpus):
    """resume=false over a run whose archive/ process 0 cannot create (here a file there): process
    0 raised (a traceback) between its move and the barrier after it; process 1 waited at the
    barrier and process 0 at jax's shutdown barrier, both until it timed out (5 min, SIGABRT)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    (run / "archive").write_text("")
    cmd = command(run, corpus, "--config.resume=false")
    (status0, err0), (status1, err1) = run_two([cmd, cmd], timeout=90)
    assert status0 == status1 == 1, err0[-2000:] + err1[-2000:]
    assert error_lines(err0) == [f"error: cannot move the previous run in {run} to {run}/archive "
                                 f"(resume=false): [Errno 17] File exists: '{run}/archive'"], err0[-2000:]
    assert error_lines(err1) == [f"error: process 0 could not move the previous run in {run} to "
                                 f"{run}/archive (resume=false); see its error"], err1[-2000:]


def test_a_run_file_process_0_cannot_write_stops_every_process(tmp_path, corpus):
    """Process 0 alone writes config.json, history/, commands.log and truncates metrics.jsonl:
    one of those failing (here history/ is a file, the resumed config differs) raised on process
    0 while process 1 went on into the first step's collective: both hung (process 0 in jax's
    shutdown barrier) until killed; SIGTERM did not end them."""
    run = tmp_path / "run"
    assert [s for s, _ in run_two([command(run, corpus), command(run, corpus)])] == [0, 0]
    (run / "history").write_text("")
    more = command(run, corpus, "--config.train.steps=6")
    (status0, err0), (status1, err1) = run_two([more, more], timeout=90)
    assert status0 == status1 == 1, err0[-2000:] + err1[-2000:]
    assert "File exists" in err0, err0[-2000:]
    assert error_lines(err1) == [f"error: process 0 could not write the run's files in {run} "
                                 f"(config.json, commands.log, metrics.jsonl); see its error"], \
        err1[-2000:]


def test_a_best_json_process_0_cannot_write_again_stops_every_process(tmp_path, corpus):
    """A damaged best.json is rebuilt from metrics.jsonl by process 0 alone (the damaged one
    moved aside, the record written again): a failure there (a full disk, the very cause of a
    torn file; here best.json.damaged is a folder) raised on process 0 only, while process 1
    went on to the barrier after listing the best steps: both hung for 5 minutes (SIGABRT)."""
    run = tmp_path / "run"
    best = ("--config.checkpoint.keep_best=true", "--config.train.eval_every=2")
    assert [s for s, _ in run_two([command(run, corpus, *best)] * 2)] == [0, 0]
    (run / "best.json").write_text('{"st')
    (run / "best.json.damaged" / "x").mkdir(parents=True)
    more = command(run, corpus, *best, "--config.train.steps=6")
    (status0, err0), (status1, err1) = run_two([more, more], timeout=90)
    assert status0 == status1 == 1, err0[-2000:] + err1[-2000:]
    assert "Is a directory" in err0, err0[-2000:]
    assert error_lines(err1) == [f"error: process 0 could not write {run}/best.json again (or "
                                 f"keep the damaged one aside); see its error"], err1[-2000:]


def test_a_tool_started_by_open_mpi_5_is_refused(capsys):
    """`mpirun -n 2 python -m lmscale.eval` under Open MPI 5 (no OMPI_MCA_orte_hnp_uri): resolve
    raised, which read as one process, and each rank did the whole job."""
    import pytest

    from lmscale.distributed import refuse_several_processes
    with pytest.raises(SystemExit) as stop:
        refuse_several_processes("lmscale.eval",
                                 {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"})
    assert stop.value.code == 1
    assert "process 1 of 2, from Open MPI" in capsys.readouterr().err


def test_lmscale_num_processes_without_a_coordinator_is_refused(capsys):
    """LMSCALE_NUM_PROCESSES=2 without LMSCALE_COORDINATOR_ADDRESS: resolve raises, and a
    one-process tool must still refuse it (each task would do the whole job)."""
    from lmscale.distributed import refuse_several_processes
    with pytest.raises(SystemExit) as stop:
        refuse_several_processes("lmscale.eval",
                                 {"LMSCALE_NUM_PROCESSES": "2", "LMSCALE_PROCESS_ID": "1"})
    assert stop.value.code == 1
    assert "process 1 of 2, from LMSCALE_* environment" in capsys.readouterr().err
