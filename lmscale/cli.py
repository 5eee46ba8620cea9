"""Shared command-line behaviour: known input errors become one line on stderr and exit 1."""

from __future__ import annotations

import re
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


# Exit status of a training tool whose parameters stopped being finite (``DivergedError``), so
# that a caller (the sweep runner) tells a diverged run from a failed one.
EXIT_DIVERGED = 3


def run_cli(fn: Callable[[], T]) -> T:
    """Calls ``fn``; a user error (bad data, config or workdir) prints ``error: ...`` and exits 1
    (``EXIT_DIVERGED`` for a run whose parameters stopped being finite).

    Turns on the persistent compilation cache first (``lmscale.compile_cache``)."""
    from lmscale.compile_cache import use_compile_cache
    from lmscale.config import ConfigError
    from lmscale.data.errors import DataError
    from lmscale.training.checkpoints import CheckpointError
    _quiet_library_logs()
    try:
        use_compile_cache()
        return fn()
    except (ConfigError, DataError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(getattr(e, "exit_status", 1))


def _quiet_library_logs() -> None:
    """Orbax logs every checkpoint step at INFO; show warnings only unless --verbosity is given."""
    from absl import flags, logging
    if "verbosity" in flags.FLAGS and not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def _check_config_values(flag_values: object) -> None:
    """A config file whose ``get_config()`` returns something else than a ConfigDict (a dict,
    None) is one error line, not an AttributeError at the config's first use."""
    import ml_collections
    for name in list(flag_values):
        flag = flag_values[name]
        if type(flag.parser).__name__ != "ConfigFileFlagParser" or flag.value is None:
            continue
        if not isinstance(flag.value, ml_collections.ConfigDict):
            print(f"error: --{name}={flag.serialize().split('=', 1)[-1]}: get_config() returned "
                  f"a {type(flag.value).__name__}, not an ml_collections.ConfigDict (start from "
                  f"lmscale.config.default_config() and end with c.lock())", file=sys.stderr)
            sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing where a bad flag or config override is one line on stderr, exit 1.

    Pass as ``app.run(main, flags_parser=parse_flags)``. Typos in ``--config.a.b=V`` fail
    here (the config is locked) with ml_collections' "did you mean" hint.
    """
    from absl import flags
    try:
        rest = flags.FLAGS(argv)
        for name in list(flags.FLAGS):
            # A config file that failed to load: ml_collections keeps the error for the first
            # use of the config, where it surfaced as two tracebacks.
            failed = getattr(flags.FLAGS[name].value, "_error", None)
            if isinstance(failed, Exception):
                reason = str(failed).strip().splitlines()[-1].strip()
                print(f"error: --{name}: {reason}", file=sys.stderr)
                sys.exit(1)
        _check_config_values(flags.FLAGS)
        return rest
    except (AttributeError, KeyError) as e:  # unknown key in a locked ConfigDict
        text = str(e.args[0] if e.args else e).replace("\\", "")
        # ml_collections quotes the key: Key "hiden" ..., or "'nosuch'" for a top-level one.
        found = (re.search(r"Attribute <class '[^']+'>\.(\S+) does not exist", text)  # a.int.x
                 or re.search(r"""Key\s+["']+([^"'\s]+)["']+""", text)
                 or re.search(r"""["']+([^"'\s]+)["']+""", text))
        key = found.group(1) if found else text.split()[0]
        mean = re.search(r'Did you mean "[^"]+" instead of "[^"]+"\?', text)
        hint = mean.group(0) if mean else ""
        culprit = [a for a in argv[1:] if f".{key}=" in a or a.endswith(f".{key}")]
        where = f" in {culprit[0]}" if culprit else ""
        print(f"error: unknown config key {key!r}{where}" + (f". {hint}" if hint else ""),
              file=sys.stderr)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
    except Exception as e:  # config file that fails to load, bad override value, ...
        print(f"error: {type(e).__name__}: {e}".replace("\n", " "), file=sys.stderr)
    sys.exit(1)
