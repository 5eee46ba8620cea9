"""A Python session (lmscale/compiled_programs.py) and the suite's test processes
(tests/compiled_code_maps.py) free compiled programs before they near the kernel's limit on
memory maps, past which XLA died of SIGSEGV."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmscale.compiled_programs import max_map_count, memory_maps
from tests.conftest import REPO, script_result

# The tests that hold half the kernel's limit in maps (Linux's default: 32,865, 4 KiB each) leave
# out systems whose limit is far higher (some distributions set 1,048,576).
holds_half_the_limit = pytest.mark.skipif(
    max_map_count() > 262144, reason=f"vm.max_map_count is {max_map_count():,}: holding half "
                                     f"of it in maps would take too long")

# Programs of one jitted function (one per shape), kept by JAX's cache while the function
# lives, and the process's count of maps when they were made (a module of the first test, the
# start of the others' scripts).
PROGRAMS = """
import jax, jax.numpy as jnp
from lmscale.compiled_programs import memory_maps
step = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0) * jnp.exp(-x).mean())
def compile_programs(count):
    for n in range(1, count + 1):
        step(jnp.ones((n, 3))).block_until_ready()
    return memory_maps()
"""


# Holds maps past half the kernel's limit (alternating protections: the kernel cannot merge them).
HOLD = """
import mmap
from lmscale.compiled_programs import max_map_count
HELD = [mmap.mmap(-1, 4096, prot=mmap.PROT_READ | (i % 2 and mmap.PROT_WRITE))
        for i in range(max_map_count() // 2 + 100)]
"""


@holds_half_the_limit
def test_a_process_past_half_the_limit_frees_its_programs_at_the_end_of_a_file(tmp_path: Path):
    """test_a holds maps past half vm.max_map_count and compiles 40 programs; at its file's end
    the programs are freed, so test_b, in the same process, finds fewer maps (it found as many
    before: JAX kept every program while its function lived)."""
    (tmp_path / "programs.py").write_text(PROGRAMS)
    (tmp_path / "test_a.py").write_text(
        HOLD + "from programs import compile_programs\ndef test_a():\n"
        f"    open({str(tmp_path / 'count')!r}, 'w').write(str(compile_programs(40)))\n")
    (tmp_path / "test_b.py").write_text(
        "from lmscale.compiled_programs import memory_maps\n"
        "def test_b():\n"
        f"    before = int(open({str(tmp_path / 'count')!r}).read())\n"
        "    assert memory_maps() < before - 40, (memory_maps(), before)\n")
    (tmp_path / "conftest.py").write_text(
        "from tests.compiled_code_maps import pytest_runtest_teardown  # noqa: F401\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                          "test_a.py", "test_b.py"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**env, "PYTHONPATH": f"{REPO}:{tmp_path}"})
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]


@holds_half_the_limit
def test_each_run_or_load_of_the_api_frees_programs_past_half_the_limit(tmp_path: Path):
    """A notebook's programs (here 30 of one function) are freed when it starts the next run
    or load, with a note on stderr: past the limit its kernel died of SIGSEGV, unexplained.
    Each call here fails at once on a folder that does not exist, having released first."""
    missing = str(tmp_path / "none")
    calls = {"train": f"lmscale.training.loop.train(tiny_config({missing!r}), {missing!r})",
             "finetune": f"lmscale.finetuning.loop.finetune(ft_config({missing!r}, 'a', 'b'), "
                         f"{missing!r})",
             "run_transfer": f"lmscale.transfer.run.run_transfer({missing!r}, 'a', 'b')",
             "load_lm": f"lmscale.load_lm({missing!r})",
             "load_classifier": f"lmscale.load_classifier({missing!r})"}
    script = (PROGRAMS + HOLD + "import json, sys, lmscale, lmscale.training.loop, "
              "lmscale.finetuning.loop, lmscale.transfer.run\n"
              "from tests.conftest import tiny_config\n"
              "from tests.finetune.conftest import ft_config\n"
              "freed = {}\n")
    for name, call in calls.items():
        script += ("step = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0))  # 30 programs more\n"
                   f"made = compile_programs(30)\ntry:\n    {call}\nexcept Exception:\n"
                   f"    pass\nfreed[{name!r}] = made - memory_maps()\n")
    script += "print(json.dumps(freed))\n"
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr[-3000:]
    freed = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(freed) == set(calls) and all(count > 30 for count in freed.values()), freed
    assert run.stderr.count("note: this process held ") == len(calls), run.stderr[-3000:]
    assert "more than half the kernel's limit (vm.max_map_count = " in run.stderr


def test_release_compiled_programs_only_past_its_limit():
    """Below its limit nothing is dropped; past it, the maps of the programs go (each program
    holds several: code, read-only data, data)."""
    result = script_result(
        PROGRAMS + "from lmscale.compiled_programs import release_compiled_programs\n"
        "import json\nmade = compile_programs(30)\nkept = release_compiled_programs(10 ** 9)\n"
        "after_kept = memory_maps()\nreleased = release_compiled_programs(0)\n"
        "print(json.dumps({'made': made, 'kept': kept, 'after_kept': after_kept,"
        " 'released': released, 'after': memory_maps()}))\n")
    assert result["kept"] == 0 and result["after_kept"] >= result["made"], result
    assert result["released"] >= result["made"] and result["after"] < result["made"] - 30, result


def test_the_counts_read_the_system(tmp_path: Path):
    assert memory_maps() > 0 and memory_maps(str(tmp_path / "none")) == 0
    (tmp_path / "limit").write_text("262144\n")
    assert max_map_count(str(tmp_path / "limit")) == 262144
    assert max_map_count(str(tmp_path / "none")) == 65530
