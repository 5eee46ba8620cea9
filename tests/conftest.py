"""Shared test helpers: a small generated corpus and a tiny run config."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The maintainers' copies of SST binary, SemEval-2018 E-c and tinyshakespeare, beside the
# repository (LMSCALE_TEST_SHARED_DATA names another folder). A clone without them runs the
# rest of the suite: tests marked ``shared_data``, and fixtures that call ``shared_data()``,
# are skipped, saying why.
SHARED_DATA = Path(os.environ.get("LMSCALE_TEST_SHARED_DATA", REPO.parent / "shared" / "data"))
SHARED_DATA_MISSING = (f"needs the maintainers' data sets in {SHARED_DATA} (SST binary, "
                       f"SemEval-2018 E-c, tinyshakespeare), absent here; LMSCALE_TEST_SHARED_DATA "
                       f"names another folder (README, Quick start)")


def shared_data(*parts: str) -> Path:
    """SHARED_DATA/parts; the calling test (or fixture's tests) skipped where it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(SHARED_DATA_MISSING)
    return path
# The configs name their data sets by lmscale.datasets.data_path: in tests, the shared copies.
os.environ.setdefault("LMSCALE_DATA", str(SHARED_DATA))


# xdist's --dist loadfile (the README's command) with a worker crash costing its test, not the
# run: xdist 3.8's own scheduler hung after one; the test's report says how the worker died
# (tests/xdist_scheduling.py).
with contextlib.suppress(ImportError):  # pytest without xdist runs the suite in one process
    from tests import xdist_scheduling
    pytest_xdist_make_scheduler = xdist_scheduling.pytest_xdist_make_scheduler
    pytest_configure_node = xdist_scheduling.pytest_configure_node
    pytest_sessionstart = xdist_scheduling.pytest_sessionstart
    pytest_handlecrashitem = xdist_scheduling.pytest_handlecrashitem

# A test process's compiled programs freed before they pass the kernel's limit on memory maps,
# where jaxlib's next compile-cache write died of SIGSEGV (tests/compiled_code_maps.py).
from tests import compiled_code_maps  # noqa: E402
pytest_runtest_teardown = compiled_code_maps.pytest_runtest_teardown

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE: list[str] = []  # the cache folder this session made (removed at its end)


# The suite's programs are tiny and compiling them is most of its time. XLA:CPU's LLVM at -O0
# compiles them ~40 % faster and runs them ~1.7x slower (the quickstart step), a trade that pays
# in tests only (benchmarks/README.md, "The test suite at -O0"). At -O0 XLA:CPU's newer
# (MLIR) fusion emitters take most of what is left: without them a tiny mLSTM and transformer
# run compiled in 3.4-3.8 s instead of 9.7-12.3 ("Compiling without the fusion emitters"; at
# XLA's default level they make no difference). The notebook's kernel, which mostly runs its
# programs, gets XLA's defaults back (default_level_xla_flags). A level the environment's
# XLA_FLAGS already sets keeps all of XLA's defaults: XLA_FLAGS=--xla_backend_optimization_level=3
# tests the tools' configuration. XLA aborts a process whose XLA_FLAGS names a flag it does not
# know, and jaxlib 0.12 no longer has the fusion emitters' switch: the flags after the first are
# added only where this jaxlib accepts them (tried once, in a child process).
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
_ADDED_FLAGS_ENV = "LMSCALE_TEST_XLA_FLAGS"  # what pytest_configure added, for the workers


def accepted_xla_flags(flags: tuple[str, ...]) -> list[str]:
    """Those of ``flags`` that this jaxlib's XLA:CPU accepts, each tried in ``XLA_FLAGS`` of a
    child process that starts JAX's CPU backend (~1 s each)."""
    import subprocess
    return [flag for flag in flags if subprocess.run(
        [sys.executable, "-c", "import jax; jax.devices()"], capture_output=True, timeout=300,
        env={**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}).returncode == 0]


def pytest_configure(config: pytest.Config) -> None:
    """The tests' XLA flags (TEST_XLA_FLAGS), and one persistent XLA compilation cache for the
    whole session: the xdist workers and every subprocess a test starts inherit both, so a
    program compiled once (the same tiny train step in a resumed run, a relaunch, another
    test's run) is read back instead of compiled again. A cache the environment already names
    is used as it is. Under xdist, the controller hands out the files in the order the
    workers collect them (pytest_collection_modifyitems), not sorted again by their number of
    tests (xdist 3.8's default)."""
    if getattr(config.option, "loadscopereorder", None):
        config.option.loadscopereorder = False
    if hasattr(config, "workerinput"):
        return  # an xdist worker: its controller's XLA_FLAGS and cache are in its environment
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_backend_optimization_level" not in flags:
        added = " ".join(TEST_XLA_FLAGS[:1] + tuple(accepted_xla_flags(TEST_XLA_FLAGS[1:])))
        os.environ["XLA_FLAGS"] = f"{flags} {added}".strip()
        os.environ[_ADDED_FLAGS_ENV] = added
    if os.environ.get(_CACHE_ENV):
        return  # set by the user
    _OWN_CACHE.append(tempfile.mkdtemp(prefix="lmscale-test-xla-cache-"))
    os.environ[_CACHE_ENV] = _OWN_CACHE[0]
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # tests' programs are small


# The longest test files (those over ~20 s), longest first: seconds summed over each file's
# tests (setup included) in `pytest -n 2 --dist loadfile --durations=0` with TEST_XLA_FLAGS,
# 2026-12-03 (1485 s summed over the whole suite). The suite runs
# them first, so the two xdist workers finish together (longest processing time first):
# xdist's own order (files with more tests first) left the longest single tests for last,
# and one worker idle for the final ~1.5-3 minutes. Only the order changes, never what runs;
# a file missing here runs after these, in collection order.
LONGEST_TEST_FILES = (
    "tests/examples/test_notebook.py",  # 150 s
    "tests/transfer/test_transfer_cli.py",  # 101
    "tests/training/test_data_parallel.py",  # 87
    "tests/finetune/test_finetune.py",  # 82 (with test_classify_transfer_output.py's tests)
    "tests/finetune/test_classify_transfer_output.py",  # ~13
    "tests/training/test_model_agnostic.py",  # 64
    "tests/training/test_kill.py",  # 64
    "tests/benchmarks/test_gpu_check.py",  # ~60 (51 alone; added after the list was measured)
    "tests/models/test_recurrent_vjp.py",  # 57
    "tests/finetune/test_grad_tokens.py",  # ~54 (added after the list was measured)
    "tests/training/test_loop.py",  # 53
    "tests/transfer/test_featurize.py",  # 52
    "tests/sweeps/test_runner.py",  # ~36 with test_runner_stops.py's ~33: one 52-s file before
    "tests/sweeps/test_runner_stops.py",
    "tests/launch/test_local.py",  # 49
    "tests/benchmarks/test_featurize_bench.py",  # 48
    "tests/models/test_awd_regularizers.py",  # 45
    "tests/models/test_transformer.py",  # 45
    "tests/models/test_recurrent_remat.py",  # 43
    "tests/test_api.py",  # 38
    "tests/test_bench.py",  # 32
    "tests/training/test_in_flight.py",  # 31
    "tests/test_generation.py",  # 30
    "tests/launch/test_stop.py",  # 26
    "tests/training/test_records.py",  # 26
    "tests/training/test_grad_accum.py",  # 22
    "tests/training/test_plan.py",  # 20
    "tests/test_compile_cache.py",  # 20
    "tests/training/test_best_multiprocess.py",  # ~20 (two processes; added after the list was measured)
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The suite's order: LONGEST_TEST_FILES first, then the rest as collected; within a
    file, its own order. Every xdist worker sorts the same collection the same way."""
    rank = {name: i for i, name in enumerate(LONGEST_TEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
    if not SHARED_DATA.is_dir():
        for item in items:
            if item.get_closest_marker("shared_data"):
                item.add_marker(pytest.mark.skip(reason=SHARED_DATA_MISSING))


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in _OWN_CACHE:
        shutil.rmtree(folder, ignore_errors=True)


_LOWERED_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"  # compiled or read from the cache
_lowered: list[str] | None = None  # every program lowered since the first lowered_programs()


@contextlib.contextmanager
def lowered_programs():
    """Yields a list that holds, after the block, one entry per program JAX lowered in it
    (whether then compiled or read from the compilation cache): its module's name, e.g.
    "jit(initial_train_state)"."""
    global _lowered
    if _lowered is None:
        import jax.monitoring
        _lowered = []

        def listen(name: str, _seconds: float, **kwargs: object) -> None:
            if name == _LOWERED_EVENT:
                _lowered.append(str(kwargs.get("fun_name", name)))
        jax.monitoring.register_event_duration_secs_listener(listen)
    start, found = len(_lowered), []
    yield found
    found.extend(_lowered[start:])


def default_level_xla_flags() -> str:
    """The session's ``XLA_FLAGS`` without the tests' own (TEST_XLA_FLAGS), for a process whose
    programs run far longer than they compile: the notebook's kernel (400 training steps, then
    9,613 sentences featurized) took 118-121 s at -O0 and 79-87 s at XLA's default level alone
    (2026-12-03). The kill, stop, transfer and featurize-benchmark tests were as fast or faster
    at -O0."""
    flags = os.environ.get("XLA_FLAGS", "")
    return " ".join(flags.replace(os.environ.get(_ADDED_FLAGS_ENV, ""), "").split())


def xla_flags(devices: int) -> str:
    """``XLA_FLAGS`` for a process a test starts on ``devices`` CPU devices: the session's
    flags (with the tests' own, TEST_XLA_FLAGS) and that device count."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    return " ".join(f"{flags} --xla_force_host_platform_device_count={devices}".split())


def script_result(script: str, **env: str) -> dict:
    """Runs ``python -c script`` in a fresh process (the repo as working directory, JAX on the
    CPU, ``env`` added, e.g. ``XLA_FLAGS``) and returns the JSON object its last stdout line
    holds; a failed run fails the test with its stderr's tail."""
    import json
    import subprocess
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu", **env})
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def meminfo_file(tmp_path: Path, available_kb: int, swap_kb: int = 0) -> str:
    """A /proc/meminfo of a host with ``available_kb`` available (and ``swap_kb`` of free
    swap), for ``fits.MEMINFO``: the host-memory checks on a host as small as a test needs."""
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       24000000 kB\nMemFree:         1000000 kB\n"
                    f"MemAvailable:   {available_kb:>9} kB\nSwapTotal:      {swap_kb} kB\n"
                    f"SwapFree:       {swap_kb} kB\n")
    return str(path)


def write_corpus(folder: Path, files: int = 4, lines: int = 300) -> str:
    """Text files of simple, learnable English-like lines; returns a glob for them."""
    folder.mkdir(parents=True, exist_ok=True)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "big", "red", "house"]
    for f in range(files):
        with open(folder / f"doc{f}.txt", "w") as out:
            for i in range(lines):
                out.write(" ".join(words[(i * 7 + j * (f + 3)) % len(words)] for j in range(8)) + ".\n")
    return str(folder / "*.txt")


