"""Mixed precision: a dtype policy and dynamic loss scaling for float16.

Policy (in the spirit of jmp): parameters and optimizer state stay float32 (master
weights); the model computes its matmuls in ``compute`` (float32, bfloat16 or float16);
logits, log-softmax, the loss, weight norm and gradient norms stay float32.

float16 has a narrow range (max 65504, smallest normal 6e-5), so small gradients underflow.
Dynamic loss scaling multiplies the loss by S before differentiating, divides the
gradients by S in float32, and checks them: if any is inf/nan the step is skipped (params
and optimizer state unchanged) and S is halved (not below 1); after ``window`` consecutive
finite steps S doubles. sentiment-discovery's defaults: S0 = 2**32, factor 2, window 1000.
bfloat16 has float32's range and needs no scaling (S stays 1).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from lmscale.config import MAX_LOSS_SCALE

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class Policy:
    """Dtypes of parameters, compute and outputs (logits/loss)."""
    params: Any = jnp.float32
    compute: Any = jnp.float32
    output: Any = jnp.float32

    @classmethod
    def parse(cls, text: str) -> "Policy":
        """'params=float32,compute=bfloat16,output=float32' (missing parts stay float32)."""
        fields: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, name = part.partition("=")
            if key not in ("params", "compute", "output") or name not in DTYPES:
                raise ValueError(f"bad precision policy part {part!r} in {text!r}: expected "
                                 f"params|compute|output = one of {sorted(DTYPES)}")
            fields[key] = DTYPES[name]
        return cls(**fields)

    @classmethod
    def from_compute(cls, compute: str) -> "Policy":
        """The training policy: float32 params and outputs, ``compute`` for the matmuls."""
        return cls.parse(f"params=float32,compute={compute},output=float32")

    @property
    def needs_loss_scaling(self) -> bool:
        return jnp.dtype(self.compute) == jnp.dtype(jnp.float16)

    def __str__(self) -> str:
        names = {jnp.dtype(v): k for k, v in DTYPES.items()}
        return ",".join(f"{f}={names[jnp.dtype(getattr(self, f))]}"
                        for f in ("params", "compute", "output"))


@flax.struct.dataclass
class LossScale:
    """Dynamic loss-scale state, part of the train state (and so of checkpoints).

    ``scale`` float32 S; ``good_steps`` int32 consecutive finite steps since S last changed;
    ``skipped`` int32 total steps skipped for non-finite gradients. ``dynamic`` (static) is
    False for float32/bfloat16: S stays 1 and nothing is ever skipped.
    """
    scale: jax.Array
    good_steps: jax.Array
    skipped: jax.Array
    dynamic: bool = flax.struct.field(pytree_node=False, default=False)
    factor: float = flax.struct.field(pytree_node=False, default=2.0)
    window: int = flax.struct.field(pytree_node=False, default=1000)

    @classmethod
    def create(cls, dynamic: bool, initial: float = 2.0**32, factor: float = 2.0,
               window: int = 1000) -> "LossScale":
        return cls(scale=jnp.asarray(initial if dynamic else 1.0, jnp.float32),
                   good_steps=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32),
                   dynamic=dynamic, factor=float(factor), window=int(window))

    @classmethod
    def for_precision(cls, policy: "Policy", precision: Any) -> "LossScale":
        """The initial loss scale of a run: dynamic when ``policy`` needs it (float16), from
        the config's ``precision.loss_scale_*`` fields."""
        return cls.create(policy.needs_loss_scaling, precision.loss_scale_init,
                          precision.loss_scale_factor, precision.loss_scale_window)

    def update(self, finite: jax.Array) -> "LossScale":
        """The state after a step whose (unscaled) gradients were all finite or not."""
        if not self.dynamic:
            return self
        grown = self.good_steps + 1 >= self.window
        # Capped: a scale grown past float32's range is inf, and inf halved stays inf (every
        # later step skipped, and the stuck-run stop, at S = 1, never reached).
        scale = jnp.where(finite,
                          jnp.where(grown, jnp.minimum(self.scale * self.factor, MAX_LOSS_SCALE),
                                    self.scale),
                          jnp.maximum(self.scale / self.factor, 1.0))
        good = jnp.where(finite & ~grown, self.good_steps + 1, 0)
        return self.replace(scale=scale.astype(jnp.float32), good_steps=good.astype(jnp.int32),
                            skipped=self.skipped + jnp.where(finite, 0, 1).astype(jnp.int32))


