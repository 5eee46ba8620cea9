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

