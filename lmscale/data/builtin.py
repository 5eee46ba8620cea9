"""Built-in corpora: text that exists on every machine, so training needs no download.

``python_stdlib``: the top-level ``*.py`` files of the running Python's standard library
(about 170 files, ~4.7 MB; not recursive, so site-packages and test suites are excluded).
"""

from __future__ import annotations

import glob
import os
import sysconfig

from lmscale.data.errors import DataError

PREFIX = "builtin:"
BUILTIN_CORPORA: tuple[str, ...] = ("python_stdlib",)


def _strip(name: str) -> str:
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def is_builtin(name: object) -> bool:
    """Whether ``name`` (optionally ``builtin:``-prefixed) names a built-in corpus."""
    return isinstance(name, str) and _strip(name.strip()) in BUILTIN_CORPORA


def _python_stdlib() -> list[str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    return sorted(p for p in glob.glob(os.path.join(stdlib, "*.py")) if os.path.isfile(p))


def builtin_paths(name: str) -> list[str]:
    """Sorted file paths of the built-in corpus ``name``."""
    key = _strip(name.strip())
    if key not in BUILTIN_CORPORA:
        raise DataError(f"unknown built-in corpus {name!r}; known: {list(BUILTIN_CORPORA)}")
    paths = _python_stdlib()
    if not paths:
        raise DataError(f"built-in corpus {key!r}: no *.py files in {sysconfig.get_paths()['stdlib']}")
    return paths
