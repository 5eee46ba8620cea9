"""NT-ASGD across processes: the switch to averaging placed its two scalars from device
arrays on a sharding over both processes' devices, an array orbax could not save ("input
arrays must have one shard each"): a 2-process run failed at the first checkpoint after the
switch, leaving only its temporary folder."""

from __future__ import annotations

import json

from tests.conftest import tiny_train_command, write_corpus
from tests.launch.test_agreement import run_two


def test_a_two_process_run_checkpoints_after_the_switch_to_averaging(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    cmd = tiny_train_command(run, corpus, "--initialization_timeout=60", **{
        "optim.name": "ntasgd", "optim.lr": 30.0, "optim.ntasgd_nonmono": 0,  # val loss rises
        "optim.warmup_steps": 0, "train.steps": 6, "train.eval_every": 1,  # at step 2: switch
        "train.eval_steps": 2, "checkpoint.every": 2})
    for status, err in run_two([cmd, cmd], timeout=240):
        assert status == 0, err[-3000:]
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 6 and not list((run / "checkpoints").glob("*.orbax-checkpoint-tmp"))
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
           if '"split": "val"' in line]
    assert [r["averaged"] for r in val] == [False, False, True, True, True, True], val
