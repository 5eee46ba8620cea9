"""Run metrics: JSON lines in WORKDIR/metrics.jsonl and TensorBoard event files.

Every record has ``step`` and ``split`` ("train" or "val"); an LM run's also ``bpc``
(a fine-tune's have the classifier's loss and metrics instead: README). Only process 0
writes; other processes get a writer that does nothing. TensorBoard files are written
with tensorboardX, which needs no TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax

from lmscale.atomic import append_whole, atomic_write


class MetricsWriter:
    """Appends records to ``metrics.jsonl`` and mirrors scalars to TensorBoard under ``tb/``."""

    def __init__(self, workdir: str, *, tensorboard: bool = True, resumed_from: int = 0) -> None:
        """``resumed_from``: the step a resumed run restarts at. metrics.jsonl keeps the records
        up to it (the loop truncates the rest); TensorBoard is told to drop the earlier run's
        events after it (a purge step), which a run killed between its last log and its last
        checkpoint had written; ``resumed_from=-1`` drops every earlier event, step 0's
        included (a run starting at 0: one killed before its first checkpoint)."""
        self.enabled = jax.process_index() == 0
        self.workdir, self.path = workdir, os.path.join(workdir, "metrics.jsonl")
        self._file = open(self.path, "ab", buffering=0) if self.enabled else None
        self._tb = None
        if self.enabled and tensorboard:
            from tensorboardX import SummaryWriter
            # tensorboardX names its file by the second and the host: a run resumed within
            # the same second (a notebook's second train()) wrote over the first run's file.
            # The nanosecond suffix keeps each file apart and the names in time order.
            self._tb = SummaryWriter(os.path.join(workdir, "tb"),
                                     purge_step=resumed_from + 1,
                                     filename_suffix=f".{time.time_ns():020d}")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in record.items()}
        self._append((json.dumps(clean) + "\n").encode())
        if self._tb is not None:
            split, step = clean["split"], clean["step"]
            try:
                for key, value in clean.items():
                    if key not in ("step", "split") and isinstance(value, (int, float)) \
                            and math.isfinite(value):
                        self._tb.add_scalar(f"{split}/{key}", value, step)
                self._tb.flush()
            except OSError as e:
                raise self._tensorboard_failed(e) from None

    def _append(self, line: bytes) -> None:
        """One whole line or nothing (``atomic.append_whole``): a torn record failed the JSON
        readers of the file."""
        append_whole(self._file.fileno(), line, self.path)

    def _tensorboard_failed(self, error: OSError) -> OSError:
        """``error`` of a TensorBoard write, naming its folder (tensorboardX's names none),
        the writer dropped (``_drop_tensorboard``)."""
        self._drop_tensorboard()
        return OSError(error.errno, error.strerror, os.path.join(self.workdir, "tb"))

    def _drop_tensorboard(self) -> None:
        """Closes the TensorBoard writer after a failed write (a full disk), its unwritable
        events dropped: tensorboardX otherwise retried them at exit and in its thread, each
        failure a traceback after the run's one-line error."""
        tb, self._tb = self._tb, None
        for writer in (getattr(tb, "all_writers", None) or {}).values():
            try:  # tensorboardX's record file (private): its pending bytes go nowhere
                writer.event_writer._ev_writer._py_recordio_writer._writer = _Discard()
            except AttributeError:
                pass
        try:
            tb.close()
        except OSError:
            pass

    def abandon(self) -> None:
        """After an error: closes both files, quietly (the error being raised is the one to
        see). Left open, each run that raised in a notebook kept TensorBoard's writer thread,
        its queue's thread, the events file and pipes."""
        try:
            self.close()
        except Exception:  # noqa: BLE001 - e.g. the full disk the raised error names
            pass

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            try:
                self._tb.close()
                self._tb = None
            except OSError as e:
                raise self._tensorboard_failed(e) from None


class _Discard:
    """A file that takes bytes and keeps none (no ``fileno``: nothing to fsync)."""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All records of a run, in order; a last line cut off mid-record (a process killed while
    writing it) is left out, as a resumed run drops it; another line that is no record (a
    hand edit, a damaged disk) is left out with a note naming it (it was a traceback)."""
    path = os.path.join(workdir, "metrics.jsonl")
    lines, bad = _read_lines(path)
    if bad:
        print(f"note: {path}: line(s) {_listed([n for n, _ in bad])} are not JSON records (a "
              f"hand edit or a damaged disk?): left out", file=sys.stderr, flush=True)
    return [record for _, record in lines if record is not None]


def _read_lines(path: str) -> tuple[list[tuple[str, dict[str, Any] | None]],
                                     list[tuple[int, str]]]:
    """metrics.jsonl's non-blank lines as (line, its record or None for a torn last line),
    and the other lines that are no record as (line number, line): a crash tears only the
    last line, so one before it is a hand edit or a damaged disk."""
    with open(path) as f:
        numbered = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    lines, bad = [], []
    for i, (n, line) in enumerate(numbered):
        record = _record(line)
        if record is None and i < len(numbered) - 1:
            bad.append((n, line))
        else:
            lines.append((line, record))
    return lines, bad


def _record(line: str) -> dict[str, Any] | None:
    """The metrics record on ``line``, or None where it is none (torn, not JSON, no step)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def _listed(numbers: list[int]) -> str:
    more = f" and {len(numbers) - 10} more" if len(numbers) > 10 else ""
    return ", ".join(map(str, numbers[:10])) + more


def truncate_metrics(path: str, after_step: int) -> bool:
    """Drops the records past the restored step (written after the last checkpoint of a
    crashed run) and a torn last line; whether any record was dropped. Other lines that are
    no record (a hand edit, a damaged disk) are moved to ``metrics.jsonl.damaged``, said so:
    their step unknown, they were dropped with the later records, silently."""
    if not os.path.exists(path):
        return False
    lines, damaged = _read_lines(path)
    keep = [line for line, record in lines if record is not None and record["step"] <= after_step]
    dropped = len(keep) < len(lines)  # later records, or a torn last line
    unterminated = bool(keep) and not keep[-1].endswith("\n")  # the next record glued to it
    keep = [line if line.endswith("\n") else line + "\n" for line in keep]
    if damaged:
        with open(path + ".damaged", "a") as f:  # kept, not lost
            f.writelines(line if line.endswith("\n") else line + "\n" for _, line in damaged)
        print(f"note: {path}: line(s) {_listed([n for n, _ in damaged])} are not JSON records "
              f"(a hand edit or a damaged disk?): moved to {path}.damaged", file=sys.stderr,
              flush=True)
    if dropped or damaged or unterminated:
        with atomic_write(path) as f:
            f.writelines(keep)
    return dropped


def add_perplexity(record: dict[str, Any], word_level: bool) -> dict[str, Any]:
    """``record`` with ``perplexity`` = exp(loss in nats per token) for a word-level run."""
    if word_level and "loss" in record:
        record["perplexity"] = math.exp(min(float(record["loss"]), 700.0))
    return record


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    return value
