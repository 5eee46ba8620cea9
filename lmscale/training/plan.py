"""Dry run: compile the training step of a config for a device count, without data or weights.

Reports what a user needs before booking a cluster: parameters, FLOPs per token and per
step, per-device memory from the compiled program's own memory analysis, and the
collectives each step performs (number and bytes of all-reduces). The state is abstract
(shapes only), so even the 8192-d model is planned without allocating it. Given a device's
memory, ``fit`` says whether the step fits, and plans the recurrent models' remat
(``model.remat="segments"``) when it does not.
"""

from __future__ import annotations

import copy
from typing import Any

import jax
import ml_collections

from lmscale.config import derive, step_width, validate, with_global_batch
from lmscale.config_values import bptt_max
from lmscale.models import architecture, flops_per_token, get_kind
from lmscale.training.flops import loss_tail_shares, train_flops_per_token
from lmscale.training import mesh as mesh_lib
from lmscale.training.hlo_stats import all_reduces
from lmscale.training.setup import BATCH_KEYS, build_train_setup, jit_train_step

BATCH_DTYPES = {"inputs": "int32", "targets": "int32", "weights": "float32", "resets": "bool"}


def plan(config: ml_collections.ConfigDict, devices: list[jax.Device] | None = None,
         vocab_size: int | None = None) -> dict[str, Any]:
    """Compiles the step of ``config`` over ``devices`` (default: all) and reports its costs.

    ``vocab_size`` None: the vocabulary the config's tokenizer will have (``data.tokenizer``,
    ``data.vocab_size``), known without data.
    """
    from lmscale.training.data_source import vocab_size_of
    mesh = mesh_lib.make_mesh(devices)
    validate(config, mesh.size)
    config = with_global_batch(config, mesh.size)
    vocab_size = vocab_size_of(config.data) if vocab_size is None else vocab_size
    derived = derive(config, steps_per_epoch=max(config.train.steps, 1))
    setup = build_train_setup(config, vocab_size, decay_steps=derived["decay_steps"],
                              lr=derived["lr"], abstract=True)
    step, shardings = jit_train_step(setup, mesh)
    batch, seq = config.train.batch_size, config.train.seq_len
    width = longest_width(config.train)  # the memory of the longest step there is
    rows = mesh_lib.batch_sharded(mesh)
    abstract_batch = {k: jax.ShapeDtypeStruct((batch, width), BATCH_DTYPES[k], sharding=rows)
                      for k in BATCH_KEYS}
    abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                  setup.state, shardings)
    lowered = step.lower(abstract_state, abstract_batch)
    compiled = lowered.compile()
    mem = compiled.memory_analysis()
    reduces = all_reduces(compiled.as_text())
    # What the program asks for, before the backend's passes: XLA:CPU widens a bfloat16
    # all-reduce to float32 (and combines it with the sums); NCCL on GPUs reduces bfloat16.
    requested = all_reduces(lowered.as_text(dialect="hlo"))
    # A step's length: seq_len (each of grad_accum_steps segments'), or the longest drawn
    # under variable BPTT (what ``width`` sizes; a transformer's attention grows with it)
    step_len = width if config.train.variable_bptt else seq
    fwd = flops_per_token(config.model, vocab_size, step_len)
    train_per_token = train_flops_per_token(config.model, vocab_size, step_len)  # Zipf's targets
    shares = loss_tail_shares(config.model, vocab_size)
    per_device = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes \
        - mem.alias_size_in_bytes
    return {
        "model": architecture(config.model),
        "model_summary": get_kind(config.model.kind).describe(config.model),
        "vocab_size": vocab_size,
        "params": setup.num_params,
        "precision": str(setup.policy),
        "devices": mesh.size,
        "platform": mesh.devices.flat[0].platform,
        "recurrence_loops": _loops(config),
        "global_batch": batch,
        "per_device_batch": batch // mesh.size,
        "seq_len": width,  # tokens per row per step (train.seq_len x train.grad_accum_steps)
        "variable_bptt": bool(config.train.variable_bptt),  # seq_len: the longest step's
        "lr": derived["lr"],
        "flops_per_token_forward": fwd,  # inference's: every logit
        # 3 x forward; with adaptive cut-offs the loss forms the head's logits and each
        # target's cluster's, at the shares Zipf's law gives (``tail_shares``)
        "flops_per_token_train": train_per_token,
        "flops_per_step_train": train_per_token * batch * width,
        "tail_shares": None if shares is None else list(shares),
        "memory_per_device_bytes": {
            "arguments": mem.argument_size_in_bytes, "outputs": mem.output_size_in_bytes,
            "temporaries": mem.temp_size_in_bytes, "aliased (donated)": mem.alias_size_in_bytes,
            "total": per_device},
        "all_reduces_per_step": len(reduces),
        "all_reduce_bytes_per_step": sum(int(op["bytes"]) for op in reduces),
        "all_reduces": reduces,
        "all_reduces_requested": requested,
        "all_reduce_bytes_requested": sum(int(op["bytes"]) for op in requested),
        "parameter_bytes_float32": 4 * setup.num_params,
    }


def longest_width(train: ml_collections.ConfigDict) -> int:
    """Tokens per row of the longest training step: ``step_width``, or with
    ``train.variable_bptt`` the longest length it draws (``bptt_max`` rounded down to a
    multiple of ``bptt_bucket``; a plan at ``seq_len`` understated its memory)."""
    if not train.variable_bptt:
        return step_width(train)
    from lmscale.data.variable_bptt import length_bounds
    return length_bounds(bptt_max(train), train.bptt_bucket)[1]