# A 2-block transformer small enough for a test (use as tiny_config(corpus, **TINY_TRANSFORMER)).
TINY_TRANSFORMER = {"model.kind": "transformer", "model.layers": 2, "model.d_model": 32,
                    "model.heads": 2, "model.d_ff": 64, "model.max_len": 32,
                    "model.weight_norm": True}


def tiny_config(data_train: str, **overrides):
    """A run config small enough for a test: a 32-unit mLSTM, batch 4, 16 characters."""
    from lmscale.config import default_config
    c = default_config()
    c.data.train = data_train
    c.data.split = "8,1,1"
    c.model.hidden = 32
    c.model.embed = 16
    c.train.steps = 12
    c.train.batch_size = 4
    c.train.seq_len = 16
    c.train.log_every = 2
    c.train.eval_every = 4
    c.train.eval_batch_size = 4
    c.train.eval_steps = 3
    c.train.progress_bar = False
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 2
    c.checkpoint.every = 4
    for key, value in overrides.items():
        section, name = key.split(".")
        c[section][name] = value
    c.lock()
    return c


# The command-line flags of a tiny lmscale.train run (tiny_config's model, batch and length).
TINY_TRAIN_FLAGS = {"data.split": "8,1,1", "model.hidden": 32, "model.embed": 16,
                    "train.batch_size": 4, "train.seq_len": 16, "train.eval_every": 0,
                    "train.progress_bar": False}


