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
"""

from __future__ import annotations

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
