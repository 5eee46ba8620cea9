"""Grid expansion from a sweep file, and the one-line errors of bad sweeps (no training)."""

from __future__ import annotations

import pytest

from lmscale.sweeps import SweepError, expand, load_sweep_spec
from lmscale.sweeps.grid import override_flags
from tests.sweeps.conftest import base_config, write_sweep


def test_expand_fields_named_axes_and_derived(tiny):
    path = write_sweep(tiny / "grid.py", """
        def get_sweep(cpu_budget_minutes=None):
            steps = 100 if cpu_budget_minutes is None else 10
            return {
                "grid": {
                    "train.batch_size": [4, 8],
                    "rule": {"none": {"optim.lr_scaling": "none"},
                             "capped": {"optim.lr_scaling": "linear", "optim.lr_max": 3e-3}},
                },
                "derived": lambda p: {"train.steps": steps * 4 // p["train.batch_size"]},
            }
    """)
    sweep = expand(load_sweep_spec(path, cpu_budget_minutes=5), base_config(tiny))
    assert sweep.axes == ["train.batch_size", "rule"]
    assert sweep.axis_values == {"train.batch_size": [4, 8], "rule": ["none", "capped"]}
    assert [p.name for p in sweep.points] == ["batch_size-4_rule-none", "batch_size-4_rule-capped",
                                              "batch_size-8_rule-none", "batch_size-8_rule-capped"]
    capped8 = sweep.points[3]
    assert capped8.values == {"train.batch_size": 8, "rule": "capped"}
    assert capped8.overrides == {"train.batch_size": 8, "optim.lr_scaling": "linear",
                                 "optim.lr_max": 3e-3, "train.steps": 5}
    assert override_flags(capped8.overrides) == [
        "--config.train.batch_size=8", "--config.optim.lr_scaling=linear",
        "--config.optim.lr_max=0.003", "--config.train.steps=5"]
    assert expand(load_sweep_spec(path), base_config(tiny)).points[0].overrides["train.steps"] == 100


@pytest.mark.parametrize("grid, message", [
    ('{"model.hiden": [8, 16]}', "swept field 'model.hiden' is not a config field (did you mean model.hidden?)"),
    ('{}', "the sweep's grid is empty"),
    ('{"model.hidden": []}', "the sweep's grid is empty: axis 'model.hidden' has no values"),
    ('{"model": [1]}', "swept field 'model' is a group of fields, not a field"),
    ('{"optim.lr_scaling": ["cube"]}', "optim.lr_scaling must be one of"),
    ('{"optim.lr": [1.0000001e-3, 1.0000002e-3]}',
     "points of the grid share a name (their folder): ['lr-0.001']; values that differ only past "
     "the name's precision cannot be told apart"),  # "the same values" before
    # Two axes setting one field: the last won, the point's name and report showed the other.
    ('{"model.hidden": [32], "r": {"a": {"model.hidden": 64}}}',
     "axes 'model.hidden' and 'r' both set model.hidden (32 and 64): set each field on one axis"),
    # A bool for an int field passed here and failed in the trainer's flag parser.
    ('{"model.hidden": [True]}', "swept field model.hidden=True: the field holds int values"),
    # Two labels of one run: trained twice.
    ('{"r": {"a": {"optim.lr": 1e-3}, "b": {"optim.lr": 1e-3}}}',
     "points ['r-a', 'r-b'] set the same fields to the same values: one run under several names"),
    ('{"train.batch_size": [4, 8]}, "derived": lambda p: {"train.batch_size": 16}',
     "the sweep's 'derived' sets train.batch_size=16 over axis 'train.batch_size''s 4 (point "
     "batch_size-4): derive other fields only"),
])
def test_bad_grid_is_one_line_error(tiny, grid, message):
    path = write_sweep(tiny / "bad.py", f"def get_sweep():\n    return {{'grid': {grid}}}\n")
    with pytest.raises(SweepError) as e:
        expand(load_sweep_spec(path), base_config(tiny))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_budget_needs_a_rule(tiny):
    path = write_sweep(tiny / "nobudget.py", "def get_sweep():\n    return {'grid': {'seed': [0, 1]}}\n")
    with pytest.raises(SweepError, match="no CPU-budget rule"):
        load_sweep_spec(path, cpu_budget_minutes=10)


def test_sweep_folder_identity_survives_new_default_fields(tmp_path):
    from lmscale.config import default_config
    from lmscale.sweeps.grid import Point, Sweep
    from lmscale.sweeps.workdir import claim
    sweep = Sweep(["seed"], {"seed": [0]}, [Point("seed-0", {"seed": 0}, {"seed": 0})])
    base = default_config().to_dict()
    older = {k: v for k, v in base.items() if k != "precision"}  # as written before a field existed
    older["train"] = {k: v for k, v in base["train"].items() if k != "log_every"}
    claim(str(tmp_path), older, sweep, "c.py", "s.py")
    claim(str(tmp_path), base, sweep, "c.py", "s.py")  # new fields at their defaults: the same sweep
    changed = {**base, "train": {**base["train"], "log_every": 7}}
    with pytest.raises(SweepError, match=r"holds a different sweep: its base config differs in train.log_every"):
        claim(str(tmp_path), changed, sweep, "c.py", "s.py")


