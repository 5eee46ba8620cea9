"""benchmarks/peer_turns.py: the rounds' ratios, the turn order, and the lmscale worker."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.peer_turns import round_ratios, shares_of_matmul_rate, turn_order

REPO = Path(__file__).resolve().parents[2]


def test_each_round_compares_with_the_best_peer_of_that_round():
    rounds = [{"lmscale": 100.0, "peer_bptt": 80.0, "peer_autograd": 50.0},
              {"lmscale": 50.0, "peer_bptt": 40.0, "peer_autograd": 62.5},
              {"lmscale": 90.0, "lmscale_1dev": 200.0, "peer_bptt": 90.0, "peer_autograd": 10.0}]
    assert round_ratios(rounds, "lmscale", ["peer_bptt", "peer_autograd"]) == [1.25, 0.8, 1.0]


def test_turns_rotate_so_no_side_always_goes_first():
    sides = ["lmscale", "peer_bptt", "peer_autograd"]
    firsts = [turn_order(sides, i)[0] for i in range(6)]
    assert firsts == sides + sides
    assert all(sorted(turn_order(sides, i)) == sorted(sides) for i in range(6))


def test_share_of_the_matmul_rate_is_taken_per_round():
    rounds = [{"lmscale": 1000.0, "matmul": 2e9}, {"lmscale": 500.0, "matmul": 0.5e9}]
    assert shares_of_matmul_rate(rounds, 1e6) == [0.5, 1.0]


def _worker(kind: str, *args: str) -> list[dict]:
    cmd = [sys.executable, str(REPO / "benchmarks" / "peer_turns.py"), "--worker", kind,
           "--compute", "float32", "--warmup", "1", *args]
    out = subprocess.run(cmd, cwd=REPO, input="3\n2\n0\n", capture_output=True, text=True,
                         timeout=300, check=True).stdout
    replies = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert replies[0]["ready"]
    assert [len(r["times"]) for r in replies[1:]] == [3, 2]
    assert all(t > 0 for r in replies[1:] for t in r["times"])
    return replies


@pytest.mark.slow
def test_lmscale_worker_answers_with_the_times_of_its_steps():
    ready = _worker("lmscale", "--hidden", "32", "--batch", "4", "--seq", "8")[0]
    assert ready["tokens_per_step"] == 32 and ready["devices"] >= 1 and "commit" in ready
    assert ready["train_flops_per_token"] > 3 * 2 * 5 * 32 * 32  # at least the recurrence's


@pytest.mark.slow
def test_matmul_worker_counts_flops_as_its_tokens():
    assert _worker("matmul")[0]["tokens_per_step"] == 5 * 2 * 2048 ** 3
