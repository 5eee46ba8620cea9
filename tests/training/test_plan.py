"""The dry-run plan: compiles without data or weights and reports memory and collectives."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_plan_cli_on_four_virtual_devices(tmp_path):
    out = tmp_path / "plan.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lmscale.plan", "--config=configs/quickstart.py", "--devices=4",
         "--config.precision.compute=bfloat16", "--config.train.per_device_batch_size=16",
         f"--json={out}", "--flops_per_s=1e12", "--bandwidth_gbps=10", "--project=1,4,64"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "all-reduces    1 per step" in proc.stdout
    p = json.loads(out.read_text())
    assert p["devices"] == 4 and p["global_batch"] == 64 and p["per_device_batch"] == 16
    assert p["precision"] == "params=float32,compute=bfloat16,output=float32"
    # One all-reduce per step: every float32 gradient plus the three loss sums.
    assert p["all_reduces_per_step"] == 1
    assert p["all_reduce_bytes_per_step"] == 4 * (p["params"] + 3)
    mem = p["memory_per_device_bytes"]
    assert mem["arguments"] >= 4 * p["params"] * 3  # params + Adam's two moments, replicated
    assert mem["total"] > 0 and mem["aliased (donated)"] > 0
    rows = {r["devices"]: r for r in p["projection"]["rows"]}
    assert sorted(rows) == [1, 4, 64] and rows[1]["allreduce_s"] == 0 and "scaling" in proc.stdout
    compute = 3 * p["flops_per_token_forward"] * 16 * p["seq_len"] / 1e12
    assert abs(rows[4]["compute_s"] - compute) < 1e-12
    assert abs(rows[4]["allreduce_s"] - 1.5 * p["all_reduce_bytes_per_step"] * 8 / 10e9) < 1e-12


def test_projection_matches_the_issue_arithmetic():
    """4096-d mLSTM at 65,536 chars per GPU per step in 73 ms, 329 MiB float32 all-reduce over
    400 Gbit/s: about 14 ms of ring all-reduce, about 84 % scaling."""
    from lmscale.training.projection import project
    plan = {"per_device_batch": 256, "seq_len": 256, "flops_per_token_train": 1.0,
            "all_reduce_bytes_per_step": 329 * 2**20}
    [row] = project(plan, flops_per_s=65536 / 0.073, bandwidth_gbit_s=400, device_counts=[1024])
    assert abs(row["compute_s"] - 0.073) < 1e-9
    assert 0.0135 < row["allreduce_s"] < 0.0140 and 0.83 < row["scaling_efficiency"] < 0.85
    assert abs(row["chars_per_s"] - 1024 * 65536 / row["step_s"]) < 1e-3


def test_projection_flags_are_checked_before_the_compile():
    """A projection without --bandwidth_gbps, or --project=8,x, was a traceback after the
    compile; --project=0,-8 printed rows of 0 and -32 sequences."""
    for flags, message in ((["--flops_per_s=1e12"], "a projection needs both --flops_per_s and "
                                                     "--bandwidth_gbps (> 0), got 1e+12 and 0"),
                           (["--flops_per_s=1e12", "--bandwidth_gbps=100", "--project=8,x"],
                            "--project takes device counts (integers >= 1), got 'x'"),
                           (["--flops_per_s=1e12", "--bandwidth_gbps=100", "--project=0,-8"],
                            "--project takes device counts (integers >= 1), got '0'")):
        proc = subprocess.run([sys.executable, "-m", "lmscale.plan", "--config=configs/quickstart.py",
                               "--config.model.hidden=1000000", *flags],  # a compile would not end
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and proc.stderr.strip() == f"error: {message}", proc.stderr[-2000:]


def test_projection_of_a_subword_model_has_no_chars_per_s():
    """Its chars/s was tokens/s (no bytes per token are known before the text is read)."""
    from lmscale.training.projection import format_projection, project
    plan = {"per_device_batch": 2, "seq_len": 8, "flops_per_token_train": 1e6,
            "all_reduce_bytes_per_step": 1000}
    [row] = project(plan, 4e11, 100, [2], bytes_per_token=None)
    assert row["chars_per_s"] is None and row["tokens_per_s"] > 0
    table = format_projection([row], 4e11, 100)
    assert "at 0.4 TFLOP/s per device" in table  # "at 0 TFLOP/s" before
    assert table.splitlines()[-1].split()[-1] == "-"


def test_plan_rejects_indivisible_batch(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lmscale.plan", "--config=configs/quickstart.py", "--devices=3"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: train.batch_size=32 is not divisible by the 3 devices")


def test_plan_says_whether_it_fits_and_plans_remat_when_it_does_not(tmp_path):
    """--memory_gib below the step's memory: "fits no" and a remat plan with less memory,
    remat_steps lowered to a divisor of seq_len (10 -> 8 for 24)."""
    out = tmp_path / "plan.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lmscale.plan", "--config=configs/quickstart.py", "--devices=2",
         "--config.model.hidden=64", "--config.train.seq_len=24",
         "--config.model.remat_steps=10", "--memory_gib=0.001", f"--json={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    p = json.loads(out.read_text())
    fit = p["fit"]
    assert fit["fits"] is False and fit["remat"]["remat_steps"] == 8
    assert fit["remat"]["memory_bytes"] < p["memory_per_device_bytes"]["total"]
    assert "fits           no:" in proc.stdout and "--config.model.remat_steps=8:" in proc.stdout


def test_fit_above_the_memory_and_which_configs_get_a_remat_plan():
    """A step within the memory fits, with no remat plan (nothing compiled); with_remat turns
    remat on only for mlstm/lstm without it, at half of seq_len when remat_steps would make
    one segment."""
    from lmscale.config import default_config
    from lmscale.training.plan import fit, format_fit, with_remat
    result = {"memory_per_device_bytes": {"total": 2**30}, "vocab_size": 257}
    config = default_config()
    config.train.seq_len = 24
    assert fit(config, None, result, 1.5) == {"memory_gib": 1.5, "fits": True, "remat": None}
    assert format_fit(result, fit(config, None, result, 1.5)) == \
        "fits           yes: 1.00 of 1.5 GiB per device"
    remat = with_remat(config)  # remat_steps 32 >= 24
    assert (remat.model.remat, remat.model.remat_steps) == ("segments", 12)
    assert config.model.remat == "none"  # a copy
    assert with_remat(remat) is None
    config.model.kind = "transformer"
    assert with_remat(config) is None


def test_plan_compiles_the_recurrence_loops_the_target_runs():
    """--layout=batch plans the GPUs' loops on this CPU: another program, its memory its own."""
    from lmscale.models.recurrent import scan_options
    from lmscale.training.plan import format_plan, plan
    from tests.conftest import tiny_config
    config = tiny_config("unused.txt")
    feature = plan(config)
    with scan_options(layout="batch"):
        batch = plan(config)
    assert feature["recurrence_loops"] == "feature" and batch["recurrence_loops"] == "batch"
    assert "batch-major recurrence loops" in format_plan(batch)
    assert (batch["memory_per_device_bytes"]["temporaries"]
            != feature["memory_per_device_bytes"]["temporaries"])
    assert batch["flops_per_step_train"] == feature["flops_per_step_train"]


