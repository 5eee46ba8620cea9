"""Messages worded for their reader: a command-line tool's user sets flags, a notebook's
config fields and arguments.

Errors and notes deep in the library name the way out as the tools' flags
(``--config.resume=false``), which a notebook user calling ``train(config, workdir)`` cannot
pass. ``run_cli`` marks the process as a command-line tool; elsewhere :func:`for_caller`
rewrites the flags as the config fields and arguments they set (``config.resume = False``),
and :func:`errors_for_caller` does so for the errors leaving the API's ``train`` and
``finetune``.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

_COMMAND_LINE = False  # set by run_cli: messages name the tool's flags


def worded_for_command_line() -> None:
    """Marks this process as a command-line tool (``cli.run_cli``): messages keep its flags."""
    global _COMMAND_LINE
    _COMMAND_LINE = True


def _value(text: str) -> str:
    """A flag's value as Python: true/false as True/False, a number as is, else quoted."""
    if text in ("true", "false"):
        return text.title()
    try:
        float(text)
        return text
    except ValueError:
        return repr(text)


def for_caller(message: str) -> str:
    """``message`` as its reader can act on it: unchanged in a command-line tool; from the
    Python API, ``--config.a.b=v`` becomes ``config.a.b = v`` and "another --workdir"
    "another workdir"."""
    if _COMMAND_LINE:
        return message
    message = re.sub(r"--config\.([\w.]+)=([^\s,;)]*)",
                     lambda m: f"config.{m.group(1)} = {_value(m.group(2))}", message)
    message = re.sub(r"--config\.([\w.]+)", r"config.\1", message)
    return re.sub(r"(another|a new) --workdir", r"\1 workdir", message)


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
