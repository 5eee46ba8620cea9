"""Projected step time and scaling efficiency of a planned step on N devices.

A data-parallel step of a recurrent LM is compute followed by one all-reduce: the recurrent
weights' gradients are complete only when the backward scan ends, so the reduction cannot
overlap with compute. With the per-device batch fixed (weak scaling):

    compute   t_c = training FLOPs per step per device / sustained FLOP/s per device
    reduce    t_r = 2 (N - 1) / N * bytes / bandwidth  +  2 (N - 1) * latency   (ring all-reduce)
    step      t   = t_c + t_r;  scaling efficiency = t_c / t;  throughput = N * tokens per device / t

``bandwidth`` is what each device can send to the next one in the ring: inside a node the
NVLink rate, across nodes the node's network bandwidth divided by its GPUs (the slower link
bounds the ring). The FLOP/s is a sustained rate, measured (``lmscale.bench`` on the device)
or assumed (peak x utilization), not the datasheet peak. The numbers are a model, to size a
cluster before booking it; the all-reduce bytes come from the compiled program (``plan``).
"""

from __future__ import annotations

from typing import Any, Sequence


def ring_allreduce_seconds(num_bytes: float, devices: int, bandwidth_bytes_per_s: float,
                           latency_s: float = 0.0) -> float:
    """Time of a ring all-reduce of ``num_bytes`` over ``devices`` (0 on one device)."""
    if devices <= 1:
        return 0.0
    steps = 2 * (devices - 1)
    return steps / devices * num_bytes / bandwidth_bytes_per_s + steps * latency_s


def project(plan: dict[str, Any], flops_per_s: float, bandwidth_gbit_s: float,
            device_counts: Sequence[int], latency_us: float = 0.0,
            bytes_per_token: float | None = 1.0) -> list[dict[str, Any]]:
    """Step time, throughput and scaling efficiency for each device count, at the plan's
    per-device batch. ``flops_per_s``: sustained training FLOP/s per device;
    ``bandwidth_gbit_s``: per-device ring bandwidth in Gbit/s; ``bytes_per_token``: text bytes
    per token (1 for bytes; None where unknown, as for subword text before it is read: then
    chars/s is None)."""
    if flops_per_s <= 0 or bandwidth_gbit_s <= 0:
        raise ValueError("flops_per_s and bandwidth_gbit_s must be > 0")
    tokens = plan["per_device_batch"] * plan["seq_len"]
    compute = plan["flops_per_token_train"] * tokens / flops_per_s
    bandwidth = bandwidth_gbit_s * 1e9 / 8
    # The bytes the program asks to reduce (a bfloat16 reduction stays bfloat16 on NCCL even
    # where the CPU compiler planned it in float32).
    reduce_bytes = plan.get("all_reduce_bytes_requested") or plan["all_reduce_bytes_per_step"]
    rows = []
    for n in device_counts:
        reduce = ring_allreduce_seconds(reduce_bytes, n, bandwidth, latency_us * 1e-6)
        step = compute + reduce
        rows.append({"devices": n, "compute_s": compute, "allreduce_s": reduce, "step_s": step,
                     "scaling_efficiency": compute / step, "global_batch": n * plan["per_device_batch"],
                     "tokens_per_s": n * tokens / step,
                     "chars_per_s": (None if bytes_per_token is None
                                     else n * tokens * bytes_per_token / step)})
    return rows


def format_projection(rows: list[dict[str, Any]], flops_per_s: float, bandwidth_gbit_s: float
                      ) -> str:
    """A table of :func:`project`'s rows."""
    lines = [f"projection at {flops_per_s / 1e12:.4g} TFLOP/s per device, {bandwidth_gbit_s:g} "
             "Gbit/s ring bandwidth per device (all-reduce after the backward, no overlap):",
             f"{'devices':>8} {'batch':>8} {'compute':>9} {'all-reduce':>10} {'step':>9} "
             f"{'scaling':>8} {'tokens/s':>12} {'chars/s':>12}"]
    for r in rows:
        chars = "-" if r["chars_per_s"] is None else format(r["chars_per_s"], ".3g")
        lines.append(f"{r['devices']:>8} {r['global_batch']:>8} {1e3 * r['compute_s']:>7.1f}ms "
                     f"{1e3 * r['allreduce_s']:>8.1f}ms {1e3 * r['step_s']:>7.1f}ms "
                     f"{100 * r['scaling_efficiency']:>7.1f}% {r['tokens_per_s']:>12.3g} "
                     f"{chars:>12}")
    return "\n".join(lines)
