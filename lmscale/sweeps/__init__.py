"""Sweeps: a grid of ordinary runs, divergence detection, transfer and a report.

``run_sweep`` is what ``python -m lmscale.sweep`` calls; grid.py expands sweep files,
runner.py trains the points, divergence.py decides "div", report.py writes the report.
"""

from lmscale.sweeps.grid import Point, Sweep, SweepError, expand, load_sweep_spec
from lmscale.sweeps.run import run_sweep

__all__ = ["Point", "Sweep", "SweepError", "expand", "load_sweep_spec", "run_sweep"]
