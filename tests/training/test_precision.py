"""Mixed precision: the policy, dynamic loss scaling, and float16 steps that overflow."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.config import default_config
from lmscale.models import build_model
from lmscale.training import mesh as mesh_lib
from lmscale.training.optimizer import make_optimizer
from lmscale.training.precision import (LossScale, Policy, SkippedRun, all_finite,
                                        resumed_loss_scale)
from lmscale.training.state import create_state
from lmscale.training.steps import make_train_step


def test_policy_parse_and_print():
    p = Policy.parse("params=float32,compute=bfloat16,output=float32")
    assert p.compute == jnp.bfloat16 and p.params == jnp.float32
    assert str(p) == "params=float32,compute=bfloat16,output=float32"
    assert Policy.from_compute("float16").needs_loss_scaling
    assert not Policy.from_compute("bfloat16").needs_loss_scaling
    with pytest.raises(ValueError, match="compute=float8"):
        Policy.parse("compute=float8")


def test_loss_scale_halves_on_overflow_and_grows_after_window():
    ls = LossScale.create(dynamic=True, initial=8.0, factor=2.0, window=3)
    ls = ls.update(jnp.asarray(False))
    assert float(ls.scale) == 4.0 and int(ls.skipped) == 1 and int(ls.good_steps) == 0
    for expected in (4.0, 4.0, 8.0, 8.0):
        ls = ls.update(jnp.asarray(True))
        assert float(ls.scale) == expected
    assert int(ls.skipped) == 1
    low = LossScale.create(dynamic=True, initial=1.0)
    assert float(low.update(jnp.asarray(False)).scale) == 1.0  # never below 1
    static = LossScale.create(dynamic=False)
    assert static.update(jnp.asarray(False)) is static and float(static.scale) == 1.0


def test_all_finite_is_every_leaf_finite():
    assert bool(all_finite({"a": jnp.full((3,), 2.0, jnp.float16), "b": jnp.ones((2,))}))
    assert not bool(all_finite({"a": jnp.asarray([1.0, jnp.inf])}))
    assert not bool(all_finite({"a": jnp.asarray([jnp.nan])}))


def _fp16_setup(initial_scale: float, window: int):
    cfg = default_config().model
    cfg.hidden, cfg.embed = 32, 16
    model = build_model(cfg, 257, rngs=nnx.Rngs(0), dtype=jnp.float16)
    tx, schedule = make_optimizer(default_config().optim, 100, lr=1e-3)
    ls = LossScale.create(dynamic=True, initial=initial_scale, factor=2.0, window=window)
    graphdef, state = create_state(model, tx, 4, seed=0, loss_scale=ls)
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    step = jax.jit(make_train_step(graphdef, tx, schedule, mesh, dropout=False))
    rng = np.random.default_rng(0)
    batch = {"inputs": jnp.asarray(rng.integers(1, 257, (4, 8)), jnp.int32),
             "targets": jnp.asarray(rng.integers(1, 257, (4, 8)), jnp.int32),
             "weights": jnp.ones((4, 8), jnp.float32), "resets": jnp.zeros((4, 8), bool)}
    return state, step, batch


def test_float16_overflow_skips_the_step_and_halves_the_scale():
    # S = 2**32 (sentiment-discovery's start): the float16 backward pass overflows.
    state, step, batch = _fp16_setup(2.0**32, window=1000)
    new, metrics = step(state, batch)
    assert not bool(metrics["finite"])
    assert float(new.loss_scale.scale) == 2.0**31 and int(new.loss_scale.skipped) == 1
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), (new.params, new.opt_state),
                        (state.params, state.opt_state))
    assert all(jax.tree.leaves(same))  # params and optimizer state unchanged
    assert int(new.step) == 1 and np.isfinite(float(metrics["loss"]))


def test_float16_finite_steps_update_and_grow_the_scale_after_the_window():
    state, step, batch = _fp16_setup(64.0, window=2)
    scales = []
    for _ in range(4):
        new, metrics = step(state, batch)
        assert bool(metrics["finite"])
        changed = jax.tree.leaves(jax.tree.map(lambda a, b: not bool(jnp.array_equal(a, b)),
                                               new.params, state.params))
        assert any(changed)
        state = new
        scales.append(float(state.loss_scale.scale))
    assert scales == [64.0, 128.0, 128.0, 256.0]
    assert int(state.loss_scale.skipped) == 0


def test_float16_gradients_match_float32_after_unscaling():
    """The unscaled float16 gradients agree with float32's to float16 accuracy."""
    state16, step16, batch = _fp16_setup(2.0**10, window=1000)
    cfg = default_config().model
    cfg.hidden, cfg.embed = 32, 16
    model = build_model(cfg, 257, rngs=nnx.Rngs(0))
    tx, schedule = make_optimizer(default_config().optim, 100, lr=1e-3)
    graphdef, state32 = create_state(model, tx, 4, seed=0)
    step32 = jax.jit(make_train_step(graphdef, tx, schedule, mesh_lib.make_mesh(jax.devices()[:1]),
                                     dropout=False))
    _, m16 = step16(state16, batch)
    _, m32 = step32(state32, batch)
    assert abs(float(m16["loss"]) - float(m32["loss"])) < 1e-2
    assert abs(float(m16["grad_norm"]) / float(m32["grad_norm"]) - 1) < 2e-2


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    from lmscale.training.precision import cpu_flags
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\nbugs\t\t: x\n")
    assert cpu_flags(str(info)) == {"fpu", "avx512f", "amx_bf16", "amx_tile"}
    assert cpu_flags(str(tmp_path / "absent")) == set()


