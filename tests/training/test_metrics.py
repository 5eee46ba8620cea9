"""metrics.jsonl and TensorBoard agree after a resume: the earlier run's records past the
checkpoint resumed from are gone from both."""

from __future__ import annotations

import os
import shutil
import struct

from tensorboardX.proto import event_pb2

from lmscale.training.loop import train
from lmscale.training.metrics import read_metrics
from tests.conftest import tiny_config


def read_events(path: str) -> list[event_pb2.Event]:
    """The events of one TFRecord event file (length, crc, payload, crc per record)."""
    events, data = [], open(path, "rb").read()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
        offset += 12 + length + 4
    return events


def visible_scalars(tb_dir: str, tag: str) -> dict[int, float]:
    """What TensorBoard shows for ``tag``: the files in name (= time) order, a SessionLog
    START at step s dropping every earlier event at step >= s (its documented purge)."""
    shown: dict[int, float] = {}
    for name in sorted(os.listdir(tb_dir)):
        for event in read_events(os.path.join(tb_dir, name)):
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                shown = {step: v for step, v in shown.items() if step < event.step}
            for value in event.summary.value:
                if value.tag == tag:
                    shown[event.step] = value.simple_value
    return shown


def test_a_resume_past_a_lost_checkpoint_drops_the_lost_steps_from_tensorboard(tmp_path, corpus):
    workdir = str(tmp_path / "run")
    settings = {"train.steps": 8, "train.eval_every": 0, "checkpoint.every": 4}
    train(tiny_config(corpus, **settings, **{"train.log_every": 2}), workdir)
    # A kill -9 after the logs of steps 6 and 8 but before checkpoint 8 was complete.
    shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))
    first = visible_scalars(os.path.join(workdir, "tb"), "train/loss")
    # Resumed from 4, logging every 4 steps: the first run's step 6 is no longer a record.
    train(tiny_config(corpus, **settings, **{"train.log_every": 4}), workdir)
    logged = {r["step"]: r["loss"] for r in read_metrics(workdir) if r["split"] == "train"}
    shown = visible_scalars(os.path.join(workdir, "tb"), "train/loss")
    assert sorted(shown) == sorted(logged) == [2, 4, 8]  # TensorBoard showed 6 too
    assert all(abs(shown[s] - logged[s]) < 1e-6 * abs(logged[s]) for s in shown)
    assert shown[2] == first[2] and shown[4] == first[4]  # the steps before the checkpoint stay


def test_two_writers_in_one_second_keep_both_event_files(tmp_path):
    """tensorboardX names a file by its second and host: a run resumed in the same second
    wrote over the first run's events (the test above lost steps 2 and 4 that way, at times)."""
    from lmscale.training.metrics import MetricsWriter
    for step in (1, 2):
        writer = MetricsWriter(str(tmp_path), resumed_from=step - 1)
        writer.write({"step": step, "split": "train", "loss": float(step)})
        writer.close()
    files = sorted(os.listdir(tmp_path / "tb"))
    assert len(files) == 2, files
    assert visible_scalars(str(tmp_path / "tb"), "train/loss") == {1: 1.0, 2: 2.0}


def test_a_full_disk_leaves_whole_lines_and_an_error_naming_the_file(tmp_path, monkeypatch):
    """A full disk mid-record left a torn line (JSON readers of metrics.jsonl failed on it) and
    an error naming no file; the line is written whole or not at all now, and a torn last line
    (a process killed while writing it) is left out by read_metrics."""
    import errno
    import json
    import pytest
    from lmscale.training import metrics
    writer = metrics.MetricsWriter(str(tmp_path), tensorboard=False)
    writer.write({"step": 1, "split": "train", "bpc": 1.5})
    real_write = os.write

    def half_then_full(fd, data):  # the disk fills after the first few bytes of the line
        if len(data) > 8:
            return real_write(fd, bytes(data[:8]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(metrics.os, "write", half_then_full)
    with pytest.raises(OSError) as error:
        writer.write({"step": 2, "split": "train", "bpc": 1.25})
    monkeypatch.undo()
    assert error.value.errno == errno.ENOSPC and error.value.filename == writer.path
    writer.close()
    assert open(writer.path).read() == json.dumps({"step": 1, "split": "train", "bpc": 1.5}) + "\n"
    with open(writer.path, "a") as f:
        f.write('{"step": 3, "split": "tr')  # killed mid-line
    assert read_metrics(str(tmp_path)) == [{"step": 1, "split": "train", "bpc": 1.5}]


def test_a_full_disk_under_tensorboard_is_one_error_naming_its_folder(tmp_path):
    """tensorboardX's failed flush raised an OSError naming no file, then retried at exit and in
    its thread: two tracebacks after the run's one-line error. In a child process (exit hooks)."""
    import subprocess
    import sys
    from tests.conftest import REPO
    script = f"""
import errno, os
from lmscale.training.metrics import MetricsWriter
w = MetricsWriter({str(tmp_path)!r})
w.write({{"step": 1, "split": "train", "bpc": 1.5}})

class Full:  # a buffered file on a full disk: writes are kept, a flush fails
    def write(self, data):
        return len(data)
    def flush(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    def close(self):
        self.flush()

for fw in w._tb.all_writers.values():  # tensorboardX's record file: the disk is full
    fw.event_writer._ev_writer._py_recordio_writer._writer = Full()
try:
    w.write({{"step": 2, "split": "train", "bpc": 1.25}})
except OSError as e:
    print("error", e.errno, e.filename)
w.close()
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["error", "28", str(tmp_path / "tb")]
    assert "Traceback" not in p.stderr and "Exception" not in p.stderr, p.stderr


def test_a_restart_from_no_checkpoint_drops_the_lost_run_from_tensorboard(tmp_path, corpus):
    """A run killed before its first checkpoint starts again at step 0: metrics.jsonl is
    emptied, and TensorBoard must drop the lost run's points too (no purge step was written
    at a start from 0)."""
    workdir = str(tmp_path / "run")
    settings = {"train.steps": 8, "train.eval_every": 0, "checkpoint.every": 100}
    train(tiny_config(corpus, **settings, **{"train.log_every": 2}), workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))  # a kill -9 before the only save
    train(tiny_config(corpus, **{**settings, "train.steps": 4}, **{"train.log_every": 4}), workdir)
    logged = {r["step"]: r["loss"] for r in read_metrics(workdir) if r["split"] == "train"}
    shown = visible_scalars(os.path.join(workdir, "tb"), "train/loss")
    assert sorted(shown) == sorted(logged) == [4]  # showed 2, 4, 6, 8 (6 and 8 of the lost run)


def test_a_finished_rerun_drops_the_records_past_its_checkpoint(tmp_path, corpus):
    """Killed after its last save with records logged past it, then re-run with as many steps
    as that save: "already trained", and metrics.jsonl kept the lost steps' records."""
    workdir = str(tmp_path / "run")
    settings = {"train.steps": 8, "train.eval_every": 0, "checkpoint.every": 4,
                "train.log_every": 2}
    train(tiny_config(corpus, **settings), workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))  # a kill -9 before the last save
    again = train(tiny_config(corpus, **{**settings, "train.steps": 4}), workdir)
    assert again["already_trained"]
    assert [r["step"] for r in read_metrics(workdir) if r["split"] == "train"] == [2, 4]