def resumed_loss_scale(state: Any, saved_precision: Any, policy: "Policy", precision: Any,
                       sharding: Any) -> tuple[Any, str | None]:
    """A resumed run's ``state`` (with a ``loss_scale``) and a note, when it resumes in another
    compute dtype than ``saved_precision``: the new precision starts its own loss scale
    (float16: ``precision.loss_scale_init``, not the inert 1 of a float32/bfloat16 checkpoint;
    float32 after float16: 1, not float16's leftover); the count of skipped steps goes on."""
    if saved_precision is None or saved_precision == precision.compute:
        return state, None  # None: a checkpoint from before the record (none is left to read)
    fresh = LossScale.for_precision(policy, precision).replace(
        skipped=jax.device_get(state.loss_scale.skipped))
    state = state.replace(loss_scale=jax.device_put(fresh, sharding))
    scale = (f"its loss scale starts at {precision.loss_scale_init:g}" if fresh.dynamic
             else "no loss scale")
    return state, (f"note: resuming in {precision.compute} (the checkpoint trained in "
                   f"{saved_precision}): {scale}")


# Steps skipped in a row, ending at the lowest loss scale (1), after which a float16 run is
# stopped: its descent from 2**32 skips 32; a run whose gradients overflow even unscaled would
# otherwise skip every step to its end and exit 0.
STUCK_STEPS = 50


class SkippedRun:
    """Host-side, at each log record and checkpoint: the steps skipped in a row (whole windows
    of them, so checked every ``train.log_every`` steps), an error once they are STUCK_STEPS
    or more and the loss scale has come down to 1.

    ``every`` (``train.log_every``): the windows end at its multiples only, whenever the run
    was stopped and resumed (a save or a stop between two of them counts the window so far
    without ending it), so a resumed run counts as an uninterrupted one; 0: at every call."""

    def __init__(self, step: int, skipped: int, run: int = 0, every: int = 0) -> None:
        """``run``: the steps skipped in a row before ``step`` (a resumed run's checkpoint
        record keeps it: each start counted from 0, so a run stopped more often than every
        STUCK_STEPS steps never stopped, and a resumed one named the wrong step)."""
        self.last_step, self.last_skipped, self.run = step, skipped, int(run)
        self.every = int(every)

    @classmethod
    def resumed(cls, saved: dict | None, same_precision: bool, start: int, skipped: int,
                every: int) -> "SkippedRun":
        """From a checkpoint's record: its last window's start (``skipped_run``; a record from
        before it: ``skipped_in_a_row`` up to the checkpoint), or afresh at ``start``."""
        if saved is None or not same_precision:
            return cls(start, skipped, 0, every)
        record = saved.get("skipped_run")
        if record:
            return cls(int(record["step"]), int(record["skipped"]), int(record["run"]), every)
        return cls(start, skipped, saved.get("skipped_in_a_row", 0), every)

    def record(self) -> dict:
        """What a checkpoint's record keeps: the start of the window in progress and the run
        before it."""
        return {"step": self.last_step, "skipped": self.last_skipped, "run": self.run}

    def peek(self, step: int, skipped: int, dynamic: bool) -> int:
        """The run up to ``step``, the window not ended."""
        window = step - self.last_step
        if window <= 0:
            return self.run
        all_skipped = dynamic and skipped - self.last_skipped == window
        return self.run + window if all_skipped else 0

    def advance(self, step: int, skipped: int, dynamic: bool) -> int:
        """Counts the steps since the last call into the run (all skipped) or ends it; the run.
        Off the ``every`` grid, the run so far without ending the window."""
        run = self.peek(step, skipped, dynamic)
        if self.every and step % self.every:
            return run
        if step > self.last_step:
            self.run = run  # 0: the weights are those before the run
            self.last_step, self.last_skipped = step, skipped
        return self.run

    def after_log(self, step: int, skipped: int, scale: float, dynamic: bool) -> str | None:
        """The error to stop with once STUCK_STEPS steps in a row were skipped at scale 1."""
        run = self.advance(step, skipped, dynamic)
        if run < STUCK_STEPS or scale > 1.0:
            return None
        return (f"float16: the last {run} steps were all skipped, down to the lowest loss "
                f"scale (1): the gradients are not finite even unscaled (the float16 forward overflows, "
                f"or the run diverged); the weights are those of step {step - run}. Resume "
                f"in bfloat16 (--config.precision.compute=bfloat16) or with a lower optim.lr")


