"""Shared command-line behaviour: known input errors become one line on stderr and exit 1."""

from __future__ import annotations

import codecs
import contextlib
import errno
import io
import os
import re
import sys
from typing import Any, Callable, Iterator, TypeVar

from lmscale import messages

T = TypeVar("T")


# Exit status of a training tool whose parameters stopped being finite (``DivergedError``), so
# that a caller (the sweep runner) tells a diverged run from a failed one.
EXIT_DIVERGED = 3

# OSErrors of writing that are the machine's state, not a bug: one line naming the file.
_WRITE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EFBIG: "a file outgrew the file-size limit (ulimit -f) or the file system's",
                 errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                 errno.ENAMETOOLONG: "a name is too long"}


class OutputError(Exception):
    """A folder a tool writes to cannot take files; the message says which and what to do."""


def nearest_existing(path: str) -> str:
    """``path`` made absolute, or its nearest parent that exists (where it would be made)."""
    found = os.path.abspath(path)
    while not os.path.exists(found) and os.path.dirname(found) != found:
        found = os.path.dirname(found)
    return found


def writable_folder(path: str, hint: str, create: bool = False, own: bool = False) -> str:
    """Checks, before any work, that files can be written in the folder ``path`` (not there
    yet: in its nearest existing parent, where it would be made; ``create``: made now); else
    OutputError: ``cannot write in PATH (cause); HINT``. ``own``: a folder of the tool's own
    files (transfer's, generate's): no link among its files may lead a write out
    (:func:`refuse_links_out`; its subfolders are not the tool's). Returns ``path``."""
    import tempfile
    if own:
        refuse_links_out(path, recursive=False)
    try:
        if create:
            os.makedirs(path, exist_ok=True)
        probe_in = nearest_existing(path)
        if not os.path.isdir(probe_in):
            raise NotADirectoryError(errno.ENOTDIR, f"{probe_in} is not a folder")
        fd, probe = tempfile.mkstemp(dir=probe_in, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        if isinstance(e, FileExistsError) or e.errno in _WRITE_ERRNOS or e.errno == errno.ENOTDIR:
            cause = e.strerror or str(e)
            raise OutputError(f"cannot write in {path} ({cause}); {hint}") from None
        raise
    return path


def refuse_links_out(folder: str, recursive: bool = True,
                     error: type[Exception] = OutputError) -> None:
    """``error`` (OutputError; a workdir's CheckpointError, a sweep's SweepError) where a file
    in ``folder``, a folder whose files lmscale names (a workdir, its transfer/, generate/,
    features/), is a symbolic link to a file outside it, which a write would replace
    (``lmscale.atomic.links_out_of``; ``recursive`` False: the folder's own files, not its
    subfolders')."""
    from lmscale.atomic import links_out_of
    found = links_out_of(folder, recursive) if os.path.isdir(folder) else []
    if found:
        link, target = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise error(f"{link} is a symbolic link to {target}, outside {folder}{more}: "
                    f"writing it would write that file (a run folder from elsewhere may carry "
                    f"such links); remove the link, or copy the file in its place")


def os_error_line(e: OSError) -> str:
    """``the disk is full writing FILE (No space left on device): ...`` and the like."""
    name = e.filename
    if isinstance(name, str):
        # an atomic write's temporary file; a long name's begins cut short (atomic.marked_name)
        name = re.sub(r"(~[0-9a-f]{16})?\.tmp-(?:[^/]+-)?\d+(\.npy)?$",
                      lambda m: "..." if m[1] else "", name)
    cause = (e.strerror or os.strerror(e.errno)) if e.errno else str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        where = f" writing {name}" if name else ""
        remedy = "raise the limit" if e.errno == errno.EFBIG else "free some space"
        return (f"{_WRITE_ERRNOS[e.errno]}{where} ({cause}): {remedy} or write "
                f"elsewhere, and run again")
    if name is None:
        return f"{_WRITE_ERRNOS.get(e.errno, 'error')} ({cause})"
    return f"cannot {'write' if e.errno == errno.EROFS else 'access'} {name} ({cause})"


def _memory_advice() -> str:
    """What to lower when this tool runs out of memory: ``--batch_size`` where it sizes the
    batches (eval, classify, transfer), nothing in convert (its --batch_size is a written
    workdir's setting: it holds the weights whole), else the training settings."""
    from absl import flags
    if "src" in flags.FLAGS and "layout" in flags.FLAGS:  # lmscale.convert
        return "converting holds the weights whole: run it on a host with more memory"
    if "batch_size" in flags.FLAGS and "config" not in flags.FLAGS:
        return "lower --batch_size"
    return ("lower train.batch_size or the model's size, or recompute activations "
            "(model.remat); `python -m lmscale.plan --config=... --memory_gib=N` says what fits")


def out_of_memory_line(e: BaseException) -> str | None:
    """One line for XLA's "RESOURCE_EXHAUSTED: Out of memory" (a JaxRuntimeError traceback,
    e.g. a state that fits the host but not what ``ulimit -v`` leaves), naming the memory and
    what to lower (``_memory_advice``); None for any other error."""
    text = " ".join(str(e).split())
    if "RESOURCE_EXHAUSTED" not in text or "Out of memory" not in text:
        return None
    import resource
    import jax
    platform = jax.devices()[0].platform
    where = "this host's memory" if platform == "cpu" else f"the {platform} device's memory"
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    limit = ("" if platform != "cpu" or soft == resource.RLIM_INFINITY else
             f" (this process may map at most {soft / 2 ** 30:.1f} GiB: ulimit -v)")
    return (f"out of memory ({text[:160]}): the run does not fit {where}{limit}; "
            f"{_memory_advice()}")


def refuse_closed_stdout(what: str, instead: str) -> None:
    """Before any work: OutputError where standard output is closed (``>&-``) and the tool's
    product (``what``: "... goes there") is written there; Python's print wrote nothing, and
    the tool exited 0 with its result lost. ``instead``: where the result can go."""
    if sys.stdout is None:
        raise OutputError(f"standard output is closed (>&-) and {what}: {instead}")


@contextlib.contextmanager
def reader_may_leave() -> Iterator[None]:
    """Around what a tool prints to standard output once its work is done (a result, samples,
    a table): a reader that leaves early (``| head -c 10``, ``| true``) ends the output, not
    the tool, as for any filter (``classify --output=-`` does the same); the output was a
    BrokenPipeError traceback and exit status 1, the run's files all written."""
    try:
        yield
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:  # stdout to /dev/null: the interpreter's last flush raises nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run_cli(fn: Callable[[], T]) -> T:
    """Calls ``fn``; a user error (bad data, config or workdir) prints ``error: ...`` and exits 1
    (``EXIT_DIVERGED`` for a run whose parameters stopped being finite); Ctrl-C prints one
    line and exits 130.

    Turns on the persistent compilation cache first (``lmscale.compile_cache``)."""
    from lmscale.compile_cache import use_compile_cache
    from lmscale.config import ConfigError
    from lmscale.data.errors import DataError
    from lmscale.models.interface_check import ModelInterfaceError
    from lmscale.models.registry import UnknownModelKind
    from lmscale.training.checkpoints import CheckpointError
    _quiet_library_logs()
    try:
        use_compile_cache()
        with messages.command_line():
            return fn()
    except (ConfigError, DataError, CheckpointError, FileNotFoundError, OutputError,
            UnknownModelKind, ModelInterfaceError) as e:
        print(f"error: {e}", file=sys.stderr)
        if getattr(e, "exit_at_once", False):  # library threads stuck waiting for other processes
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(getattr(e, "exit_status", 1))
        sys.exit(getattr(e, "exit_status", 1))
    except OSError as e:  # a full disk, a read-only or forbidden folder: one line, exit 1
        if e.errno not in _WRITE_ERRNOS:
            raise
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        sys.exit(1)
    except RuntimeError as e:  # jax.errors.JaxRuntimeError: an allocation XLA was refused
        line = out_of_memory_line(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:  # Ctrl-C: was a traceback through JAX's frames
        if type(e) is not KeyboardInterrupt:  # a training tool's SignalExit: cli_signals says it
            raise
        print("interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)


def _quiet_library_logs() -> None:
    """Orbax logs every checkpoint step at INFO; show warnings only unless --verbosity is given."""
    from absl import flags, logging
    if "verbosity" in flags.FLAGS and not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


_JSON_PARSER: type | None = None


def _load_source(module_name: str, module_path: str) -> Any:
    """``module_path`` executed as module ``module_name`` (what ml_collections' own
    ``_load_source`` does with the deprecated ``load_module``)."""
    import importlib.util
    import importlib.machinery
    # the loader given: a file not named .py (configs/x.cfg) was loaded by SourceFileLoader,
    # and spec_from_file_location finds no loader for it
    spec = importlib.util.spec_from_file_location(
        module_name, module_path,
        loader=importlib.machinery.SourceFileLoader(module_name, module_path))
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load config file {module_path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:  # as importlib (and load_module) do: no half-run module left behind
        sys.modules.pop(module_name, None)
        raise
    return module


def _json_config_parser() -> type:
    """A ConfigFileFlagParser that also takes a run's saved ``config.json``."""
    global _JSON_PARSER
    if _JSON_PARSER is None:
        from ml_collections.config_flags import config_flags
        if getattr(config_flags, "_load_source", None) is not None:
            # ml_collections loads a config file with SourceFileLoader.load_module(), deprecated
            # since Python 3.10 (a DeprecationWarning at every --config=FILE.py) and slated for
            # removal: the same load through exec_module.
            config_flags._load_source = _load_source

        class ConfigFileOrJsonParser(config_flags.ConfigFileFlagParser):
            """``--config=configs/NAME.py`` as ml_collections loads it, or ``--config=WORKDIR/
            config.json``: the resolved config a run saved (``lmscale.config.load_config``), its
            ``derived`` section (values the run worked out, recorded) not applied."""

            def parse(self, path: str) -> object:
                if not str(path).lower().endswith(".json"):
                    return _with_kind_settings(super().parse(path), f"--{self.name}.model.")
                from lmscale.config import load_config
                if not os.path.isfile(path):
                    raise ValueError(f"{path}: no such file")
                try:
                    config, _derived = load_config(path)
                except (AttributeError, TypeError):  # JSON, but not an object of sections
                    raise ValueError(f"{path} is not a config.json written by lmscale (a JSON "
                                     f"object of config sections)") from None
                return _with_kind_settings(config, f"--{self.name}.model.")

        _JSON_PARSER = ConfigFileOrJsonParser
    return _JSON_PARSER


def recorded_run(flag: str = "config") -> tuple[str, dict[str, Any]] | None:
    """(path, ``derived`` section) of the run's config.json that ``--flag`` names (the values
    the run worked out, which the parsed config leaves out); None for a config file."""
    from absl import flags
    from ml_collections.config_flags import config_flags
    path = str(config_flags.get_config_filename(flags.FLAGS[flag]))
    if not path.lower().endswith(".json"):
        return None
    from lmscale.config import load_config
    return path, load_config(path)[1]


_ARGV: list[str] = []  # the command line parse_flags reads (the config parser looks at it)


def _with_kind_settings(config: object, prefix: str) -> object:
    """The fields of a kind of one's own (its ``ModelKind.settings``) that a ``--config.model.
    NAME=`` override sets and the config file did not add, added at their defaults for the
    override to apply (ml_collections refused a field the locked config lacks). Plugins are
    imported only then: a config file still loads without JAX."""
    import ml_collections
    model = config.get("model") if isinstance(config, ml_collections.ConfigDict) else None
    named = {a[len(prefix):].split("=", 1)[0] for a in _ARGV if a.startswith(prefix)}
    missing = {n for n in named if "." not in n} - set(model or ())
    if not missing or model is None:
        return config
    from lmscale.models.registry import get_kind, load_plugins, model_kinds
    load_plugins()
    kinds = [a.split("=", 1)[1] for a in _ARGV if a.startswith(f"{prefix}kind=")]
    kind = kinds[-1] if kinds else model.get("kind")  # its own settings' defaults win
    order = [k for k in model_kinds() if k != kind] + ([kind] if kind in model_kinds() else [])
    settings = {k: v for name in order for k, v in get_kind(name).settings.items()}
    with config.unlocked():
        for name in sorted(missing & set(settings)):
            model[name] = settings[name]
    return config


def _accept_json_configs(flag_values: object) -> None:
    """Every config-file flag (``--config``) also takes a run's config.json."""
    from ml_collections.config_flags import config_flags
    for name in list(flag_values):
        flag = flag_values[name]
        if type(flag.parser) is config_flags.ConfigFileFlagParser:
            flag.parser = _json_config_parser()(flag.parser.name, flag.parser._lock_config)


def _check_config_values(flag_values: object) -> None:
    """A config file whose ``get_config()`` returns something else than a ConfigDict (a dict,
    None) is one error line, not an AttributeError at the config's first use."""
    import ml_collections
    from ml_collections.config_flags import config_flags
    for name in list(flag_values):
        flag = flag_values[name]
        if not isinstance(flag.parser, config_flags.ConfigFileFlagParser) or flag.value is None:
            continue
        if not isinstance(flag.value, ml_collections.ConfigDict):
            print(f"error: --{name}={flag.serialize().split('=', 1)[-1]}: get_config() returned "
                  f"a {type(flag.value).__name__}, not an ml_collections.ConfigDict (start from "
                  f"lmscale.config.default_config() and end with c.lock())", file=sys.stderr)
            sys.exit(1)


# The tools' flags and config fields that name files or folders. A shell leaves "~" in
# "--workdir=~/runs/x" as it is (only an argument starting with it is expanded): the run
# went to ./~/runs/x, and inputs were found (sources.py expands them) while outputs were not.
PATH_FLAGS = ("workdir", "output", "input", "data", "train", "val", "test", "to", "src", "out",
              "json", "sp_model", "sweep", "transfer_train", "transfer_val", "transfer_test",
              "features_dir")
PATH_FIELDS = ("init_from", "data.train", "data.val", "data.test", "data.sp_model",
               "finetune.train", "finetune.val", "finetune.test")


def _expand_home(FLAGS: Any) -> None:
    """``~`` and ``~user`` at the start of a path flag or config field: the home folder."""
    home = lambda v: os.path.expanduser(v) if isinstance(v, str) and v.startswith("~") else v
    for name in PATH_FLAGS:
        if name in FLAGS and FLAGS[name].value is not None:
            value = FLAGS[name].value
            expanded = [home(v) for v in value] if isinstance(value, list) else home(value)
            if expanded != value:
                FLAGS[name].value = expanded
    config = FLAGS["config"].value if "config" in FLAGS else None
    for field in PATH_FIELDS if config is not None else ():
        section, _, name = field.rpartition(".")
        holder = config[section] if section else config
        if name in holder and home(holder[name]) != holder[name]:
            holder[name] = home(holder[name])


PARENT_ENV = "LMSCALE_DIE_WITH_PARENT"  # a sweep's pid, in the environment of its trainers


def die_with_parent() -> None:
    """A tool started by a sweep (``LMSCALE_DIE_WITH_PARENT``: the sweep's pid) gets SIGTERM
    when the sweep process dies (Linux's PR_SET_PDEATHSIG), so a trainer saves and stops. Asked
    for here, by the tool itself: the sweep's ``preexec_fn`` ran Python between fork and exec
    in its multithreaded process (JAX warned of a deadlock at every point). A sweep that died
    before this ends the tool at once; the variable is not passed on to the tool's children."""
    parent = os.environ.pop(PARENT_ENV, None)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:  # reparented: the sweep is gone
        print("error: the sweep that started this tool has ended", file=sys.stderr)
        sys.exit(1)


def _escape_unencodable(error: UnicodeError) -> tuple[str, int]:
    """A codec error handler: lone surrogates (bytes of a path or argument that the locale
    could not decode) written back as those bytes, any other character that the stream's
    encoding lacks as a backslash escape (``\\xe9``)."""
    try:
        return codecs.lookup_error("surrogateescape")(error)
    except UnicodeError:
        return codecs.lookup_error("backslashreplace")(error)


def tolerant_output_streams() -> None:
    """Standard output and error that cannot fail on a character: under an ASCII locale
    (``LC_ALL=C`` with ``PYTHONUTF8=0``) or ``PYTHONIOENCODING=ascii``, a generated text, a
    path or a corpus line with "é" raised UnicodeEncodeError (a traceback) from ``print``;
    it is escaped instead. Files are written as UTF-8 whatever the locale."""
    codecs.register_error("lmscale_escape", _escape_unencodable)
    for stream in (sys.stdout, sys.stderr):
        if messages.is_utf8(getattr(stream, "encoding", None)) or not hasattr(stream,
                                                                           "reconfigure"):
            continue
        with contextlib.suppress(ValueError, io.UnsupportedOperation, AttributeError):
            stream.reconfigure(errors="lmscale_escape")


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing where a bad flag or config override is one line on stderr, exit 1.

    Pass as ``app.run(main, flags_parser=parse_flags)``. Typos in ``--config.a.b=V`` fail
    here (the config is locked) with ml_collections' "did you mean" hint. ``--config`` also
    takes a run's saved ``WORKDIR/config.json`` (its ``derived`` section is not applied).
    """
    from absl import flags
    import signal
    die_with_parent()
    tolerant_output_streams()
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background by a script (its shell ignores SIGINT for `&` jobs): a
        # `kill -INT` or the script's Ctrl-C would not stop the tool. Training and fine-tuning
        # install their own handlers before this (early_signals, training.stop).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _accept_json_configs(flags.FLAGS)
        _ARGV[:] = argv
        try:
            rest = flags.FLAGS(argv)
        finally:
            _ARGV.clear()  # a later parse of another command line does not see this one
        for name in list(flags.FLAGS):
            # A config file that failed to load: ml_collections keeps the error for the first
            # use of the config, where it surfaced as two tracebacks.
            failed = getattr(flags.FLAGS[name].value, "_error", None)
            if isinstance(failed, Exception):
                reason = str(failed).strip().splitlines()[-1].strip()
                print(f"error: --{name}: {reason}", file=sys.stderr)
                sys.exit(1)
        _check_config_values(flags.FLAGS)
        _expand_home(flags.FLAGS)
        _quiet_library_logs()  # also for the tools that do not go through run_cli (prepare)
        return rest
    except (AttributeError, KeyError) as e:  # unknown key in a locked ConfigDict
        text = str(e.args[0] if e.args else e).replace("\\", "")
        if isinstance(e, AttributeError) and "has no attribute 'get_config'" in text:
            # A file without get_config() (a sweep file, say) was "unknown config key
            # 'config_config'", ml_collections' module name for it.
            given = [a for a in argv[1:] if re.match(r"--\w+=.*\.py$", a)]
            where = given[0] if given else "the config file"
            print(f"error: {where} defines no get_config() (a config file returns "
                  f"lmscale.config.default_config() with its fields, locked; a sweep file "
                  f"goes to lmscale.sweep --sweep=)", file=sys.stderr)
            sys.exit(1)
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


def define_weights_flags() -> Callable[[str], dict[str, Any]]:
    """``--step`` and ``--best`` of a tool that reads an LM's weights (eval, generate,
    transfer); returns a function of ``--workdir`` giving ``load_trained``'s ``workdir``,
    ``step`` and ``best``: a workdir given as RUN/best is RUN with ``best`` (the tools'
    outputs, records and the transfer's neuron are then RUN's, not inside its best/)."""
    from absl import flags

    # Listed by the calling tool's --help (absl shows only the main module's key flags;
    # defined here, they would appear under --helpfull only).
    caller = sys._getframe(1).f_globals.get("__name__", "")
    module_name = sys.argv[0] if caller == "__main__" else caller

    def define(kind: Callable[..., Any], name: str, default: Any, about: str) -> Callable[[], Any]:
        # Another tool module imported into this process (a notebook, the tests: convert has
        # a --step of this meaning) defined it: absl refused a second definition.
        if name in flags.FLAGS:
            return lambda: flags.FLAGS[name].value
        holder = kind(name, default, about, module_name=module_name)
        return lambda: holder.value

    step = define(flags.DEFINE_integer, "step", -1, "Checkpoint step; -1 = the latest.")
    best = define(flags.DEFINE_bool, "best", False, "The weights with the lowest validation "
                  "loss (a run with checkpoint.keep_best; NT-ASGD: averaged) instead of a "
                  "checkpoint's.")

    def weights(workdir: str) -> dict[str, Any]:
        from lmscale.training.run_paths import best_folder
        run, in_best = best_folder(workdir)
        return {"workdir": run, "step": None if step() < 0 else step(), "best": best() or in_best}

    return weights
