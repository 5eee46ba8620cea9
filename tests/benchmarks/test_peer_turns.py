"""benchmarks/peer_turns.py: the rounds' ratios, the turn order, and the lmscale worker."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.peer_turns import round_ratios, turn_order

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


@pytest.mark.slow
def test_lmscale_worker_answers_with_the_times_of_its_steps():
    cmd = [sys.executable, str(REPO / "benchmarks" / "peer_turns.py"), "--worker", "lmscale",
           "--hidden", "32", "--batch", "4", "--seq", "8", "--compute", "float32",
           "--warmup", "1"]
    out = subprocess.run(cmd, cwd=REPO, input="3\n2\n0\n", capture_output=True, text=True,
                         timeout=300, check=True).stdout
    replies = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert replies[0]["ready"] and replies[0]["tokens_per_step"] == 32
    assert replies[0]["devices"] >= 1
    assert [len(r["times"]) for r in replies[1:]] == [3, 2]
    assert all(t > 0 for r in replies[1:] for t in r["times"])