def all_finite(tree: Any) -> jax.Array:
    """True iff every element of every leaf is finite (bool scalar)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def select_tree(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Leafwise ``where(pred, a, b)`` for two pytrees of the same structure."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (the first ``flags`` line of /proc/cpuinfo; empty elsewhere)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


@dataclasses.dataclass(frozen=True)
class ComputeAdvice:
    """What a tool's compute-dtype hint says: the option to use, on a CPU with AMX running
    float32 (``to_bfloat16``) and on one without AMX running bfloat16 (``to_float32``)."""
    to_bfloat16: str
    to_float32: str


TRAIN_ADVICE = ComputeAdvice(
    to_bfloat16="--config.precision.compute=bfloat16 trains 1.5-2x faster here with float32 "
                "master weights and state",
    to_float32="--config.precision.compute=float32 trains faster here (1.7-1.9x at 1024 units)")
FEATURIZE_ADVICE = ComputeAdvice(
    to_bfloat16="--compute=bfloat16 featurizes ~3x faster here, the features within ~0.2 % "
                "of float32's",
    to_float32="--compute=float32 featurizes faster here")


def faster_compute_hint(compute: str, platform: str, flags: set[str],
                        advice: ComputeAdvice = TRAIN_ADVICE) -> str | None:
    """A one-line hint when the other compute dtype's matmuls run much faster, else None.

    On a CPU with AMX (Intel Sapphire Rapids and later), XLA:CPU (jaxlib >= 0.10) runs
    bfloat16 matmuls with float32 accumulation on the AMX tiles (1.6-1.75 TFLOP/s against
    ~0.33 in float32 on 2 cores). There the mixed-precision step (float32 master weights,
    state and gate math) runs 1.5x (256 units) to 2x (1024) as fast with the same validation
    BPC, and featurizing 2-3x (benchmarks/README.md). Without AMX the bfloat16 matmuls are
    slower than float32's: the 1024-unit mLSTM step took 1.7-1.9x as long in bfloat16 (float16
    level with float32), so float32 stays the default and a bfloat16 run is told. AMX has no
    float16 path: there a float16 run (loss scaling, made for GPUs) took 1.5-1.6x as long as
    float32 (the quickstart, 585 vs 372 ms) and is pointed to bfloat16. ``flags`` empty (not
    read): no hint.
    """
    if platform != "cpu" or not flags:
        return None
    amx = "amx_bf16" in flags
    if compute == "float32" and amx:
        return f"this CPU has AMX, which runs bfloat16 matmuls: {advice.to_bfloat16} " \
               "(benchmarks/README.md)"
    if compute == "float16" and amx:
        return "this CPU's AMX runs bfloat16 matmuls, not float16 (float16 steps took ~1.6x " \
               f"float32's here): {advice.to_bfloat16} (benchmarks/README.md)"
    if compute == "bfloat16" and not amx:
        return "this CPU has no AMX, so its bfloat16 matmuls are slower than float32's: " \
               f"{advice.to_float32} (benchmarks/README.md)"
    return None


def print_compute_hint(compute: str, device: jax.Device,
                       advice: ComputeAdvice = TRAIN_ADVICE) -> None:
    """Prints :func:`faster_compute_hint` for a run on ``device`` (the tools' start) to stderr,
    with their notes: on stdout, a reader gone before it (``train ... | true``, ``| grep -q``)
    ended the run at its start in a BrokenPipeError traceback."""
    hint = faster_compute_hint(compute, device.platform, cpu_flags(), advice)
    if hint:
        from lmscale.messages import for_caller
        print(for_caller(f"hint: {hint}"), file=sys.stderr, flush=True)