@pytest.mark.parametrize("compute, platform, flags, hinted", [
    ("float32", "cpu", {"avx512f", "amx_bf16"}, "bfloat16"),
    ("float32", "cpu", {"avx512f", "avx512_bf16"}, None),  # no AMX
    ("bfloat16", "cpu", {"amx_bf16"}, None),  # already
    ("bfloat16", "cpu", {"avx512f", "avx512_bf16"}, "float32"),  # no AMX: slower than float32
    ("float16", "cpu", {"avx512f"}, None),  # level with float32 without AMX
    ("float16", "cpu", {"avx512_fp16", "amx_bf16"}, "bfloat16"),  # no AMX float16: 1.6x slower
    ("bfloat16", "cpu", set(), None),  # flags not read (not Linux)
    ("float32", "gpu", {"amx_bf16"}, None),  # the host CPU does not run the step
    ("bfloat16", "gpu", {"avx512f"}, None),
])
def test_compute_hint_only_where_the_other_dtype_pays(compute, platform, flags, hinted):
    """The training tools name --config.precision.compute=<hinted>, transfer --compute=."""
    from lmscale.training.precision import FEATURIZE_ADVICE, faster_compute_hint
    hint = faster_compute_hint(compute, platform, flags)
    featurize_hint = faster_compute_hint(compute, platform, flags, FEATURIZE_ADVICE)
    assert (hint is not None) == (hinted is not None) == (featurize_hint is not None)
    if hinted:
        assert f"--config.precision.compute={hinted} trains" in hint
        assert f"--compute={hinted} featurizes" in featurize_hint


