"""JAX's persistent compilation cache for the command-line tools.

A tool's first steps are mostly XLA compiling its programs (the training and evaluation
steps, featurizing, decoding). With the cache on, a program compiled once is read back from
disk by every later process that builds the same one: a resumed or relaunched run, a sweep's
next point of the same shapes, the next ``lmscale.transfer`` on the same LM. On the 2-core CI
machine the quickstart's training step compiled in 4.4 s and was read back in 0.7 s
(``benchmarks/README.md``, "Compilation cache").

The folder is, in order: ``JAX_COMPILATION_CACHE_DIR`` when set (JAX reads it itself);
``LMSCALE_COMPILE_CACHE`` ("off" turns the cache off); else ``$XDG_CACHE_HOME/lmscale/xla``
(``~/.cache/lmscale/xla``). JAX keys each entry by the program, its devices and compile
options, and the jax/jaxlib versions, and caches only programs that took at least
``jax_persistent_cache_min_compile_time_secs`` to compile: JAX's default is 1 s, the tools
set 0.25 s (``MIN_COMPILE_SECONDS``) unless ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``
is set, since many of their programs (a fine-tune's steps, the decoding loop, the
initialization) compile in 0.3-1 s on a CPU and are read back in a few ms: a warm
``lmscale.finetune`` ran about 2 s sooner (``benchmarks/README.md``, "Start-up").

The folder is kept under a size cap, least recently used entries evicted first (JAX's own
LRU eviction, which locks the folder with ``filelock`` so that concurrent processes, e.g. a
sweep's points, neither write one entry twice nor evict under each other): 2048 MiB, or
``LMSCALE_COMPILE_CACHE_MAX_MB`` ("unlimited" or -1 for none), or JAX's own
``JAX_COMPILATION_CACHE_MAX_SIZE`` in bytes, which wins. An entry is one compiled program (the
quickstart's training step: 150 KiB on CPU). JAX's own folder (``JAX_COMPILATION_CACHE_DIR``)
gets no cap unless one of the two variables sets it: every JAX process writes there, and one
without a cap writes no access-time file, on which JAX's eviction, and so each capped write,
fails ("Error writing persistent compilation cache entry"), until the next start stamps them.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Mapping

OFF = ("", "0", "off", "false", "no", "none")
DEFAULT_MAX_MB = 2048
MIN_COMPILE_SECONDS = 0.25  # programs compiled faster than this are not written (module doc)
UNLIMITED = ("unlimited", "-1")
TORN_RECHECK_SECONDS = 0.25  # an entry that reads as cut short is stat'ed again after it
_STAMPED: set[str] = set()  # folders this process has stamped (the tools may call twice)
_WARNED: set[str] = set()  # folders this process has said it cannot make


def default_folder(environ: Mapping[str, str] = os.environ) -> str:
    """``$XDG_CACHE_HOME/lmscale/xla``, or ``~/.cache/lmscale/xla``."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lmscale", "xla")


def cache_folder(environ: Mapping[str, str] = os.environ) -> str | None:
    """The folder the tools cache compiled programs in (module doc), None when off."""
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return environ["JAX_COMPILATION_CACHE_DIR"]
    folder = environ.get("LMSCALE_COMPILE_CACHE")
    if folder is None:
        return default_folder(environ)
    return None if folder.strip().lower() in OFF else os.path.expanduser(folder)


def max_size_bytes(environ: Mapping[str, str] = os.environ) -> int:
    """The cache's size cap in bytes (module doc); -1 for none."""
    if environ.get("JAX_COMPILATION_CACHE_MAX_SIZE"):
        return int(environ["JAX_COMPILATION_CACHE_MAX_SIZE"])
    if "LMSCALE_COMPILE_CACHE_MAX_MB" not in environ and environ.get("JAX_COMPILATION_CACHE_DIR"):
        return -1  # JAX's own folder, shared with uncapped JAX processes (module doc)
    value = environ.get("LMSCALE_COMPILE_CACHE_MAX_MB", str(DEFAULT_MAX_MB)).strip().lower()
    if value in UNLIMITED:
        return -1
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = -1.0
    if not 0 < megabytes < float("inf"):  # nan, inf (a traceback converting it to bytes)
        from lmscale.config import ConfigError
        raise ConfigError(f"LMSCALE_COMPILE_CACHE_MAX_MB={value!r}: expected a positive number "
                          f"of MiB, or 'unlimited'")
    return int(megabytes * 2**20)


