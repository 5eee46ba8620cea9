"""A sweep's folder: its identity (sweep.json), its lock, and each point's status file.

DIR/sweep.json records what the sweep is (the resolved base config and every point's
fields); a DIR that holds another sweep is refused. Each point trains in DIR/NAME, an
ordinary run folder, beside DIR/NAME/sweep_status.json: ``ok`` or ``div`` (finished, never
retrained), ``failed`` or ``interrupted`` (run again on the next sweep).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from typing import Any

from lmscale.atomic import write_json
from lmscale.sweeps.grid import Sweep, SweepError

IDENTITY_FILE = "sweep.json"
STATUS_FILE = "sweep_status.json"
LOCK_FILE = ".sweep.lock"
FINISHED = ("ok", "div")


def _normal(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def claim(workdir: str, base_config: dict[str, Any], sweep: Sweep, config_file: str,
          sweep_file: str) -> None:
    """Writes DIR/sweep.json, or checks that DIR holds this same sweep, or this one with values
    added to its axes (extended: recorded, its points kept); else a SweepError."""
    identity = _normal({"base_config": base_config, "points": [p.to_dict() for p in sweep.points]})
    path = os.path.join(workdir, IDENTITY_FILE)
    if os.path.exists(path):
        try:
            with open(path) as f:
                saved = json.load(f)
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise SweepError(f"{path} is damaged ({e}): it records which sweep {workdir} holds; "
                             f"restore it, or use another --workdir") from None
        old = {p["name"]: p for p in saved.get("points", [])}
        new = {p["name"]: p for p in identity["points"]}
        # Values added to its axes (the same axes, every point it has unchanged): extended,
        # its finished points kept (a new folder trained them all again)
        grown = (set(old) < set(new) and all(old[n] == new[n] for n in old)
                 and saved.get("axes") == sweep.axes)
        if saved.get("points") != identity["points"] and not grown:
            raise SweepError(f"{workdir} holds a different sweep ({saved.get('sweep_file')}, "
                             f"{len(old)} points): {_point_difference(old, new)}; use another "
                             f"--workdir (values added to its axes extend it)")
        keys = _diff_keys(saved.get("base_config", {}), identity["base_config"], _defaults())
        if keys:
            raise SweepError(f"{workdir} holds a different sweep: its base config differs in "
                             f"{', '.join(keys[:3])}; set the field as it was there "
                             f"(--config.FIELD=VALUE) to continue it, or use another --workdir")
        if grown:
            extended = [*saved.get("extended", []), {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                    "points_added": sorted(set(new) - set(old))}]
            _write_json(path, {**saved, "points": identity["points"], "extended": extended})
        return
    check_sweep_folder(workdir)
    os.makedirs(workdir, exist_ok=True)
    record = {"config_file": config_file, "sweep_file": sweep_file, "axes": sweep.axes,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **identity}
    _write_json(path, record)


def _point_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first difference between two sweeps' points, in words."""
    only_new, only_old = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    if only_new:
        return f"point {only_new[0]} is not in it"
    if only_old:
        return f"its point {only_old[0]} is not in this one"
    for name in new:
        a, b = old[name]["overrides"], new[name]["overrides"]
        for field in sorted(set(a) | set(b)):
            if a.get(field) != b.get(field):
                return f"point {name} sets {field}={a.get(field)!r} there, {b.get(field)!r} here"
    return "the order of its points differs"


_MISSING = object()


def _defaults() -> dict[str, Any]:
    from lmscale.config import default_config
    return _normal(default_config().to_dict())


def _diff_keys(a: dict[str, Any], b: dict[str, Any], defaults: dict[str, Any], prefix: str = "") -> list[str]:
    """Fields whose values differ; a field only one side has (added to lmscale since the
    sweep began, or removed) counts only if it is not at its default."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb, vd = a.get(k, _MISSING), b.get(k, _MISSING), defaults.get(k, _MISSING)
        if va is _MISSING or vb is _MISSING:
            present = vb if va is _MISSING else va
            if present == vd or (isinstance(present, dict) and isinstance(vd, dict)
                                 and not _diff_keys(present, vd, vd)):
                continue
            if isinstance(present, dict) or isinstance(vd, dict):
                va, vb = (None if va is _MISSING else va), (None if vb is _MISSING else vb)
            else:  # a field the sweep predates (or dropped) ran at its default there
                default = ("no longer a field of lmscale" if vd is _MISSING
                           else f"its default {vd!r}")
                there = f"absent there: {default}" if va is _MISSING else f"{va!r} there"
                here = f"absent here: {default}" if vb is _MISSING else f"{vb!r} here"
                keys.append(f"{prefix}{k} ({there}, {here})")
                continue
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff_keys(va, vb, vd if isinstance(vd, dict) else {}, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k} ({va!r} there, {vb!r} here)")
    return keys


class Lock:
    """An exclusive flock on a file; ``fd`` can be handed to a child to keep holding it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def check_sweep_folder(workdir: str) -> None:
    """A SweepError where ``workdir`` is a file, a folder with other files and no sweep.json,
    or one holding a link to a file outside it (``cli.refuse_links_out``): checked before the
    lock, which would leave its .sweep.lock there."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise SweepError(f"--workdir={workdir} is a file, not a folder: give the sweep's folder")
    if (os.path.isdir(workdir) and not os.path.exists(os.path.join(workdir, IDENTITY_FILE))
            and [n for n in os.listdir(workdir) if not n.startswith(".")]):
        raise SweepError(f"{workdir} is not empty and holds no {IDENTITY_FILE}: not a sweep folder")
    from lmscale.cli import refuse_links_out
    # a sweep folder from elsewhere: its points' train.log, report.md... written through
    refuse_links_out(workdir, error=SweepError)


def lock_sweep(workdir: str) -> Lock:
    """The sweep folder's lock (the folder made if needed): one sweep process per folder at a
    time. Taken before ``claim``: a sweep refused as in use must not rewrite sweep.json."""
    check_sweep_folder(workdir)  # a user's folder refused keeps no .sweep.lock
    os.makedirs(workdir, exist_ok=True)
    lock = Lock(os.path.join(workdir, LOCK_FILE))
    if not lock.try_acquire():
        raise SweepError(f"{workdir} is in use by another running sweep")
    return lock


def read_status(point_dir: str) -> dict[str, Any] | None:
    path = os.path.join(point_dir, STATUS_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            status = json.load(f)
    except ValueError:  # torn or hand-damaged: as if missing (the point's folder tells the rest)
        return None
    return status if isinstance(status, dict) else None


def write_status(point_dir: str, status: dict[str, Any]) -> None:
    _write_json(os.path.join(point_dir, STATUS_FILE), status)


def is_finished(point_dir: str) -> bool:
    status = read_status(point_dir)
    return status is not None and status.get("status") in FINISHED


def _write_json(path: str, obj: Any) -> None:
    write_json(path, obj, indent=1, default=str)
