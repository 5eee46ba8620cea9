"""Public data sets by name: downloaded once, verified by sha256, cached.

    python -m lmscale.datasets fetch sst_binary [--to=DIR]
    python -m lmscale.datasets list

    from lmscale.datasets import fetch
    folder = fetch("sst_binary")     # -> ~/.cache/lmscale/sst_binary (or $LMSCALE_DATA/...)

Each entry names its files (URL, sha256, local name), its source and license, and how
lmscale reads it. A file already in the cache with the right checksum is never
downloaded again; a download goes to a temporary file that is checked and then renamed,
so a failed, partial or corrupted transfer leaves nothing that looks valid. Without a
network the error says where to put the file by hand. ``$LMSCALE_DATA_MIRROR`` (a base URL)
fetches ``MIRROR/NAME/FILE`` instead of the original URLs, e.g. from a cluster's own server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import sys
import uuid
import urllib.error
import urllib.request

from lmscale.data.errors import DataError

CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    name: str  # file name in the data set's folder
    url: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class Dataset:
    files: tuple[RemoteFile, ...]
    source: str  # where it comes from, and its license
    usage: str  # how lmscale reads it


_OPENAI = "https://raw.githubusercontent.com/openai/generating-reviews-discovering-sentiment/master/data"
REGISTRY: dict[str, Dataset] = {
    "sst_binary": Dataset(
        files=(RemoteFile("train.csv", f"{_OPENAI}/train_binary_sent.csv",
                          "6003623bcb35aad3a446a265b8931b7ccab61fcc10f2e9c1fec916ff67c7be35"),
               RemoteFile("val.csv", f"{_OPENAI}/dev_binary_sent.csv",
                          "f34c4987fea208fefc2d62a1b42c83a766cbfc7ce58c2a878ef953cf91f01729"),
               RemoteFile("test.csv", f"{_OPENAI}/test_binary_sent.csv",
                          "519cea7ed4d22fe7ec4eccbb3d5ba6d88902a3b15ce129f476aa8364463a9fc7")),
        source="Stanford Sentiment Treebank, binary sentences, as shipped by OpenAI's "
               "generating-reviews-discovering-sentiment (MIT); SST itself: Socher et al. 2013",
        usage="CSV with columns label,sentence: --train=DIR/train.csv --val=DIR/val.csv "
              "--test=DIR/test.csv --text_column=sentence --label_column=label"),
    "tinyshakespeare": Dataset(
        files=(RemoteFile("input.txt", "https://raw.githubusercontent.com/karpathy/char-rnn/"
                          "master/data/tinyshakespeare/input.txt",
                          "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),),
        source="karpathy/char-rnn's tinyshakespeare (public-domain text)",
        usage="one text file: --config.data.train=DIR/input.txt"),
}


def cache_root() -> str:
    """``$LMSCALE_DATA``, else ~/.cache/lmscale."""
    return os.environ.get("LMSCALE_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "lmscale")


def data_path(name: str, *parts: str) -> str:
    """Where data set ``name`` (and a file in it) lives in the cache, fetched or not: configs
    name their data this way, so ``python -m lmscale.datasets fetch NAME`` is all a user does
    (``$LMSCALE_DATA`` pointing at a folder of such sets serves a cluster or CI)."""
    return os.path.join(cache_root(), name, *parts)


# Data sets configs name that cannot be fetched: how a user gets them.
BY_HAND = {"semeval2018_ec": "SemEval-2018 Task 1 E-c is given out by the task's organizers "
                             "after registration (competitions.codalab.org, \"SemEval-2018 Task "
                             "1: Affect in Tweets\"): put its train and dev files there as "
                             "train.csv and val.csv, or set --config.finetune.train/val"}


def fetch_hint(path: str) -> str:
    """For a missing ``path`` in the cache of a data set lmscale fetches: how to fetch it (of
    one it cannot fetch, ``BY_HAND``: how to get it)."""
    root = os.path.abspath(cache_root())
    relative = os.path.relpath(os.path.abspath(path), root)
    name = relative.split(os.sep)[0]
    if relative.startswith(".."):
        return ""
    if name in BY_HAND:
        return f" ({BY_HAND[name]})"
    if name not in REGISTRY:
        return ""
    return f" (not fetched yet: python -m lmscale.datasets fetch {name})"


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch(name: str, to: str | None = None, *, timeout: float = 60.0) -> str:
    """The folder holding data set ``name`` (default ``cache_root()/name``), downloading and
    verifying whatever is missing. Raises DataError (one line) on any failure."""
    if name in BY_HAND:  # was "unknown data set", though configs name it
        where = os.path.abspath(to or os.path.join(cache_root(), name))
        raise DataError(f"{name} cannot be fetched into {where}: {BY_HAND[name]}")
    if name not in REGISTRY:
        raise DataError(f"unknown data set {name!r}; known: {sorted(REGISTRY)}")
    if not to and cache_root().startswith("~"):  # no HOME, no passwd entry: not ./~ here
        from lmscale.messages import for_caller
        raise DataError(for_caller(f"no home folder for the cache ~/.cache/lmscale: HOME is "
                                   f"unset and user id {os.getuid()} has no passwd entry; set "
                                   f"LMSCALE_DATA to a folder, or give --to=DIR"))
    folder = os.path.abspath(to or os.path.join(cache_root(), name))
    if os.path.exists(folder) and not os.path.isdir(folder):
        from lmscale.messages import for_caller  # fetch(to=) from Python, --to= from the tool
        where = f"--to={to}" if to else "$LMSCALE_DATA/NAME" if os.environ.get("LMSCALE_DATA") \
            else "the cache ~/.cache/lmscale/NAME"  # no --to given: it named a flag not passed
        raise DataError(for_caller(f"{where.replace('NAME', name)}: {folder} is a file, not a "
                                   f"folder; give a folder to put {name}'s files in"))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:  # read-only, forbidden, a file on the way: was a traceback
        raise DataError(f"cannot create {folder} for {name}'s files ({e.strerror or e}); "
                        f"give a writable folder") from None
    mirror = os.environ.get("LMSCALE_DATA_MIRROR", "").rstrip("/")
    done: set[str] = set()  # files verified in the folder
    for remote in REGISTRY[name].files:
        path = os.path.join(folder, remote.name)
        present = sha256_of(path) if os.path.isfile(path) else None
        if present == remote.sha256:
            done.add(remote.name)
            continue
        if mirror:
            remote = dataclasses.replace(remote, url=f"{mirror}/{name}/{remote.name}")
        try:
            _download(remote, path, timeout)
            done.add(remote.name)
        except DataError as e:  # by hand, a user needs every file and why the one there is not it
            others = [r.name for r in REGISTRY[name].files if r.name != remote.name
                      and r.name not in done and not _valid(os.path.join(folder, r.name), r)]
            raise DataError(str(e) + (f"; the file there now has sha256 {present}, not that one"
                                      if present else "")
                            + (f"; {name} also needs {', '.join(others)} in {folder}"
                               if others else "")) from None
    return folder


def _valid(path: str, remote: RemoteFile) -> bool:
    return os.path.isfile(path) and sha256_of(path) == remote.sha256


class _LocalWriteError(Exception):
    """Writing the folder failed (read-only, full): not the download's fault."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        raise _LocalWriteError(e) from None