def test_a_float16_run_skipping_every_step_at_scale_one_is_stopped():
    """Loss scale down to 1 and every step skipped (gradients not finite even unscaled): the
    run skipped to its end, saved checkpoints and exited 0. Logged every 10 steps here."""
    from lmscale.training.precision import STUCK_STEPS, SkippedRun
    run = SkippedRun(step=100, skipped=3)
    assert run.after_log(110, 13, 1.0, True) is None  # 10 of 10 skipped, at scale 1
    assert run.after_log(120, 22, 1.0, True) is None  # one step went through: the run restarts
    said = None
    for k in range(STUCK_STEPS // 10):
        said = run.after_log(130 + 10 * k, 32 + 10 * k, 1.0, True)
    assert said is not None and said.startswith(f"float16: the last {STUCK_STEPS} steps were all "
                                                "skipped, down to the lowest loss scale (1)")
    assert f"the weights are those of step {120 + 10 * (STUCK_STEPS // 10) - STUCK_STEPS}" in said
    calm = SkippedRun(step=0, skipped=0)  # the descent from 2**32 (scale still above 1)
    assert all(calm.after_log(10 * k, 10 * k, 2.0 ** (32 - 10 * k), True) is None for k in (1, 2, 3))
    assert all(SkippedRun(0, 0).after_log(s, s, 1.0, False) is None for s in (100, 200))  # static
    wide = SkippedRun(step=0, skipped=0)  # every 30 steps: the descent counts in the run
    assert wide.after_log(30, 30, 4.0, True) is None
    said = wide.after_log(60, 60, 1.0, True)
    assert "the last 60 steps" in said and "the weights are those of step 0" in said


def test_a_diverging_float16_run_ends_with_the_error(tmp_path, corpus):
    from lmscale.training.loop import DivergedError, train
    from tests.conftest import tiny_config
    config = tiny_config(corpus, **{"train.steps": 200, "precision.compute": "float16",
                                    "optim.lr": 100.0, "optim.clip": 0.0, "train.log_every": 10,
                                    "train.eval_every": 0, "checkpoint.every": 1000})
    with pytest.raises(DivergedError, match="float16: the last [0-9]+ steps were all skipped"):
        train(config, str(tmp_path / "run"))


def test_a_resumed_float16_run_counts_the_steps_skipped_before_its_stop(tmp_path, corpus):
    """Each start counted the steps skipped in a row from 0: a run stopped more often than
    every STUCK_STEPS steps never stopped on them, and a resumed one named the step it resumed
    at as the weights' (all its steps had been skipped). The count now travels in the record."""
    from lmscale.training.loop import DivergedError, train
    from tests.conftest import tiny_config
    kw = {"precision.compute": "float16", "precision.loss_scale_init": 1.0, "optim.lr": 1000.0,
          "optim.clip": 0.0, "optim.schedule": "constant", "optim.warmup_steps": 0,
          "train.log_every": 5, "train.eval_every": 0, "checkpoint.every": 10}
    said = {}
    for name, first in (("whole", None), ("parts", 48)):
        workdir = str(tmp_path / name)
        if first:
            train(tiny_config(corpus, **{**kw, "train.steps": first}), workdir)
        with pytest.raises(DivergedError, match="float16: the last [0-9]+ steps") as stuck:
            train(tiny_config(corpus, **{**kw, "train.steps": 150}), workdir)
        said[name] = (str(stuck.value), stuck.value.step)
    assert said["parts"] == said["whole"], said


def test_a_stop_between_two_log_records_leaves_the_skipped_run_count_as_uninterrupted():
    """A save or stop between two log records ended a window: a stretch of skipped steps that
    began inside it was counted from the stop in the resumed run but from the next record in an
    uninterrupted one, so the resumed run stopped a whole log_every earlier (a float16 run
    logging every 40 steps, skipping from step 28 at scale 1: resumed at 30, stopped at 80
    with "the last 50 steps"; uninterrupted, at 120 with "the last 80")."""
    from lmscale.training.precision import SkippedRun

    def stuck_at(stop: int | None) -> list:
        run = SkippedRun(0, 0, every=40)
        skipped = lambda s: max(0, s - 27)  # every step from 28 on skipped
        if stop is not None:  # the checkpoint's record, and the resumed run from it
            run.advance(stop, skipped(stop), True)
            run = SkippedRun.resumed({"precision": "float16", "skipped_run": run.record()}, True,
                                     stop, skipped(stop), 40)
        return [(s, run.after_log(s, skipped(s), 1.0, True)) for s in (40, 80, 120)
                if stop is None or s > stop]
    whole, parts = stuck_at(None), stuck_at(30)
    assert [x for x in whole if x[0] > 30] == parts
    assert parts[-1][1] is not None and "the last 80 steps" in parts[-1][1]
    assert parts[0][1] is None and parts[1][1] is None


def test_the_compute_hint_goes_to_stderr(capsys):
    """On stdout, ``train ... | true`` (a reader gone before the hint) ended the run at its
    start in a BrokenPipeError traceback; the tools' other notes were on stderr already."""
    from lmscale.training.precision import cpu_flags, faster_compute_hint, print_compute_hint
    if faster_compute_hint("float32", "cpu", cpu_flags()) is None:
        pytest.skip("this CPU gets no hint (no AMX)")
    print_compute_hint("float32", jax.devices("cpu")[0])
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("hint: ")


def test_a_resume_in_the_same_precision_keeps_its_loss_scale_and_another_starts_its_own():
    """float16 resumed in float16 goes on from the checkpoint's S (a fresh 2**32 would skip
    its first steps again), without a note; resumed from float32 it starts at
    loss_scale_init, the count of skipped steps kept."""
    state, _, _ = _fp16_setup(2.0**10, window=1000)
    state = state.replace(loss_scale=state.loss_scale.replace(skipped=jnp.asarray(3, jnp.int32)))
    precision = default_config().precision
    precision.compute = "float16"
    policy, device = Policy.from_compute("float16"), jax.devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    same, note = resumed_loss_scale(state, "float16", policy, precision, sharding)
    assert note is None and float(same.loss_scale.scale) == 2.0**10
    fresh, note = resumed_loss_scale(state, "float32", policy, precision, sharding)
    assert float(fresh.loss_scale.scale) == precision.loss_scale_init == 2.0**32
    assert int(fresh.loss_scale.skipped) == 3 and fresh.loss_scale.dynamic
    assert note == ("note: resuming in float16 (the checkpoint trained in float32): its loss "
                    "scale starts at 4.29497e+09")


def test_a_checkpoint_recording_only_skipped_in_a_row_resumes_its_run():
    """A checkpoint from before the ``skipped_run`` record keeps ``skipped_in_a_row``: 40
    steps skipped up to step 100 and 10 more after it are a run of 50 (>= STUCK_STEPS) that
    stops the run at scale 1, naming step 60's weights; another precision starts afresh."""
    run = SkippedRun.resumed({"skipped_in_a_row": 40}, True, 100, 40, every=0)
    error = run.after_log(110, 50, 1.0, True)
    assert error is not None and "the last 50 steps" in error and "step 60" in error
    fresh = SkippedRun.resumed({"skipped_in_a_row": 40}, False, 100, 40, every=0)
    assert fresh.after_log(110, 50, 1.0, True) is None
