"""Atomic file writes: a reader (or a crash) never sees a half-written file.

``atomic_write(path)`` opens a temporary file beside ``path`` and renames it over ``path``
once the block succeeds, flushed to the disk first (a power loss leaves the new content or
the old); on an error the temporary file is removed and ``path`` keeps its previous content
(an OSError, e.g. a full disk, then names ``path``). Every record lmscale
writes outside orbax (configs, results, thresholds, best/sweep status, classifiers,
predictions, caches, tokenizer files) goes through it.

A temporary file or folder is named ``PATH.tmp-HOST-PID``: a process killed outright (SIGKILL
skips every cleanup) leaves it, and the next write of PATH removes those of this machine's
dead processes (:func:`remove_abandoned`; a feature cache's block was left whole beside the
real one, up to ~134 MB each). Folders published the same way (``prepare``, ``convert``)
do so when they start.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from typing import IO, Any, Iterator

# The machine in a temporary name: only this machine's processes can be told dead (a shared
# filesystem may hold another machine's live write).
HOST = socket.gethostname().replace(os.sep, "_") or "host"


# The longest file name most file systems take (NAME_MAX: ext4, xfs, tmpfs, NFS), in bytes.
NAME_MAX = 255


def marked_name(name: str) -> str:
    """``name`` (a file name, no folder) as its temporary names begin: itself, or where
    ``NAME.trash-HOST-PID`` would be longer than NAME_MAX, its start and a hash of it (a
    valid 250-byte output name failed at its temporary file, "File name too long", once
    the work was done)."""
    raw = os.fsencode(name)
    room = NAME_MAX - len(os.fsencode(f".trash-{HOST}-")) - 7  # 7: the longest PID (2**22)
    if len(raw) <= room:
        return name
    cut = max(room - 17, 0)  # "~" and 16 hex digits
    while cut and raw[cut] & 0xC0 == 0x80:  # not inside a UTF-8 character
        cut -= 1
    return os.fsdecode(raw[:cut]) + "~" + hashlib.sha256(raw).hexdigest()[:16]


def _marked(path: str, kind: str, pid: int | str) -> str:
    """``PATH.KIND-HOST-PID`` beside ``path``, its name shortened by :func:`marked_name`."""
    parent, name = os.path.split(path)
    return os.path.join(parent, f"{marked_name(name)}.{kind}-{HOST}-{pid}")


def kernel_path(path: str) -> str:
    """``path`` normalized as the kernel reads it: ``os.path.normpath`` drops ``a/..`` as text,
    which differs where ``a`` is a symbolic link (the kernel follows it, then goes up), so
    a path with a ``..`` has its links resolved (a workdir ``link/../z`` had its data prepared
    in one folder and looked for in another)."""
    if os.pardir in path.split(os.sep):
        return os.path.realpath(path)
    return os.path.normpath(path)


def absolute_path(path: str) -> str:
    """``os.path.abspath`` as the kernel reads the path (:func:`kernel_path`)."""
    return os.path.abspath(kernel_path(path))


def temporary_name(path: str) -> str:
    """This process's temporary file or folder for ``path``."""
    return _marked(path, "tmp", os.getpid())


