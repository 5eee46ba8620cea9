"""Messages worded for their reader: a command-line tool's user sets flags, a notebook's
config fields and arguments.

Errors and notes deep in the library name the way out as the tools' flags
(``--config.resume=false``), which a notebook user calling ``train(config, workdir)`` cannot
pass. ``run_cli`` marks the process as a command-line tool; elsewhere :func:`for_caller`
rewrites the flags as the config fields and arguments they set (``config.resume = False``),
and :func:`errors_for_caller` does so for the errors leaving the API's ``train``,
``finetune``, ``run_transfer``, ``load_lm`` and ``load_classifier``.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Iterator

_COMMAND_LINE = False  # set while cli.run_cli runs a tool: messages name its flags


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Messages inside the block keep the tool's flags (``cli.run_cli``); as it was after (a
    test or a notebook that ran a tool's main goes on with the API's wording)."""
    global _COMMAND_LINE
    was, _COMMAND_LINE = _COMMAND_LINE, True
    try:
        yield
    finally:
        _COMMAND_LINE = was


# --config.a.b=true/false/a number, the value ending the word: Python's assignment. Any other
# value is left as written (a path may hold spaces, a list commas).
_LITERAL_SETTING = re.compile(r"--config\.([\w.]+)=(true|false|-?[0-9][0-9.e+-]*?)"
                              r"(?=[\s;:)]|[.,](?:\s|$)|$)")
_PYTHON = {"true": "True", "false": "False"}


# Commands to paste into a shell (`python -m lmscale.plan --config=...`, python -m
# lmscale.convert --from=... up to a comma): their flags stay flags.
_VERBATIM = re.compile(r"(`[^`]*`|python -m lmscale\.\w+[^,;)`]*)")


def for_caller(message: str) -> str:
    """``message`` as its reader can act on it: unchanged in a command-line tool; from the
    Python API, ``--config.a.b=v`` becomes ``config.a.b = v`` and another flag its argument
    (``--text_column``: ``text_column``, as ``run_transfer`` and ``load_lm`` name them);
    a shell command quoted in it (a tool to run, ``XLA_FLAGS=--...``) stays as it is."""
    if _COMMAND_LINE:
        return message
    parts = _VERBATIM.split(message)
    return "".join(p if i % 2 else _reworded(p) for i, p in enumerate(parts))


def _reworded(message: str) -> str:
    """:func:`for_caller`'s rewording of text that quotes no command."""
    message = _LITERAL_SETTING.sub(
        lambda m: f"config.{m.group(1)} = {_PYTHON.get(m.group(2), m.group(2))}", message)
    message = re.sub(r"--config\.([\w.]+)", r"config.\1", message)  # other values as written
    return re.sub(r"(?<![\w/.=-])--([a-z][a-z0-9_]*)\b", r"\1", message)


@contextlib.contextmanager
def errors_for_caller() -> Iterator[None]:
    """Errors leaving the block worded by :func:`for_caller` (an error whose text is not its
    one argument is left as it is)."""
    try:
        yield
    except Exception as e:
        if len(e.args) == 1 and isinstance(e.args[0], str) and str(e) == e.args[0]:
            e.args = (for_caller(e.args[0]),)
        raise


def check_call_arguments(workdir: object, config: object = None, *, wants_config: bool = False,
                         name: str = "workdir", folder: str = "a folder") -> None:
    """TypeError naming the argument for a notebook's slip: a folder (argument ``name``, what
    it must be: ``folder``) that is not a str or path (None was a TypeError from posixpath
    naming no argument) or, with ``wants_config``, a config that is not a ConfigDict (a
    config file's path was an AttributeError on .get)."""
    import ml_collections

    if not isinstance(workdir, (str, os.PathLike)):
        raise TypeError(f"{name} must be {folder} (a str or path), got {workdir!r}")
    if wants_config and not isinstance(config, ml_collections.ConfigDict):
        hint = (" (a config file's path: load it with lmscale.config.config_from_file(path))"
                if isinstance(config, (str, os.PathLike)) else "")
        raise TypeError(f"config must be an ml_collections.ConfigDict, got "
                        f"{type(config).__name__}{hint}")


def is_utf8(encoding: str | None) -> bool:
    """Whether ``encoding`` (a stream's, the file system's) is UTF-8 under any of its names
    ("UTF-8", "utf8", "utf_8", "utf-8-sig"), as Python's codec registry resolves them."""
    import codecs
    try:
        return codecs.lookup(encoding or "").name in ("utf-8", "utf-8-sig")
    except LookupError:
        return False


def draws_bar(stream: object) -> bool:
    """Whether ``stream`` is a terminal a tqdm progress bar can be drawn on (else the tools
    print plain lines): a pseudo-terminal of 0 columns (``script`` or ``docker run -t``
    started from a non-terminal) is a tty where tqdm drew an empty bar, and the plain lines
    were left out: no progress at all."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return False
