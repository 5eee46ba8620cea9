"""``run_sweep``'s own lines."""

from __future__ import annotations

from lmscale.sweeps import run_sweep
from lmscale.sweeps.runner import Runner
from tests.sweeps.conftest import base_config, write_sweep


def test_at_a_time_is_at_most_the_points_to_run(tiny, tmp_path, monkeypatch):
    """--parallel=8 on a 2-point sweep said "(8 at a time)"."""
    monkeypatch.setattr(Runner, "run", lambda self, points: None)  # the line, not the training
    sweep_file = write_sweep(tmp_path / "s.py", """
        def get_sweep():
            return {"grid": {"optim.lr": [1e-3, 3e-3]}}
    """)
    lines: list[str] = []
    out = tmp_path / "out"
    run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(out), parallel=8,
              log=lines.append)
    assert lines[0] == f"sweep: 2 points in {out} (2 at a time)"
    run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(out), parallel=1,
              log=lines.append)
    assert lines[2] == f"sweep: 2 points in {out} (1 at a time)"