def _dead(pid: str) -> bool:
    """Whether the process ``pid`` of this machine is gone (a live or unknown one: False)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


def remove_abandoned(path: str, what: str = "a process") -> None:
    """Removes ``PATH.tmp-HOST-PID`` files and folders of this machine's dead processes, and
    restores a ``PATH.trash-HOST-PID`` (an old output moved aside by :func:`publish`) where
    PATH itself is missing (its process was killed between the two renames), else removes it.
    ``what`` names the writer in the notes (``prepare``)."""
    parent, name = os.path.split(os.path.abspath(path))
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for kind in ("tmp", "trash"):
        prefix = f"{marked_name(name)}.{kind}-{HOST}-"
        for entry in entries:
            if not entry.startswith(prefix) or not _dead(entry[len(prefix):]):
                continue
            left = os.path.join(parent, entry)
            if kind == "trash" and not os.path.lexists(path):
                os.rename(left, path)
                print(f"note: {path} restored from {left}, where a killed {what} had moved it",
                      file=sys.stderr, flush=True)
                continue
            with contextlib.suppress(OSError):
                remove_path(left)
            if not os.path.lexists(left):
                print(f"note: removed {left}, left by {what} that was killed", file=sys.stderr,
                      flush=True)


def sync_folder(path: str) -> None:
    """Flushes the folder ``path``'s entries (a rename into it) to the disk; where the file
    system cannot (some network ones), nothing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_tree(folder: str) -> None:
    """Flushes every file of ``folder`` and the folders themselves to the disk: a folder
    renamed into place after a power loss holds what was written, not empty files."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        sync_folder(root)


def publish(tmp: str, path: str) -> None:
    """Renames the finished ``tmp`` (flushed to the disk first) to ``path``, an old ``path``
    moved aside first (``PATH.trash-HOST-PID``) and removed after: a kill between the renames
    leaves the old one, which :func:`remove_abandoned` restores."""
    sync_tree(tmp)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.lexists(path):
        os.rename(tmp, path)
        sync_folder(parent)
        return
    trash = _marked(path, "trash", os.getpid())
    remove_path(trash)
    os.rename(path, trash)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(trash, path)
        raise
    sync_folder(parent)
    remove_path(trash)


def temporary_folder(prefix: str) -> tempfile.TemporaryDirectory:
    """A ``TemporaryDirectory`` in TMPDIR named ``PREFIX-HOST-PID-*``, made once those that
    this machine's dead processes left are removed: a process killed (SIGKILL, or a SIGTERM
    taking its default action) skips the folder's cleanup, and nothing else removed it
    (``lmscale.eval`` of a text file left the text's tokens there, 2 bytes a byte)."""
    prefix = f"{prefix}-{HOST}-"
    try:
        entries = list(os.scandir(tempfile.gettempdir()))
    except OSError:
        entries = []
    for entry in entries:  # PID-random: mkdtemp's random part has no "-"
        found = re.fullmatch(r"(\d+)-[^-]+", entry.name[len(prefix):])
        if (entry.name.startswith(prefix) and found and _dead(found.group(1))
                and entry.is_dir(follow_symlinks=False)):
            remove_path(entry.path)
    return tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-")


def remove_path(path: str) -> None:
    """Removes the file or folder ``path`` if it is there (a folder's errors ignored)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def links_out_of(folder: str, recursive: bool = True) -> list[tuple[str, str]]:
    """(link, target) of each symbolic link to a file under ``folder`` (linked folders not
    entered; a dangling link included) whose target lies outside it: a write of the link's
    name writes the target (``atomic_write``; an append opens it), so a run folder from
    elsewhere (tar and rsync keep links) with ``commands.log -> ~/.bashrc`` had lmscale write
    the user's files. A link to a folder (checkpoints on a bigger disk) is not one.
    ``recursive`` False: the folder's own files only (a tool's output folder, which may be
    the user's: ``--output=.`` beside a virtual environment's .venv/bin/python link)."""
    root = os.path.realpath(folder)
    found = []
    for parent, folders, files in os.walk(folder):  # links to folders are listed as folders
        if not recursive:
            folders.clear()
        for name in files:
            path = os.path.join(parent, name)
            if os.path.islink(path):
                target = os.path.realpath(path)
                if os.path.commonpath([root, target]) != root:
                    found.append((path, target))
    return found


def within_folder(name: Any) -> bool:
    """Whether ``name``, a file name read from a record in a folder (a dataset's metadata, a
    tokenizer's description), is a relative path that stays inside that folder: no absolute
    path, no ``..`` (a folder from elsewhere made lmscale read files outside it)."""
    return (isinstance(name, str) and bool(name) and not os.path.isabs(name)
            and ".." not in name.replace("\\", "/").split("/"))


def is_special(path: str) -> bool:
    """Whether ``path`` is written in place: ``-`` (standard output, for the tools that take
    it), a device (/dev/null, a terminal), a pipe or a socket (its links followed), or a path
    in /dev or /proc (/dev/stdout redirected to a file: replacing the file would leave the
    shell's redirection, a ``>>`` append's earlier lines included, on the old one)."""
    if path == "-":
        return True
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        return True
    return any((p == d or p.startswith(d + os.sep)) and not p.startswith("/dev/shm/")
               for d in ("/dev", "/proc")  # /dev/shm: a tmpfs of files like any other
               for p in (os.path.abspath(path), os.path.realpath(path)))


def _standard_stream(path: str) -> IO | None:
    """sys.stdout or sys.stderr where ``path`` is the very file it writes (/dev/stdout,
    /proc/self/fd/1), else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    for stream in (sys.stdout, sys.stderr):
        try:
            fs = os.fstat(stream.fileno())
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            continue
        if (fs.st_dev, fs.st_ino) == (st.st_dev, st.st_ino):
            return stream
    return None


def writes_stdout(path: str) -> bool:
    """Whether writing ``path`` writes this process's standard output: ``-``, or a device
    path that is it (/dev/stdout, /dev/fd/1, /proc/self/fd/1); what a tool says then goes to
    stderr, and a reader that leaves early (``| head``) ends the output, not the tool."""
    return path == "-" or (is_special(path) and _standard_stream(path) is sys.stdout)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """``with atomic_write(path) as f: ...`` writes ``path`` all at once or not at all.

    A symbolic link's target is written (renamed over, the link became a plain file and its
    target kept the old content); a device or pipe (``is_special``: /dev/stdout, a shell's
    ``>(gzip > x)``) is written in place, as it cannot be replaced (root renamed a file of
    predictions over /dev/stdout, the link every later process writes through)."""
    if "b" not in mode:  # UTF-8 whatever the locale (an ASCII one failed on "×" in a report)
        open_kwargs.setdefault("encoding", "utf-8")
    if is_special(path):
        if path == "-":
            raise ValueError("atomic_write writes files: '-' (standard output) is the caller's")
        std = _standard_stream(path)
        if std is not None:  # /dev/stdout as this process's own stdout: through it, in order
            sys.stdout.flush()
            std.flush()
            buffer = getattr(std, "buffer", None)
            if buffer is None or "b" in mode:  # bytes to the buffer; a stream without one:
                out = buffer if buffer is not None else std  # text as it encodes it
                yield out
                out.flush()
                return
            # the caller's encoding and newline (UTF-8 CSV), as open() gave them, not the stream's
            text = io.TextIOWrapper(buffer, **{k: v for k, v in open_kwargs.items()
                                              if k in ("encoding", "errors", "newline")})
            try:
                yield text
                text.flush()
            finally:
                text.detach()  # the stream's buffer stays open
            return
        # appended, never truncated: /dev/stdout or /proc/self/fd/N may name a regular file
        # (a shell's ``>>`` log, or one already holding this run's earlier lines)
        with open(path, mode.replace("w", "a"), **open_kwargs) as f:
            yield f
        return
    if os.path.islink(path):
        path = os.path.realpath(path)
    remove_abandoned(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()  # on the disk before the rename: after a power loss the file holds
            os.fsync(f.fileno())  # the new content or the old, not an empty file
        os.replace(tmp, path)
        sync_folder(os.path.dirname(path) or ".")
    except BaseException as e:
        # (asked before the temporary file is removed, which frees its blocks)
        full = isinstance(e, OSError) and e.errno is None and _disk_full(path)
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if full:
            # numpy's ``tofile`` (np.save to a file) reports a short write as "N requested and
            # M written" with no errno: a full disk read as a traceback
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from e
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
            # A full disk (no file name, from write/close) or a read-only folder (the temporary
            # file's name): the error names the file being written.
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), path) from e
        raise


def _disk_full(path: str) -> bool:
    """Whether the file system holding ``path`` has no block left for an unprivileged user."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def write_json(path: str, obj: Any, **dump_kwargs: Any) -> None:
    """``json.dump(obj, **dump_kwargs)`` to ``path``, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, **dump_kwargs)


def save_figure(fig: Any, path: str, dpi: int) -> None:
    """``fig.savefig(path)`` (a matplotlib figure) written atomically: a full disk or a kill
    leaves the earlier file, if any."""
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=os.path.splitext(path)[1][1:] or "png", dpi=dpi)


def append_whole(fd: int, line: bytes, path: str) -> None:
    """Appends ``line`` to the open ``fd`` whole or not at all: a full disk mid-line left a
    torn record without its newline, which the next append joined (JSON-lines readers failed
    on both); the OSError names ``path`` (a write's names no file)."""
    end = os.lseek(fd, 0, os.SEEK_END)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, end)
        raise OSError(e.errno, e.strerror, path) from None


def append_line(path: str, line: str) -> None:
    """``line`` + newline appended to the file ``path`` (made if absent) by ``append_whole``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        append_whole(fd, (line + "\n").encode(), path)
    finally:
        os.close(fd)
