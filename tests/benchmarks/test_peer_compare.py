"""benchmarks/peer_compare.py: lmscale's side is counted with the peer's statistic (the mean)."""

import pytest

from benchmarks.peer_compare import mean_chars_per_s


def test_mean_not_median_of_the_step_times():
    # One slow step in three: the median (0.1 s) would claim 40960 chars/s, the mean 20480.
    record = {"tokens_per_step": 4096, "step_s_all": [0.1, 0.1, 0.4], "chars_per_s": 40960.0}
    assert mean_chars_per_s(record) == pytest.approx(20480.0, rel=1e-12)
