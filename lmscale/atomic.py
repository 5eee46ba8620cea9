"""Atomic file writes: a reader (or a crash) never sees a half-written file.

``atomic_write(path)`` opens a temporary file beside ``path`` and renames it over ``path``
once the block succeeds; on an error the temporary file is removed and ``path`` keeps its
previous content (an OSError, e.g. a full disk, then names ``path``). Every record lmscale
writes outside orbax (configs, results, thresholds, best/sweep status, classifiers,
predictions, caches, tokenizer files) goes through it.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """``with atomic_write(path) as f: ...`` writes ``path`` all at once or not at all."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
            # A full disk (no file name, from write/close) or a read-only folder (the temporary
            # file's name): the error names the file being written.
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), path) from e
        raise


def write_json(path: str, obj: Any, **dump_kwargs: Any) -> None:
    """``json.dump(obj, **dump_kwargs)`` to ``path``, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, **dump_kwargs)


def save_figure(fig: Any, path: str, dpi: int) -> None:
    """``fig.savefig(path)`` (a matplotlib figure) written atomically: a full disk or a kill
    leaves the earlier file, if any."""
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=os.path.splitext(path)[1][1:] or "png", dpi=dpi)
