"""The tools' persistent compilation cache: where it lives, how it is turned off, and a second
run reading the training step back instead of compiling it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lmscale.compile_cache import (DEFAULT_MAX_MB, MIN_COMPILE_SECONDS, cache_folder,
                                   default_folder, max_size_bytes, stamp_unstamped_entries,
                                   use_compile_cache)
from lmscale.config import ConfigError
from tests.conftest import REPO, tiny_train_command


def test_folder_from_the_environment():
    assert cache_folder({"HOME": "/h"}) == default_folder({"HOME": "/h"})
    assert default_folder({"XDG_CACHE_HOME": "/x"}) == "/x/lmscale/xla"
    assert cache_folder({"LMSCALE_COMPILE_CACHE": "/c"}) == "/c"
    assert cache_folder({"LMSCALE_COMPILE_CACHE": "~/c"}) == os.path.expanduser("~/c")
    for off in ("off", "OFF", "0", "", "none"):
        assert cache_folder({"LMSCALE_COMPILE_CACHE": off}) is None
    # JAX's own variable wins: JAX reads it itself.
    assert cache_folder({"JAX_COMPILATION_CACHE_DIR": "/j", "LMSCALE_COMPILE_CACHE": "off"}) == "/j"


def test_off_and_an_unusable_folder_leave_the_cache_off(tmp_path, capsys):
    assert use_compile_cache({"LMSCALE_COMPILE_CACHE": "off"}) is None
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert use_compile_cache({"LMSCALE_COMPILE_CACHE": str(blocker / "xla")}) is None
    err = capsys.readouterr().err
    assert err.startswith("warning: no compilation cache") and "LMSCALE_COMPILE_CACHE" in err


def test_the_tools_cache_programs_from_a_quarter_second_unless_told_otherwise(tmp_path):
    """JAX writes only programs that took 1 s to compile; the tools' own floor is 0.25 s, and
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS, when set, is the user's and stays."""
    import jax
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_compilation_cache_max_size")
    before = {name: getattr(jax.config, name) for name in names}
    try:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        assert use_compile_cache({"LMSCALE_COMPILE_CACHE": str(tmp_path / "a")}) == str(tmp_path / "a")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == MIN_COMPILE_SECONDS == 0.25
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 3.0)  # as JAX read it
        use_compile_cache({"LMSCALE_COMPILE_CACHE": str(tmp_path / "b"),
                           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "3"})
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 3.0
    finally:
        for name, value in before.items():
            jax.config.update(name, value)