def test_sweep_begun_before_a_field_names_its_default_and_how_to_continue(tmp_path):
    """A sweep begun before model.io_init existed, continued with a config that sets it: the
    refusal read "(None there, 'pytorch' here); use another --workdir" (the points it had
    trained ran at the default, and setting it back continues the sweep)."""
    from lmscale.config import default_config
    from lmscale.sweeps.grid import Point, Sweep
    from lmscale.sweeps.workdir import claim
    sweep = Sweep(["seed"], {"seed": [0]}, [Point("seed-0", {"seed": 0}, {"seed": 0})])
    base = default_config().to_dict()
    older = {**base, "model": {k: v for k, v in base["model"].items() if k != "io_init"}}
    claim(str(tmp_path), older, sweep, "c.py", "s.py")
    changed = {**base, "model": {**base["model"], "io_init": "pytorch"}}
    with pytest.raises(SweepError) as e:
        claim(str(tmp_path), changed, sweep, "c.py", "s.py")
    assert "model.io_init (absent there: its default 'uniform', 'pytorch' here)" in str(e.value)
    assert "--config.FIELD=VALUE" in str(e.value) and "None" not in str(e.value)
    claim(str(tmp_path), base, sweep, "c.py", "s.py")  # set back to the default: continues


def test_parallel_points_get_disjoint_gpu_groups(monkeypatch):
    from lmscale.sweeps.runner import device_groups
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4")
    assert device_groups(2) == [{"CUDA_VISIBLE_DEVICES": "0,1,2"}, {"CUDA_VISIBLE_DEVICES": "3,4"}]
    assert device_groups(1) == [{}]  # one process sees every device
    with pytest.raises(SweepError, match="--parallel=8 needs at least 8 GPUs; 5 are visible"):
        device_groups(8)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    # CPU: the points share the cores, so none splits the host into devices
    assert device_groups(3) == [{"JAX_NUM_CPU_DEVICES": "1"}] * 3


def test_more_gpu_groups_than_points_is_noted(monkeypatch):
    """--parallel=8 on a 2-point sweep ran each point on 1 of 8 GPUs, 6 idle, without a word."""
    from lmscale.sweeps.runner import device_groups, idle_groups_note
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    assert idle_groups_note(8, 2, device_groups(8)) == (
        "note: --parallel=8 with 2 points to train: each point runs on its group of 1 GPU and 6 "
        "groups stay idle; --parallel=2 would give each point more GPUs (and a larger global "
        "batch where train.per_device_batch_size sets it)")
    assert "group of 2 or 3 GPUs and 2 groups stay idle" in idle_groups_note(3, 1, device_groups(3))
    assert idle_groups_note(4, 4, device_groups(4)) is None  # every group busy
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert idle_groups_note(4, 2, device_groups(4)) is None  # CPU: no groups, fewer processes


def test_points_setting_a_per_device_batch_are_told_their_batch_follows_parallel():
    """--parallel changed such points' global batches (and rates) between re-runs, unsaid."""
    from lmscale.sweeps.grid import Point
    from lmscale.sweeps.runner import per_device_batch_note
    plain, per_device = Point("a", {}, {"optim.lr": 1e-3}), Point(
        "b", {}, {"train.per_device_batch_size": 4})
    assert per_device_batch_note([plain], 2) is None
    note = per_device_batch_note([plain, per_device], 2)
    assert note.startswith("note: the points set train.per_device_batch_size: each trains a "
                           "global batch of it times its devices (on a CPU host one device "
                           "each, on GPUs its group with --parallel=2)")
    assert "(all the host's with --parallel=1)" in per_device_batch_note([per_device], 1)
    # the command's own parallel.cpu_devices is each CPU slot's count (it said "one device")
    assert ("(on a CPU host 2 devices each (the command's parallel.cpu_devices), on GPUs its "
            "group with --parallel=2)") in per_device_batch_note([per_device], 2, "2")


def test_sweep_with_a_field_lmscale_dropped_says_so(tmp_path):
    """A sweep begun with a field lmscale no longer has: the refusal printed its 'default'
    as a sentinel's repr ('<object object at 0x...>')."""
    from lmscale.config import default_config
    from lmscale.sweeps.grid import Point, Sweep
    from lmscale.sweeps.workdir import claim
    sweep = Sweep(["seed"], {"seed": [0]}, [Point("seed-0", {"seed": 0}, {"seed": 0})])
    base = default_config().to_dict()
    claim(str(tmp_path), {**base, "model": {**base["model"], "old_knob": 3}}, sweep, "c.py", "s.py")
    with pytest.raises(SweepError) as e:
        claim(str(tmp_path), base, sweep, "c.py", "s.py")
    assert "model.old_knob (3 there, absent here: no longer a field of lmscale)" in str(e.value)
    assert "object at" not in str(e.value)
