"""Progress on a 0-column pseudo-terminal (``script`` from a non-terminal): plain lines, since
tqdm draws an empty bar there."""

import fcntl
import os
import pty
import struct
import termios

from lmscale.messages import draws_bar


def test_zero_column_pty_gets_plain_lines():
    main, other = pty.openpty()
    try:
        with os.fdopen(other, "w", closefd=False) as stream:
            assert stream.isatty() and os.get_terminal_size(other).columns == 0
            assert not draws_bar(stream)
            fcntl.ioctl(other, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
            assert draws_bar(stream)
    finally:
        os.close(main)
        os.close(other)


def test_file_is_no_terminal(tmp_path):
    with open(tmp_path / "log", "w") as stream:
        assert not draws_bar(stream)


def test_training_on_a_zero_column_pty_prints_the_plain_progress_lines(tmp_path, corpus,
                                                                       monkeypatch):
    """train's own call: stderr a 0-column pseudo-terminal (``script`` from a non-terminal)
    gets the plain step lines, not tqdm's empty bar."""
    import sys
    import threading

    from lmscale.training.loop import train
    from tests.conftest import tiny_config
    main, other = pty.openpty()
    chunks: list[bytes] = []

    def drain():
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stream = os.fdopen(other, "w", closefd=False)
    try:
        assert stream.isatty() and os.get_terminal_size(other).columns == 0
        monkeypatch.setattr(sys, "stderr", stream)
        train(tiny_config(corpus, **{"train.steps": 2, "train.log_every": 1,
                                     "train.eval_every": 2, "train.progress_bar": True}),
              str(tmp_path / "run"))
        stream.flush()
    finally:
        monkeypatch.undo()
        os.close(other)
        reader.join(timeout=10)
        os.close(main)
    said = b"".join(chunks).decode(errors="replace")
    assert "step 2/2: loss" in said, said[-2000:]