def _train(workdir, corpus, env) -> subprocess.CompletedProcess:
    return subprocess.run(tiny_train_command(workdir, corpus, **{"train.steps": 2}),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _env(cache, **variables: str) -> dict[str, str]:
    """This process's environment with the cache in ``cache`` (the session's JAX cache
    variables dropped) and ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    return {**env, "LMSCALE_COMPILE_CACHE": str(cache), **variables}


def test_a_second_run_reads_the_training_step_from_the_cache(tmp_path, corpus):
    cache = tmp_path / "cache"
    env = _env(cache, JAX_LOG_COMPILES="1",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")  # tiny programs compile fast
    first = _train(tmp_path / "a", corpus, env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert any(name.startswith("jit_train_step-") for name in os.listdir(cache))
    assert "cache hit for 'jit_train_step'" not in first.stderr
    second = _train(tmp_path / "b", corpus, env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Persistent compilation cache hit for 'jit_train_step'" in second.stderr


def test_the_size_cap_from_the_environment():
    assert max_size_bytes({}) == DEFAULT_MAX_MB * 2**20
    assert max_size_bytes({"LMSCALE_COMPILE_CACHE_MAX_MB": "0.5"}) == 2**19
    assert max_size_bytes({"LMSCALE_COMPILE_CACHE_MAX_MB": "unlimited"}) == -1
    assert max_size_bytes({"LMSCALE_COMPILE_CACHE_MAX_MB": "-1"}) == -1
    # JAX's own variable (bytes) wins.
    assert max_size_bytes({"JAX_COMPILATION_CACHE_MAX_SIZE": "1000",
                           "LMSCALE_COMPILE_CACHE_MAX_MB": "5"}) == 1000
    # JAX's own folder has no cap unless one is asked for (its uncapped writers: module doc).
    assert max_size_bytes({"JAX_COMPILATION_CACHE_DIR": "/j"}) == -1
    assert max_size_bytes({"JAX_COMPILATION_CACHE_DIR": "/j",
                           "LMSCALE_COMPILE_CACHE_MAX_MB": "0.5"}) == 2**19
    for bad in ("0", "lots", "-3", "nan", "inf", "1e400"):  # nan, inf: were tracebacks
        with pytest.raises(ConfigError, match="LMSCALE_COMPILE_CACHE_MAX_MB"):
            max_size_bytes({"LMSCALE_COMPILE_CACHE_MAX_MB": bad})


def test_a_bad_cap_is_one_line_from_a_tool(tmp_path):
    env = _env(tmp_path / "cache", LMSCALE_COMPILE_CACHE_MAX_MB="lots")
    done = subprocess.run([sys.executable, "-m", "lmscale.eval", f"--workdir={tmp_path}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: LMSCALE_COMPILE_CACHE_MAX_MB='lots': expected a positive number of MiB, or "
        "'unlimited'")


# Compiles six different programs, one after the other, in a fresh process with the cache on.
_COMPILE_SIX = """
import sys, warnings
warnings.simplefilter("error")  # a failed cache read or write is a warning in JAX
import numpy as np
import jax, jax.numpy as jnp
from lmscale.compile_cache import use_compile_cache
assert use_compile_cache() is not None
for k in range(6):
    jax.jit(lambda x, k=k: jnp.sin(x) * (k + 1) + jnp.cos(x) ** (k + 2))(np.ones(128 + k, np.float32)).block_until_ready()
"""


def _run_python(code: str, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def _entries(cache) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in cache.iterdir() if p.name.endswith("-cache")}


def test_the_cache_is_kept_under_its_cap_least_recently_used_first(tmp_path):
    cache = tmp_path / "cache"
    env = _env(cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               LMSCALE_COMPILE_CACHE_MAX_MB="unlimited")
    done = _run_python(_COMPILE_SIX, env)
    assert done.returncode == 0, done.stderr[-2000:]
    sizes = _entries(cache)
    assert len(sizes) == 6, sizes
    written = sorted(sizes, key=lambda name: (cache / name).stat().st_mtime_ns)
    # A cap that holds three to five of the six (their sizes differ with the XLA version and
    # flags): a second process evicts the oldest entries before writing, and never goes over
    # the cap.
    for p in cache.iterdir():
        p.unlink()
    cap = 3.5 * max(sizes.values())
    env["LMSCALE_COMPILE_CACHE_MAX_MB"] = str(cap / 2**20)
    done = _run_python(_COMPILE_SIX, env)
    assert done.returncode == 0, done.stderr[-2000:]
    kept = _entries(cache)
    assert 3 <= len(kept) <= 5 and sum(kept.values()) <= cap, (kept, cap)
    # Names are content keys, the same in both processes: the entries left are the last
    # ones written, and no more were evicted than the cap needed.
    assert set(kept) == set(written[-len(kept):]), (kept, written)
    assert sum(kept.values()) + sizes[written[-len(kept) - 1]] > cap, (kept, sizes, cap)


def test_a_folder_filled_without_a_cap_gets_access_times_and_stays_writable(tmp_path):
    from jax._src.compilation_cache import compress_executable  # as JAX writes an entry
    cache = tmp_path / "cache"
    cache.mkdir()
    entry = compress_executable(b"x" * 1000)
    (cache / "jit_old-0123-cache").write_bytes(entry)  # an entry from an uncapped run
    assert stamp_unstamped_entries(str(cache)) == 1
    assert (cache / "jit_old-0123-atime").stat().st_size == 8
    assert stamp_unstamped_entries(str(cache)) == 0
    (cache / "jit_older-4567-cache").write_bytes(entry)
    env = _env(cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    done = _run_python(_COMPILE_SIX, env)  # warnings are errors: no failed write
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(_entries(cache)) == 8
    assert (cache / "jit_older-4567-atime").exists()


def test_an_entry_cut_short_is_written_again(tmp_path):
    """JAX writes an entry in place, then its access time: a write cut short (a full disk, a
    kill) left an entry that failed to decompress at every later start ("Error reading
    persistent compilation cache entry", a warning: an error here) and was compiled anew
    each time, as JAX never writes a key it finds taken. It is removed at the next start."""
    cache = tmp_path / "cache"
    env = _env(cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    assert _run_python(_COMPILE_SIX, env).returncode == 0
    whole = _entries(cache)
    torn = max(whole, key=whole.get)
    data = (cache / torn).read_bytes()
    (cache / torn).write_bytes(data[:len(data) // 2])
    (cache / torn.replace("-cache", "-atime")).unlink()  # JAX had not got to it
    again = _run_python(_COMPILE_SIX, env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _entries(cache) == whole  # written whole again
    assert (cache / torn.replace("-cache", "-atime")).exists()


# With the cache in JAX's own folder, another (uncapped) JAX process writes an entry beside
# this one's before each of its compiles.
_COMPILE_BESIDE_AN_UNCAPPED_WRITER = """
import os, warnings
warnings.simplefilter("error")  # a failed cache write is a warning in JAX
import numpy as np
import jax, jax.numpy as jnp
from lmscale.compile_cache import use_compile_cache
folder = use_compile_cache()
for k in range(2):
    with open(os.path.join(folder, f"jit_other{k}-0123-cache"), "wb") as f:
        f.write(b"x" * 100)  # no access-time file: JAX writes none without a cap
    jax.jit(lambda x, k=k: jnp.sin(x) * (k + 1))(np.ones(64, np.float32)).block_until_ready()
"""


def test_jax_own_folder_stays_writable_beside_uncapped_jax_processes(tmp_path):
    """JAX_COMPILATION_CACHE_DIR is shared with every JAX process; with lmscale's default cap
    there, each write after an uncapped process's failed on the missing access-time file."""
    cache = tmp_path / "cache"
    env = _env(cache, JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("LMSCALE_COMPILE_CACHE_MAX_MB", None)  # no cap asked for
    done = _run_python(_COMPILE_BESIDE_AN_UNCAPPED_WRITER, env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(_entries(cache)) == 4  # both programs written, beside the other process's two


def test_an_entry_of_the_other_compression_is_kept_and_stamped(tmp_path):
    """A folder shared with a JAX of another environment (zstd where this one has zlib, or
    the reverse): its entries, unstamped when it runs without a cap, decompress here as
    garbage, yet are whole: they are stamped, not removed."""
    import zlib

    from jax._src import compilation_cache as cc
    uses_zstd = getattr(cc, "zstd", None) is not None or getattr(cc, "zstandard", None) is not None
    # a whole zstd frame (an empty payload: `zstd -c < /dev/null`), or a whole zlib stream
    other = (zlib.compress(b"x" * 1000) if uses_zstd
             else bytes.fromhex("28b52ffd240001000099e9d851"))
    (tmp_path / "jit_other-0-cache").write_bytes(other)
    assert stamp_unstamped_entries(str(tmp_path)) == 1
    assert (tmp_path / "jit_other-0-cache").read_bytes() == other


def test_an_entry_still_being_written_without_the_lock_is_not_removed(tmp_path):
    """A JAX process without a cap writes its entry without the folder's lock: read half
    written, it was removed and the writer's whole entry lost (written into the removed file)."""
    import threading

    from jax._src.compilation_cache import compress_executable
    data = compress_executable(os.urandom(300_000))
    entry = tmp_path / "jit_w-0-cache"
    with open(entry, "wb") as f:
        f.write(data[:len(data) // 2])
        f.flush()
        finish = threading.Timer(0.05, lambda: (f.write(data[len(data) // 2:]), f.flush()))
        finish.start()
        stamp_unstamped_entries(str(tmp_path))
        finish.join()
    assert entry.read_bytes() == data


def test_an_unmakeable_compile_cache_is_said_once(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    environ = {"LMSCALE_COMPILE_CACHE": str(blocker / "xla")}
    assert use_compile_cache(environ) is None
    assert use_compile_cache(environ) is None
    assert capsys.readouterr().err.count("warning: no compilation cache") == 1


# A container's arbitrary user id (OpenShift, `docker run --user`): no passwd entry.
_NO_PASSWD_ENTRY = """
import pwd
def getpwuid(uid):
    raise KeyError(f"getpwuid(): uid not found: {uid}")
pwd.getpwuid = getpwuid
"""


def test_a_user_id_without_a_name_keeps_no_capped_cache_and_says_so(tmp_path):
    """JAX's eviction (etils' stat) looks up each entry's owner by name: for a user id with
    no passwd entry every capped write after the first warned, and nothing more was cached."""
    code = _NO_PASSWD_ENTRY + _COMPILE_SIX.replace("assert use_compile_cache() is not None",
                                                   "use_compile_cache()")
    cache = tmp_path / "cache"
    done = _run_python(code, _env(cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: no compilation cache (user id "), lines
    assert "LMSCALE_COMPILE_CACHE_MAX_MB=unlimited" in lines[0]
    assert not _entries(cache)
    uncapped = _env(tmp_path / "uncapped", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    LMSCALE_COMPILE_CACHE_MAX_MB="unlimited")
    done = _run_python(_NO_PASSWD_ENTRY + _COMPILE_SIX, uncapped)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(_entries(tmp_path / "uncapped")) == 6


def test_a_user_id_without_a_name_turns_jaxs_own_capped_folder_off(tmp_path):
    """JAX_COMPILATION_CACHE_DIR with lmscale's cap: JAX reads its variable itself, so the
    "no compilation cache" warning must turn JAX's cache off too (it cached there anyway)."""
    cache = tmp_path / "jax"
    env = _env(cache, JAX_COMPILATION_CACHE_DIR=str(cache), LMSCALE_COMPILE_CACHE_MAX_MB="100",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    cache.mkdir()
    code = _NO_PASSWD_ENTRY + _COMPILE_SIX.replace("assert use_compile_cache() is not None",
                                                   "assert use_compile_cache() is None")
    done = _run_python(code, env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.startswith("warning: no compilation cache (user id "), done.stderr[-2000:]
    assert not _entries(cache)

def test_no_home_folder_makes_no_tilde_folder(tmp_path, monkeypatch, capsys):
    """HOME unset and no passwd entry: ``~`` stays unexpanded, and the cache was made in
    ``./~/.cache/lmscale/xla`` under whatever folder the tool ran in."""
    import pwd
    import jax

    def getpwuid(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    monkeypatch.chdir(tmp_path)
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_compilation_cache_max_size")
    before = {name: getattr(jax.config, name) for name in names}
    try:
        assert use_compile_cache({}) is None
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
    assert not (tmp_path / "~").exists()
    err = capsys.readouterr().err
    assert err.startswith("warning: no compilation cache (no home folder") and "HOME" in err


def test_a_tilde_in_jaxs_own_variable_makes_no_tilde_folder(tmp_path):
    """JAX_COMPILATION_CACHE_DIR=~/jc (an env file's, a Dockerfile's ENV: nothing expands it):
    lmscale said "no compilation cache" (HOME unset and no passwd entry, neither true) while
    JAX, reading its variable itself, cached in ./~/jc of the working folder, uncapped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(JAX_COMPILATION_CACHE_DIR="~/jc", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    code = _COMPILE_SIX.replace("assert use_compile_cache() is not None",
                                "assert use_compile_cache() is None")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (tmp_path / "~").exists()
    assert done.stderr.startswith("warning: no compilation cache (JAX_COMPILATION_CACHE_DIR=~/jc "
                                  "is a path as it is"), done.stderr[-2000:]