def tiny_train_command(workdir, data_train, *flags: str, **overrides) -> list[str]:
    """``python -m lmscale.train`` of the quickstart config cut down to TINY_TRAIN_FLAGS, with
    ``overrides`` ("section.name": value, as tiny_config takes them) and other ``flags``
    (e.g. "--initialization_timeout=60") after them."""
    config = {**TINY_TRAIN_FLAGS, **overrides}
    return [sys.executable, "-m", "lmscale.train", "--config=configs/quickstart.py",
            f"--workdir={workdir}", f"--config.data.train={data_train}",
            *(f"--config.{key}={value}" for key, value in config.items()), *flags]


@pytest.fixture
def corpus(tmp_path: Path) -> str:
    return write_corpus(tmp_path / "corpus")


@pytest.fixture(autouse=True)
def _quiet_jax(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session")
def sst_run(tmp_path_factory) -> str:
    """A tiny mLSTM trained for 20 steps on SST train text: a real workdir for transfer tests."""
    from lmscale.training.loop import train
    workdir = str(tmp_path_factory.mktemp("sst_lm") / "run")
    sst = shared_data("sst_binary")
    config = tiny_config(f"{sst}/train.csv", **{"data.text_column": "sentence", "data.split": "8,1,0",
                                                "data.shard_tokens": 65536, "train.steps": 20})
    train(config, workdir)
    return workdir


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (Linux: SigCgt)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(line.split()[1] for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(mask, 16) >> (signum - 1) & 1)


def fill_disk(disk: Path) -> None:
    """Fills the file system of the folder ``disk`` (a ``small_disk``) to its last page."""
    with open(disk / "fill", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


@pytest.fixture
def small_disk(tmp_path, request):
    """A 1.8 MB tmpfs (or the size given as the fixture's param; root only, skipped
    elsewhere), unmounted after the test."""
    import subprocess
    mount = tmp_path / "small_disk"
    mount.mkdir()
    size = getattr(request, "param", "1800k")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)  # lazily: orbax may hold files


def stopped_in_a_thread(run, workdir: str, timeout: float = 300) -> dict:
    """``run(stop)`` (a train() or finetune() given ``stop=``) in a thread other than the
    main one, ``stop`` set once the run has logged its first record in ``workdir``; returns
    the run's result."""
    import threading
    import time
    from lmscale.training.metrics import read_metrics
    stop, result = threading.Event(), {}
    worker = threading.Thread(target=lambda: result.update(run(stop)))
    worker.start()
    deadline = time.monotonic() + timeout
    while not os.path.exists(os.path.join(workdir, "metrics.jsonl")) or not read_metrics(workdir):
        assert worker.is_alive() and time.monotonic() < deadline, result
        time.sleep(0.05)
    stop.set()
    worker.join(timeout)
    assert not worker.is_alive()
    return result