def _download(remote: RemoteFile, path: str, timeout: float) -> None:
    # Unique per call, not per process: two threads of one process fetching the same file
    # shared one name, one renamed the other's half-written file into place.
    tmp = f"{path}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    fd = None
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as e:
            raise _LocalWriteError(e) from None
        h, size = hashlib.sha256(), 0
        with urllib.request.urlopen(remote.url, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            for block in iter(lambda: response.read(CHUNK), b""):
                h.update(block)
                _write_all(fd, block)
                size += len(block)
        os.close(fd)
        fd = None
        if expected is not None and size != int(expected):
            raise DataError(f"{remote.url}: transfer ended after {size} of {expected} bytes; "
                            f"nothing was saved, try again")
        if h.hexdigest() != remote.sha256:
            raise DataError(f"{remote.url}: sha256 {h.hexdigest()} is not the expected "
                            f"{remote.sha256}; nothing was saved")
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise _LocalWriteError(e) from None
    except DataError:
        raise
    except _LocalWriteError as e:
        cause = e.args[0]
        raise DataError(f"cannot write {path} ({cause.strerror or cause}); nothing was saved: "
                        f"give a writable folder with room for the file") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        # HTTPException: a reply that is not HTTP (BadStatusLine) or a chunked transfer cut
        # short (IncompleteRead) was a traceback
        reason = getattr(e, "reason", e)
        if isinstance(e, http.client.HTTPException):
            reason = f"not an HTTP reply, or one cut short: {type(e).__name__}"
        elif isinstance(e, urllib.error.HTTPError):
            reason = f"HTTP {e.code} {e.reason}"
        raise DataError(f"cannot download {remote.url} ({reason}); without a network, put the "
                        f"file there by hand as {path} (sha256 {remote.sha256})") from None
    finally:
        if fd is not None:
            os.close(fd)
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv: list[str]) -> int:
    """``fetch NAME [--to=DIR]`` or ``list``; prints the folder or the registry."""
    args = [a for a in argv if not a.startswith("--to=")]
    to = next((a[len("--to="):] for a in argv if a.startswith("--to=")), None)
    if to is not None:  # the shell leaves "~" after "--to=" as it is: it went to ./~/DIR
        to = os.path.expanduser(to)
    if args == ["list"]:
        for name, d in sorted(REGISTRY.items()):
            print(f"{name}: {d.source}\n    {d.usage}")
        return 0
    if len(args) != 2 or args[0] != "fetch":
        print("usage: python -m lmscale.datasets fetch NAME [--to=DIR] | list", file=sys.stderr)
        return 2
    from lmscale.messages import command_line
    try:
        with command_line():  # its errors name the tool's flags (--to=)
            folder = fetch(args[1], to)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: one line, as the other tools (the temporary file is gone)
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    print(folder, flush=True)  # stdout: the folder alone (SST=$(python -m lmscale.datasets ...))
    # How to use it goes to stderr: printed after the folder on stdout, it met a closed pipe
    # under `| head -1` (a BrokenPipeError traceback).
    print(REGISTRY[args[1]].usage.replace("DIR", folder), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
