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
``jax_persistent_cache_min_compile_time_secs`` (1 s by default) to compile. Nothing is ever
evicted: remove the folder to reclaim its space.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping

OFF = ("", "0", "off", "false", "no", "none")


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


def use_compile_cache(environ: Mapping[str, str] = os.environ) -> str | None:
    """Turns the cache on for this process (before its first compile); returns its folder,
    or None when it is off or its folder cannot be made (then a one-line warning)."""
    import jax
    folder = cache_folder(environ)
    if folder is None:
        return None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        print(f"warning: no compilation cache ({e}); set LMSCALE_COMPILE_CACHE to another "
              f"folder, or to off", file=sys.stderr)
        return None
    if jax.config.jax_compilation_cache_dir != folder:
        jax.config.update("jax_compilation_cache_dir", folder)
    return folder