def test_plan_of_variable_bptt_compiles_its_longest_step_on_the_cores_train_uses(tmp_path):
    """With train.variable_bptt the plan compiled at seq_len, while training compiles steps
    up to train.bptt_max (a "fits" verdict could OOM); and on a CPU host it planned one device
    where lmscale.train splits the host (parallel.cpu_devices)."""
    def plan_of(*flags: str) -> dict:
        out = tmp_path / "plan.json"
        proc = subprocess.run(
            [sys.executable, "-m", "lmscale.plan", "--config=configs/awd_lstm_word_cpu.py",
             "--config.model.hidden=32", "--config.model.embed=16",
             "--config.data.word_vocab_size=1000", f"--json={out}", *flags],
            cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return {**json.loads(out.read_text()), "stdout": proc.stdout}
    longest = plan_of("--config.train.bptt_max=200", "--config.parallel.cpu_devices=2")
    assert longest["seq_len"] == 200 and longest["variable_bptt"] and longest["devices"] == 2
    assert "seq 200 (the longest variable-BPTT step)" in longest["stdout"]
    fixed = plan_of("--config.train.variable_bptt=false", "--config.parallel.cpu_devices=1")
    assert fixed["seq_len"] == 35 and fixed["devices"] == 1 and not fixed["variable_bptt"]
    assert longest["memory_per_device_bytes"]["temporaries"] > fixed["memory_per_device_bytes"]["temporaries"]


def test_a_steps_flops_are_printed_in_a_unit_that_shows_them():
    """plan printed a tiny model's step as "0.00 TFLOP"."""
    from lmscale.training.plan import _flop
    assert [_flop(x) for x in (5.8e8, 4.2e13, 1.07e15, 512, 5.12e5)] == [
        "580 MFLOP", "42 TFLOP", "1.07 PFLOP", "512 FLOP", "512 kFLOP"]
