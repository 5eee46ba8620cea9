"""A non-UTF-8 locale (LC_ALL=C with PYTHONUTF8=0, PYTHONIOENCODING=ascii): the tools print
non-ASCII text without a traceback, write their files as UTF-8, and say in one line why a
checkpoint folder they cannot hand to orbax is refused."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, env: dict[str, str], *args: str, cwd: str | None = None):
    environ = {k: v for k, v in os.environ.items()
               if k not in ("LANG", "LC_ALL", "LC_CTYPE", "PYTHONUTF8", "PYTHONIOENCODING")}
    environ.update(env, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code, *args], env=environ, cwd=cwd,
                          capture_output=True, timeout=120)


ASCII_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0"}


def test_output_streams_escape_what_an_ascii_stdout_cannot_encode():
    code = ("from lmscale.cli import tolerant_output_streams\n"
            "import sys\n"
            "tolerant_output_streams()\n"
            "print('caf\\u00e9 \\u4e2d \\U0001F600')\n"
            "print(sys.argv[1])\n")
    for env in ({"PYTHONIOENCODING": "ascii"}, ASCII_LOCALE):
        done = _python(code, env, "r\u00e9sum\u00e9" if "LC_ALL" not in env else "x")
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout.splitlines()[0] == b"caf\\xe9 \\u4e2d \\U0001f600"


def test_an_argument_the_locale_could_not_decode_is_printed_as_its_bytes():
    code = ("from lmscale.cli import tolerant_output_streams\n"
            "import sys\n"
            "tolerant_output_streams()\n"
            "print(sys.argv[1])\n")
    environ = {k: v for k, v in os.environ.items() if k not in ("LANG", "LC_CTYPE")}
    environ.update(ASCII_LOCALE, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable.encode(), b"-c", code.encode(), "d\u00e9j\u00e0".encode()],
                          env=environ, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.strip() == "d\u00e9j\u00e0".encode()


def test_atomic_write_writes_utf8_under_an_ascii_locale(tmp_path):
    path = tmp_path / "report.md"
    code = ("import sys\n"
            "from lmscale.atomic import atomic_write\n"
            "with atomic_write(sys.argv[1]) as f:\n"
            "    f.write('lr \\u00d7 batch \\u00b7 \\u2013')\n")
    done = _python(code, ASCII_LOCALE, str(path))
    assert done.returncode == 0, done.stderr.decode()
    assert path.read_bytes().decode("utf-8") == "lr \u00d7 batch \u00b7 \u2013"


def test_commands_log_keeps_a_non_ascii_argument_under_an_ascii_locale(tmp_path):
    code = ("import sys\n"
            "sys.argv[1:] = ['--workdir=' + sys.argv[1]]\n"
            "from lmscale.training.command_log import record_command\n"
            "record_command(sys.argv[1].split('=', 1)[1], 0, 1, 1)\n")
    workdir = tmp_path / "run \u00e9"
    workdir.mkdir()
    environ = {k: v for k, v in os.environ.items() if k not in ("LANG", "LC_CTYPE")}
    environ.update(ASCII_LOCALE, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable.encode(), b"-c", code.encode(), os.fsencode(workdir)],
                          env=environ, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    log = (workdir / "commands.log").read_bytes().decode("utf-8")
    assert "run \u00e9" in log


def test_predictions_to_stdout_are_utf8_under_an_ascii_stdout():
    code = ("import numpy as np\n"
            "from lmscale.finetuning.predict import write_predictions\n"
            "write_predictions('-', ['tr\\u00e8s bon \\U0001F600', '\\u597d'],\n"
            "                  np.array([[0.25, 0.75], [0.5, 0.5]]), np.array([1, 0]),\n"
            "                  ['neg', 'pos'], False)\n"
            "print('after')\n")
    for env in ({"PYTHONIOENCODING": "ascii"}, ASCII_LOCALE):
        done = _python(code, env)
        assert done.returncode == 0, done.stderr.decode()
        lines = done.stdout.decode("utf-8").splitlines()
        assert lines[1].startswith("tr\u00e8s bon \U0001F600,0.250000,0.750000,pos")
        assert lines[2].startswith("\u597d,")
        assert lines[-1] == "after"


def test_stdout_is_given_back_its_encoding_after_the_predictions():
    """Standard output is UTF-8 while the CSV is written only: a line printed after it is
    escaped as the tools' other lines are under an ASCII stdout."""
    code = ("import numpy as np\n"
            "from lmscale.cli import tolerant_output_streams\n"
            "from lmscale.finetuning.predict import write_predictions\n"
            "tolerant_output_streams()\n"
            "write_predictions('-', ['\\u597d'], np.array([[0.25, 0.75]]), np.array([1]),\n"
            "                  ['neg', 'pos'], False)\n"
            "print('caf\\u00e9')\n")
    done = _python(code, {"PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.splitlines()
    assert lines[1].startswith("\u597d,".encode("utf-8")), lines
    assert lines[-1] == b"caf\\xe9", lines


def test_checkpoint_paths_orbax_cannot_take_are_refused_in_one_line(tmp_path):
    from lmscale.training.checkpoints import path_encoding_problem
    assert path_encoding_problem("/tmp/runs/x") is None
    assert path_encoding_problem("/tmp/runs/\udcc3\udca9") is not None  # bytes not decoded
    utf8 = sys.getfilesystemencoding().lower().replace("-", "") == "utf8"
    assert (path_encoding_problem("/tmp/runs/\u00e9") is None) == utf8
    code = ("import sys\n"
            "from lmscale.training.checkpoints import Checkpointer, CheckpointError\n"
            "try:\n"
            "    Checkpointer(sys.argv[1])\n"
            "except CheckpointError as e:\n"
            "    print('refused:', e)\n")
    environ = {k: v for k, v in os.environ.items() if k not in ("LANG", "LC_CTYPE")}
    environ.update(ASCII_LOCALE, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable.encode(), b"-c", code.encode(),
                           os.fsencode(tmp_path / "run \u00e9")],
                          env=environ, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.startswith(b"refused: cannot use the checkpoints of ")
    assert b"PYTHONUTF8=1" in done.stdout


def test_a_path_under_a_non_utf8_file_system_encoding_is_refused(monkeypatch):
    """Under an ISO-8859-1 locale "é" decodes to a character that encodes as UTF-8 too, and
    still reaches tensorstore as bytes it cannot cast: refused, an ASCII path not."""
    from lmscale.training.checkpoints import path_encoding_problem
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "iso8859-1")
    problem = path_encoding_problem("/tmp/runs/\u00e9")
    assert problem is not None and "reads paths as iso8859-1" in problem, problem
    assert path_encoding_problem("/tmp/runs/x") is None
