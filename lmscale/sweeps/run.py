"""One sweep end to end: expand, claim the folder, train the points, transfer, report."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any, Callable

import ml_collections

from lmscale.atomic import append_line, write_json
from lmscale.sweeps.divergence import DEFAULT_FACTOR
from lmscale.sweeps.grid import Point, Sweep, SweepError, expand, load_sweep_spec
from lmscale.sweeps.report import write_report
from lmscale.sweeps.runner import Runner, RunOptions
from lmscale.sweeps.transfer import TransferSets, transfer_points
from lmscale.sweeps.workdir import claim, is_finished, lock_sweep, read_status


def run_sweep(base: ml_collections.ConfigDict, config_file: str, sweep_file: str, workdir: str, *,
              config_flags: list[str] = (), parallel: int = 1, cpu_budget_minutes: float | None = None,
              divergence_factor: float = DEFAULT_FACTOR, transfer: TransferSets | None = None,
              poll_seconds: float = 1.0, command: str = "",
              log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
              ) -> dict[str, Any]:
    """Runs (or resumes) a sweep; returns {"sweep", "results", "trained", "report"}.

    ``base`` is the config file's config with the command's ``--config.*`` overrides
    (``config_flags``, passed on to every point). Finished points are not retrained.
    """
    if transfer is not None:
        transfer.check()
    spec = load_sweep_spec(sweep_file, cpu_budget_minutes)
    sweep: Sweep = expand(spec, base)
    check_flags_not_swept(config_flags, sweep)
    check_data(base, sweep, workdir)
    # the lock first: a sweep refused as in use recorded its points in sweep.json (an extended
    # grid's), and the running sweep's own command was refused after as "a different sweep"
    lock = lock_sweep(workdir)
    transfer_failed: dict[str, str] = {}
    try:
        claim(workdir, base.to_dict(), sweep, config_file, sweep_file)
        check_same_text(base, sweep, workdir)
        t0, usage0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        runner = Runner(workdir, RunOptions(config_file, list(config_flags), parallel, divergence_factor,
                                            poll_seconds, log=log))
        to_run = sum(not is_finished(os.path.join(workdir, p.name)) for p in sweep.points)
        at_once = f" ({min(parallel, to_run)} at a time)" if to_run else ""
        log(f"sweep: {len(sweep.points)} points in {workdir}{at_once}")
        ran = False
        try:
            runner.run(sweep.points)
            ran = True
        finally:
            wall = time.perf_counter() - t0
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime
            title = f"Sweep {os.path.splitext(os.path.basename(sweep_file))[0]}"
            try:
                if runner.trained:
                    _log_invocation(workdir, wall, cpu, parallel, runner.trained)
                write_report(workdir, sweep, title=title, command=command,
                             totals=_totals(workdir))
            except OSError as e:
                if ran:
                    raise
                # the error that stopped the points is the one to see (a full disk named
                # report.md, not the point's file; Ctrl-C's exit status became 1)
                log(f"sweep: its run log or report could not be written either ({e})")
        if transfer is not None:
            ok = [os.path.join(workdir, p.name) for p in sweep.points
                  if (read_status(os.path.join(workdir, p.name)) or {}).get("status") == "ok"]
            transfer_failed = {os.path.basename(d): e
                               for d, e in transfer_points(ok, transfer, log).items()}
        results = write_report(workdir, sweep, title=title, command=command,
                               totals=_totals(workdir), transfer_failed=transfer_failed)
    finally:
        lock.release()
    log(f"sweep: report in {os.path.join(workdir, 'report.md')} and report.html")
    return {"sweep": sweep, "results": results, "trained": runner.trained,
            "report": os.path.join(workdir, "report.md"),
            "transfer_failed": transfer_failed}


def check_flags_not_swept(config_flags: list[str], sweep: Sweep) -> None:
    """SweepError where a ``--config.X`` flag of the sweep command sets a field a point sets
    too (an axis or the sweep's ``derived``): the point's flag comes last and wins, so the
    command's value was dropped unsaid (--config.train.steps=20 trained 1016 steps)."""
    given = {f.split("=", 1)[0].removeprefix("--config."): f for f in config_flags}
    for point in sweep.points:
        both = [k for k in point.overrides if k in given]
        if both:
            k = both[0]
            raise SweepError(f"{given[k]}: the sweep sets {k} for its points ({k}="
                             f"{point.overrides[k]!r} at {point.name}, by an axis or its "
                             f"derived values), which would override the flag: drop the flag, "
                             f"or change the sweep file")


def check_data(base: ml_collections.ConfigDict, sweep: Sweep, workdir: str) -> None:
    """The text every point still to train reads (``data.train`` / ``val`` / ``test``, the
    base's or the point's own) exists, before any point starts: a data set not fetched yet
    was found by each point in turn (16 failures, the advice only in their train.log).
    Finished points are not checked: re-running a finished sweep needs no text."""
    from lmscale.data.builtin import is_builtin
    from lmscale.data.dataset import is_dataset
    from lmscale.data.sources import expand_inputs
    from lmscale.sweeps.workdir import is_finished
    seen = set()
    for point in sweep.points:
        if is_finished(os.path.join(workdir, point.name)):
            continue
        data = point_data(base, point)
        for key in ("train", "val", "test"):
            spec = str(data[key] or "")
            if spec and spec not in seen and not is_builtin(spec) and not is_dataset(spec):
                seen.add(spec)
                expand_inputs(spec, notes=False)  # DataError naming the file, how to fetch it


def point_data(base: ml_collections.ConfigDict, point: Point) -> ml_collections.ConfigDict:
    """The ``data`` section a point trains with: the base's, with the point's ``data.*``."""
    data = base.data.copy_and_resolve_references()
    for key, value in point.overrides.items():
        if key.startswith("data."):
            data[key.split(".", 1)[1]] = value
    return data


TEXT_FILE = "sweep_text.json"  # the text files' sizes and times when the sweep began


def check_same_text(base: ml_collections.ConfigDict, sweep: Sweep, workdir: str) -> None:
    """Records the text files the points read (size, modification time) at the sweep's first
    run; a re-run with points still to train refuses text changed since (its finished points
    read the old text, the ones to come would read the new: a sweep of two corpora, said only
    in a resumed point's train.log). Built-in corpora and prepared datasets are not recorded."""
    from lmscale.training.data_source import changed_sources, text_sources
    path = os.path.join(workdir, TEXT_FILE)
    now: dict[str, list] = {}
    for point in sweep.points:
        sources = text_sources(point_data(base, point))
        if sources:
            now[point.name] = sources
    if not os.path.exists(path):
        write_json(path, now)
        return
    try:
        with open(path) as f:
            then = json.load(f)
    except ValueError:  # torn: recorded again
        write_json(path, now)
        return
    for point in sweep.points:
        if is_finished(os.path.join(workdir, point.name)) or point.name not in then:
            continue
        if point.name in now and now[point.name] != then[point.name]:
            raise SweepError(f"the text of point {point.name} changed since the sweep began "
                             f"({changed_sources(then[point.name], now[point.name])}): the points "
                             f"trained so far read the old text; restore it, or use another "
                             f"--workdir for the new")


def _log_invocation(workdir: str, wall: float, cpu: float, parallel: int, trained: list[str]) -> None:
    """Appends this invocation's training wall and CPU time to DIR/sweep_runs.jsonl."""
    append_line(os.path.join(workdir, "sweep_runs.jsonl"),
                json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": wall,
                            "cpu_s": cpu, "parallel": parallel, "trained": trained}))


def _totals(workdir: str) -> dict[str, str]:
    path = os.path.join(workdir, "sweep_runs.jsonl")
    if not os.path.exists(path):
        return {}
    runs = []
    with open(path) as f:
        for line in f:
            try:
                run = json.loads(line)
            except ValueError:  # a torn last line (a full disk): the others still count
                continue
            if isinstance(run, dict) and {"wall_s", "cpu_s", "parallel"} <= set(run):
                runs.append(run)
    if not runs:
        return {}
    wall, cpu = sum(r["wall_s"] for r in runs), sum(r["cpu_s"] for r in runs)
    return {"Sweep time (training, over its invocations)":
            f"{wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU ({len(runs)} invocation(s), "
            f"parallel {max(r['parallel'] for r in runs)})"}