def stamp_unstamped_entries(folder: str) -> int:
    """Gives every entry without an access-time file one (its modification time); returns how
    many. JAX's eviction reads an ``-atime`` file beside each ``-cache`` entry and writes it
    only when eviction is on, so a folder filled without a cap (lmscale before the cap, or JAX
    run on its own) would otherwise make every later write fail.

    JAX writes an entry in place, then its access time: an entry without one may also be a
    write cut short (a full disk, a kill). Such an entry does not decompress, and JAX, finding
    its key taken, never writes it again: every later start warned "Error reading persistent
    compilation cache entry" and compiled the program anew. It is removed instead, so the
    next compile writes it whole."""
    unstamped = [os.path.join(folder, name) for name in os.listdir(folder)
                 if name.endswith("-cache")
                 and not os.path.exists(os.path.join(folder, name[:-len("-cache")] + "-atime"))]
    if not unstamped:
        return 0
    # Checked before taking the lock (reading and decompressing 1 GiB took ~17 s on the CI
    # machine, while JAX's readers and writers of the folder wait at most 10 s for it); an
    # entry is then removed or stamped under the lock only if still unstamped and unchanged.
    checked = []
    for entry in unstamped:
        try:
            st = os.stat(entry)
            checked.append((entry, (st.st_size, st.st_mtime_ns), _torn(entry)))
        except OSError:  # removed meanwhile by another process's eviction
            continue
    if any(torn for _, _, torn in checked):
        # A JAX process without a cap writes an entry without the lock: one it is still
        # writing reads as cut short, but grows meanwhile (checked again under the lock).
        time.sleep(TORN_RECHECK_SECONDS)
    import filelock
    try:  # JAX's own lock of the folder: an entry another process is writing is not read
        lock = filelock.FileLock(os.path.join(folder, ".lockfile"), timeout=10)
        lock.acquire()
    except (filelock.Timeout, OSError):  # left for a later start
        return 0
    stamped = 0
    try:
        for entry, identity, torn in checked:
            atime = entry[:-len("-cache")] + "-atime"
            try:
                st = os.stat(entry)
                if os.path.exists(atime) or (st.st_size, st.st_mtime_ns) != identity:
                    continue  # written meanwhile
                if torn:
                    os.remove(entry)
                    continue
                with open(atime, "wb") as f:
                    f.write(st.st_mtime_ns.to_bytes(8, "little"))
                stamped += 1
            except OSError:  # removed meanwhile by another process's eviction
                continue
    finally:
        lock.release()
    return stamped


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _torn(entry: str) -> bool:
    """Whether a cache entry fails to decompress as JAX reads it (a write cut short). An
    entry in the other compression (written by a JAX with zstd where this one has only
    zlib, or the reverse: another environment sharing the folder) is not this JAX's to
    judge, and is kept."""
    try:
        from jax._src import compilation_cache as cc
        decompress_executable = cc.decompress_executable
    except (ImportError, AttributeError):  # JAX's layout changed: keep every entry
        return False
    with open(entry, "rb") as f:
        data = f.read()
    if not data:
        return True
    uses_zstd = getattr(cc, "zstd", None) is not None or getattr(cc, "zstandard", None) is not None
    is_zstd = data[:4] == _ZSTD_MAGIC
    is_zlib = len(data) >= 2 and (data[0] & 0x0F) == 8 and (data[0] << 8 | data[1]) % 31 == 0
    if not (is_zstd if uses_zstd else is_zlib):
        return len(data) < 4 and (uses_zstd or len(data) < 2)  # too short to say: cut short
    try:
        decompress_executable(data)
    except Exception:  # zstd's and zlib's errors alike
        return True
    return False


