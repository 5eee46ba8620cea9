"""xdist's file-by-file scheduling (``--dist loadfile``, the README's test command) made to
survive a crashed worker.

A worker that dies (a segfault in a native library, an out-of-memory kill) should cost the
test it was running, reported failed, and nothing more. pytest-xdist 3.8's file scheduler
instead hung the whole run (measured: one ``os._exit`` in one test, ``-n 1`` and ``-n 2``,
no end after 60 s; pytest-xdist issues 784, 1323, 1327): it put the dead worker's files back
in the queue with their finished tests marked unfinished and the crashed test pending again,
so the replacement worker ran that test again (and crashed again), or was sent a file with
nothing left to run, or its last test and no word that no more would come — a worker runs a
test only once it knows the next one, or that there is none. In CI a hang is 90 minutes
spent before the run is failed, the crashed test unnamed.

A crashed test's report also says how its worker died: each worker writes Python's fatal-error
dump (faulthandler: the signal and every thread's stack) to a file of its own, which the report
quotes. It went to the workers' stderr, far above the report in a CI log that shows its end.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Sequence

import pytest
from xdist.report import report_collection_diff
from xdist.scheduler import LoadFileScheduling
from xdist.workermanage import WorkerController


class CrashTolerantLoadFileScheduling(LoadFileScheduling):
    """LoadFileScheduling whose crashed worker's unfinished tests, but the one it crashed on,
    go to the other workers (first, in their order), and whose replacement worker is told when
    no more work will come."""

    def remove_node(self, node: WorkerController) -> str | None:
        """Forgets ``node`` (finished or crashed); returns the test it crashed on, if any. A
        worker that dies before the first distribution no longer counts towards the collections
        that waits for (xdist 3.8 then sent work to a worker still collecting, an internal
        error)."""
        workload = self.assigned_work.pop(node)
        if self.collection is None:
            self.registered_collections.pop(node, None)
        unfinished = OrderedDict()
        for scope, tests in workload.items():
            left = OrderedDict((nodeid, False) for nodeid, done in tests.items() if not done)
            if left:
                unfinished[scope] = left
        if not unfinished:
            return None  # a worker that finished its work, or crashed after its last test
        # A worker runs its tests in the order they were sent: the first unfinished one is the
        # one it died in. xdist reports it failed; run again, it may well crash the next one.
        scope, left = next(iter(unfinished.items()))
        crashed, _ = left.popitem(last=False)
        if not left:
            del unfinished[scope]
        self.workqueue = OrderedDict([*unfinished.items(), *self.workqueue.items()])
        for other in self.nodes:
            self._top_up(other)
        return crashed

    def add_node_collection(self, node: WorkerController, collection: Sequence[str]) -> None:
        """The collection of ``node``; a replacement worker that collected other tests than
        the run (a test module that failed to import there) is reported and shut down, and the
        files queued for it dropped where no other worker will take them: xdist 3.8 kept it
        waiting for work it could not be sent, and the run waited for it."""
        super().add_node_collection(node, collection)
        if node in self.registered_collections:
            return
        first = next(iter(self.registered_collections)).gateway.id
        self.config.hook.pytest_collectreport(report=pytest.CollectReport(
            nodeid=node.gateway.id, outcome="failed", result=[], longrepr=report_collection_diff(
                self.collection, list(collection), first, node.gateway.id)))
        node.shutdown()
        if all(other.shutting_down for other in self.nodes):
            self.workqueue.clear()

    def schedule(self) -> None:
        """The first distribution, or, once a replacement worker has collected, work for the
        workers that have collected (xdist 3.8 gave the replacement one file, and a file of
        one test never ran; it also sent work to a worker still collecting, an internal
        error)."""
        if self.collection is None:
            super().schedule()
            return
        for node in self.nodes:
            self._top_up(node)

    def _assign_work_unit(self, node: WorkerController) -> None:
        """The next file for ``node``, which stays its own where the worker is already dead
        (its pipe closed before the controller read its last reports): the worker's crash,
        still to be read, hands it on (remove_node). xdist 3.8 ended the run with an internal
        error ("cannot send (already closed?)")."""
        try:
            super()._assign_work_unit(node)
        except OSError:
            pass

    def _top_up(self, node: WorkerController) -> None:
        """Files for ``node`` until it holds two tests or the queue is empty, then word that
        no more will come: a worker runs a test once it knows the next one, or that there is
        none. A worker told so, or still collecting, is left as it is."""
        if node.shutting_down or node not in self.registered_collections:
            return
        while self.workqueue and self._pending_of(self.assigned_work[node]) < 2:
            self._assign_work_unit(node)
        if not self.workqueue:
            node.shutdown()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> LoadFileScheduling | None:
    """The crash-tolerant scheduler for ``--dist loadfile``; xdist's own for the others."""
    if config.getvalue("dist") == "loadfile":
        return CrashTolerantLoadFileScheduling(config, log)
    return None


FATAL_ERRORS = "lmscale_fatal_errors"  # workerinput: the folder of the workers' dumps
_FOLDER = pytest.StashKey[str]()  # the controller's copy of that folder
_DUMP = pytest.StashKey[object]()  # a worker's open dump file (faulthandler writes to its fd)
MAX_DUMP_LINES = 120  # of a dump quoted in a report, the crashed thread's stack first


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: WorkerController) -> None:
    """Names the folder for the worker's fatal-error dump (made once, removed at the end)."""
    config = node.config
    if _FOLDER not in config.stash:
        config.stash[_FOLDER] = tempfile.mkdtemp(prefix="lmscale-test-fatal-errors-")
        config.add_cleanup(lambda: shutil.rmtree(config.stash[_FOLDER], ignore_errors=True))
    node.workerinput[FATAL_ERRORS] = config.stash[_FOLDER]


def pytest_sessionstart(session: pytest.Session) -> None:
    """In a worker: its fatal-error dump goes to its file (after pytest's own faulthandler
    setup, which sends it to stderr)."""
    folder = getattr(session.config, "workerinput", {}).get(FATAL_ERRORS)
    if folder:
        dump = open(os.path.join(folder, session.config.workerinput["workerid"]), "w")
        session.config.stash[_DUMP] = dump
        faulthandler.enable(dump, all_threads=True)


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem: str, report: pytest.TestReport,
                           sched: LoadFileScheduling) -> None:
    """The crashed worker's fatal-error dump, added to its test's report."""
    folder = sched.config.stash.get(_FOLDER, None)
    worker = report.node.gateway.id  # type: ignore[attr-defined]
    text = ""
    if folder is not None:
        with contextlib.suppress(OSError), open(os.path.join(folder, worker),
                                                errors="replace") as dump:
            text = dump.read()
    error, *threads = text.strip().split("\n\n")
    threads.sort(key=lambda thread: not thread.startswith("Current thread"))  # the crashed first
    lines = "\n\n".join([error, *threads]).strip().splitlines()
    if len(lines) > MAX_DUMP_LINES:
        lines = lines[:MAX_DUMP_LINES] + [f"... ({len(lines) - MAX_DUMP_LINES} lines more)"]
    how = ("\n".join(["its fatal-error dump (faulthandler):", *lines]) if lines else
           "it left no fatal-error dump: it exited (os._exit), or was killed by a signal Python "
           "cannot catch (SIGKILL: the kernel's out-of-memory killer?)")
    report.longrepr = f"{report.longrepr}\n{how}"