def _loops(config: ml_collections.ConfigDict) -> str | None:
    """The layout of the recurrence's loops the plan compiled (``scan_options``; "feature"
    under remat), None for a model without them."""
    from lmscale.models.recurrent_kinds import remat_steps
    from lmscale.models.recurrent import SCANNED_KINDS, current_scan_options
    if config.model.kind not in SCANNED_KINDS:
        return None
    return current_scan_options().loops_layout(remat_steps(config.model), config.train.seq_len)


def _flop(count: float) -> str:
    """A FLOP count in the unit that shows it: 1.23 TFLOP, 45.6 GFLOP, 812 MFLOP (a tiny
    model's step printed as 0.00 TFLOP)."""
    for scale, unit in ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"),
                        (1e3, "kFLOP")):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count:.0f} FLOP"


def _millions(x: float) -> str:
    """x in millions: one decimal, or two significant digits below 0.1 (a small model's
    0.038 M, not 0.0 M)."""
    m = x / 1e6
    return f"{m:.1f}" if m >= 0.1 else f"{m:.2g}"


def format_plan(p: dict[str, Any]) -> str:
    """A human-readable summary of :func:`plan`'s result."""
    gib = 2.0**30
    m = p["memory_per_device_bytes"]
    lines = [
        f"model          {p['model_summary']}, vocabulary {p['vocab_size']}: "
        f"{_millions(p['params'])} M params",
        f"precision      {p['precision']}",
        f"devices        {p['devices']} ({p['platform']}); batch {p['global_batch']} global = "
        f"{p['per_device_batch']} per device x seq {p['seq_len']}"
        + (" (the longest variable-BPTT step)" if p.get("variable_bptt") else "")
        + f"; lr {p['lr']:.3g}"
        + (f"; {p['recurrence_loops']}-major recurrence loops" if p.get("recurrence_loops")
           else ""),
        f"FLOPs          {_millions(p['flops_per_token_forward'])} M/token forward, "
        f"{_flop(p['flops_per_step_train'])} per train step"
        + (f" (adaptive softmax: the loss forms the head's logits and the target's cluster's, "
           f"{_millions(p['flops_per_token_train'] / 3)} M/token forward at Zipf's law's "
           f"{', '.join(f'{100 * x:.1f}' for x in p['tail_shares'])} % of targets in the tail "
           f"clusters)" if p.get("tail_shares") else ""),
        f"memory/device  {m['total'] / gib:.2f} GiB = args {m['arguments'] / gib:.2f} + outputs "
        f"{m['outputs'] / gib:.2f} + temps {m['temporaries'] / gib:.2f} - donated "
        f"{m['aliased (donated)'] / gib:.2f}",
        f"all-reduces    {p['all_reduces_per_step']} per step, "
        f"{p['all_reduce_bytes_per_step'] / 2**20:.1f} MiB (params: {p['parameter_bytes_float32'] / 2**20:.1f} MiB)",
    ]
    asked = p.get("all_reduce_bytes_requested") or 0
    if asked and asked != p["all_reduce_bytes_per_step"]:
        # e.g. parallel.grad_reduce_dtype=bfloat16: XLA:CPU reduces in float32, NCCL does not
        lines[-1] += (f"; the step asks for {asked / 2**20:.1f} MiB, what a GPU backend reduces "
                      f"and the projection uses ({p['platform']} widens it)")
    return "\n".join(lines)


def with_remat(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
    """``config`` with ``model.remat="segments"``, when its model can recompute (mlstm, lstm)
    and does not yet; else None. ``model.remat_steps`` is lowered to a divisor of
    ``train.seq_len``, below half of it when it would make one segment (no saving)."""
    from lmscale.models.recurrent_kinds import configured_remat_steps, remat_steps
    from lmscale.models.recurrent import SCANNED_KINDS
    from lmscale.models.recurrent_segments import largest_divisor
    if config.model.kind not in SCANNED_KINDS or remat_steps(config.model):
        return None
    out = copy.deepcopy(config)
    out.model.remat = "segments"
    seq = out.train.seq_len
    steps = int(configured_remat_steps(out.model))
    out.model.remat_steps = largest_divisor(seq, steps if steps < seq else max(seq // 2, 1))
    return out


def fit(config: ml_collections.ConfigDict, devices: list[jax.Device] | None,
        result: dict[str, Any], memory_gib: float) -> dict[str, Any]:
    """Whether :func:`plan`'s ``result`` for ``config`` fits ``memory_gib`` GiB per device;
    if not, the plan of :func:`with_remat`'s config too (when there is one): {"memory_gib",
    "fits", and "remat": {"remat_steps", "memory_bytes", "fits"} or None}."""
    limit = memory_gib * 2.0**30
    out = {"memory_gib": memory_gib,
           "fits": result["memory_per_device_bytes"]["total"] <= limit, "remat": None}
    alternative = None if out["fits"] else with_remat(config)
    if alternative is not None:
        total = plan(alternative, devices, result["vocab_size"])["memory_per_device_bytes"]["total"]
        out["remat"] = {"remat_steps": alternative.model.remat_steps, "memory_bytes": total,
                        "fits": total <= limit}
    return out


def format_fit(p: dict[str, Any], f: dict[str, Any]) -> str:
    """:func:`fit`'s verdict in the layout of :func:`format_plan`."""
    gib = 2.0**30
    total = p["memory_per_device_bytes"]["total"] / gib
    lines = [f"fits           {'yes' if f['fits'] else 'no'}: {total:.2f} of {f['memory_gib']:g} "
             f"GiB per device"]
    r = f["remat"]
    if r is not None:
        verdict = "fits" if r["fits"] else "does not fit either"
        lines.append(f"with remat     --config.model.remat=segments --config.model.remat_steps="
                     f"{r['remat_steps']}: {r['memory_bytes'] / gib:.2f} GiB, {verdict} (one "
                     f"more forward of the recurrence)")
    return "\n".join(lines)