def _no_cache(folder: str, why: str,
              fix: str = "set LMSCALE_COMPILE_CACHE to another folder, or to off") -> None:
    """Says once why there is no cache in ``folder`` (the tools call ``use_compile_cache``
    before each of their steps)."""
    if folder not in _WARNED:
        _WARNED.add(folder)
        print(f"warning: no compilation cache ({why}); {fix}", file=sys.stderr)
    return None


def _nameless_owner(folder: str) -> str | None:
    """A user or group id with no name (no passwd or group entry, as a container's arbitrary
    user id has), among this process's and the owners of ``folder``'s entries; else None.
    JAX's eviction stats every entry with etils, which looks its owner's names up: a KeyError
    on such an id, so every capped write after the first failed with a warning."""
    try:
        from jax._src import path as jax_path
        import grp
        import pwd
    except ImportError:  # not a POSIX system, or JAX's layout changed
        return None
    if not getattr(jax_path, "epath_installed", True):  # pathlib's stat names no owner
        return None
    owners = {(os.geteuid(), os.getegid())}
    for entry in os.scandir(folder):
        try:
            if entry.name.endswith("-cache"):
                st = entry.stat()
                owners.add((st.st_uid, st.st_gid))
        except OSError:  # removed meanwhile by another process's eviction
            continue
    for uid, gid in sorted(owners):
        for what, number, lookup in (("user", uid, pwd.getpwuid), ("group", gid, grp.getgrgid)):
            try:
                lookup(number)
            except KeyError:
                return f"{what} id {number}"
    return None


def use_compile_cache(environ: Mapping[str, str] = os.environ) -> str | None:
    """Turns the cache on for this process (before its first compile), with its size cap;
    returns its folder, or None when it is off or its folder cannot be made (then a one-line
    warning). A bad ``LMSCALE_COMPILE_CACHE_MAX_MB`` raises ConfigError naming it (the tools:
    one line, exit 1)."""
    import jax
    folder = cache_folder(environ)
    if folder is None:
        return None
    if folder.startswith("~"):  # not a folder in the cwd (JAX's own: made and used by JAX)
        if jax.config.jax_compilation_cache_dir == folder:  # JAX's own variable: JAX set it
            jax.config.update("jax_enable_compilation_cache", False)
        if environ.get("JAX_COMPILATION_CACHE_DIR") == folder:  # taken as it is, unexpanded
            return _no_cache(folder, f"JAX_COMPILATION_CACHE_DIR={folder} is a path as it is: "
                                     f"JAX expands no '~'",
                             "give JAX_COMPILATION_CACHE_DIR as an absolute path, or unset it")
        return _no_cache(folder, f"no home folder for {folder}: HOME is unset and user id "
                                 f"{os.getuid()} has no passwd entry")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        return _no_cache(folder, str(e))
    max_size = max_size_bytes(environ)
    nameless = _nameless_owner(folder) if max_size != -1 else None
    if nameless:
        if jax.config.jax_compilation_cache_dir == folder:  # JAX's own variable: JAX set it
            jax.config.update("jax_enable_compilation_cache", False)
        return _no_cache(folder, f"{nameless} has no name, which the size cap needs: JAX's "
                                 f"eviction looks up each entry's owner",
                         "set LMSCALE_COMPILE_CACHE_MAX_MB=unlimited for an uncapped cache, "
                         "or LMSCALE_COMPILE_CACHE=off")
    if max_size != -1 and folder not in _STAMPED:
        stamp_unstamped_entries(folder)
        _STAMPED.add(folder)
    if jax.config.jax_compilation_cache_max_size != max_size:
        jax.config.update("jax_compilation_cache_max_size", max_size)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    if jax.config.jax_compilation_cache_dir != folder:
        jax.config.update("jax_compilation_cache_dir", folder)
    return folder
