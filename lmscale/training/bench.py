"""Throughput of the real training step and of the input pipeline, with FLOP accounting.

The step timed is exactly what ``lmscale.train`` runs: ``build_train_setup`` +
``jit_train_step`` (forward, backward, the one all-reduce, clip, Adam, state donated) on a
[B, S] batch of random tokens; compilation and warm-up steps are excluded, each timed step
ends with ``block_until_ready``, and the reported time is the median of N steps.

FLOPs (analytic, matmuls only, 2 per multiply-add): the forward cost per token is
``lmscale.models.flops_per_token(model, V, seq_len=S)``; for an mLSTM layer with input I and
hidden H it is 2 (4IH + IH + H^2 + 4H^2), for an LSTM layer 2 (4IH + 4H^2), plus 2 H V for
the decoder (with ``model.adaptive_cutoffs``: H (c_1 + k) for the head and, for the share of
targets in each tail cluster, H times that cluster's size; the batch's targets are then drawn
by Zipf's law and their shares counted). A training step costs

    train FLOPs per token = 3 x forward   (forward + gradients w.r.t. activations + w.r.t.
                                            weights, each one pass of every matmul)
    FLOPs per step        = 3 x forward x B x S

With remat (``model.remat``: "segments" for the mLSTM/LSTM, "block" for the transformer) the
step also recomputes part of the forward (the transformer's blocks; the mLSTM/LSTM's
recurrence only, its input projections are kept: each kind's
``ModelKind.recompute_flops_per_token``), and an adaptive softmax's backward forms each
target's tail-cluster logits again (one more tail forward); those FLOPs
(``recompute_flops_per_token``) are not the model's, so the record keeps both: ``flop_per_s``
/ ``of_matmul_rate`` count the model's FLOPs (model FLOPs utilization),
``hardware_flop_per_s`` / ``hardware_of_matmul_rate`` add the recomputed ones (what the
device executed).

Achieved FLOP/s = FLOPs per step / median step time; it is compared with the measured rate
of a dense n x n matmul in the compute dtype, accumulated in float32 as the step's matmuls
are, on every device the step runs on at once (``matmul_rate``; 8 GPUs: 8 times one's): the
practical peak of the machine rather than a datasheet number.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lmscale.atomic import append_line
from lmscale.config import scaled_lr, step_width, validate, with_global_batch
from lmscale.models.adaptive_softmax import zipf_id_counts
from lmscale.models.recurrent import SCANNED_KINDS, ScanOptions, scan_options
from lmscale.training import mesh as mesh_lib
from lmscale.training.flops import (adaptive_cutoffs, adaptive_recompute_flops_per_token,
                                    recompute_flops_per_token, train_flops_per_token)
from lmscale.training.fits import check_step_fits_host, refuse_jax_debugging
from lmscale.training.host_devices import usable_cores
from lmscale.training.host_memory import huge_pages_on
from lmscale.training.precision import DTYPES
from lmscale.training.setup import BATCH_KEYS, build_train_setup, jit_train_step

BYTE_VOCAB = 257


def matmul_rate(dtype: Any = jnp.float32, n: int | None = None, repeats: int = 10,
                device: jax.Device | None = None,
                devices: list[jax.Device] | None = None) -> dict[str, Any]:
    """Measured FLOP/s of a dense n x n matmul of ``dtype`` operands with float32 (at least)
    accumulation, as the training step's matmuls (best of 3 rounds of ``repeats``), on
    ``device``, or on every one of ``devices`` at once (their sum: the rate a data-parallel
    step over them can reach; CPU devices sharing cores share it).

    (A bfloat16 matmul with a bfloat16 result takes another path on XLA:CPU: 6x slower on
    an AMX CPU under jaxlib 0.10, so it would understate the peak the step can reach.)

    n defaults to 2048 on CPU and 8192 on accelerators (big enough to reach their peak).
    """
    products = [square_matmul(dtype, n, d) for d in (devices or [device])]
    jax.block_until_ready([f(a, b) for f, a, b in products])
    n = products[0][1].shape[0]
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats):
            outs = [f(a, b) for f, a, b in products]  # dispatched to every device, then waited
        jax.block_until_ready(outs)
        best = min(best, (time.perf_counter() - t) / repeats)
    return {"n": n, "dtype": jnp.dtype(dtype).name, "devices": len(products),
            "flop_per_s": len(products) * 2 * n**3 / best}


def square_matmul(dtype: Any = jnp.float32, n: int | None = None,
                  device: jax.Device | None = None) -> tuple[Any, jax.Array, jax.Array]:
    """(jitted product with float32 accumulation, a, b): the n x n matmul ``matmul_rate``
    times, on ``device`` (n as there)."""
    device = device or jax.devices()[0]
    n = n or (2048 if device.platform == "cpu" else 8192)
    rng = np.random.default_rng(0)
    a = jax.device_put(jnp.asarray(rng.normal(size=(n, n)), dtype), device)
    b = jax.device_put(jnp.asarray(rng.normal(size=(n, n)), dtype), device)
    acc = jnp.promote_types(dtype, jnp.float32)
    return jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=acc)), a, b


def random_batch(batch: int, seq: int, vocab: int, seed: int = 0,
                 reset_every: int = 0, zipf: bool = False) -> dict[str, np.ndarray]:
    """A batch of random tokens, uniform over [1, vocab) — or, ``zipf``, drawn by Zipf's law
    over the ids (``zipf_id_counts``: what an adaptive softmax's cost depends on; uniform
    targets would put nearly all of them in its last cluster). ``reset_every`` > 0 puts a
    reset every that many positions."""
    rng = np.random.default_rng(seed)
    resets = np.zeros((batch, seq), bool)
    if reset_every > 0:
        resets.reshape(-1)[::reset_every] = True
    if zipf:
        p = zipf_id_counts(vocab)
        draw = lambda: rng.choice(vocab, (batch, seq), p=p / p.sum())  # noqa: E731
    else:
        draw = lambda: rng.integers(1, vocab, (batch, seq))  # noqa: E731
    return {"inputs": draw().astype(np.int32), "targets": draw().astype(np.int32),
            "weights": np.ones((batch, seq), np.float32), "resets": resets}


def _memory(compiled: Any) -> dict[str, int] | None:
    """Per-device bytes of the compiled step from XLA's buffer assignment (None if unknown)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None
    if m is None:
        return None
    out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
           "temporaries": m.temp_size_in_bytes, "aliased": m.alias_size_in_bytes}
    out["peak"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
    return out


def xla_flops(compiled: Any) -> float:
    """XLA's cost-analysis FLOPs of a compiled program (a scan body is counted once)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def compile_step(config: ml_collections.ConfigDict, vocab_size: int = BYTE_VOCAB,
                 devices: list[jax.Device] | None = None, reset_every: int = 0
                 ) -> tuple[Any, Any, dict[str, jax.Array], float]:
    """(compiled step, device state, device batch, compile seconds) for ``config``.

    Scan options (``lmscale.models.recurrent.scan_options``) active around this call apply.
    """
    mesh = mesh_lib.make_mesh(devices)
    validate(config, mesh.size)
    config = with_global_batch(config, mesh.size)
    lr = scaled_lr(config.optim, config.train.batch_size)
    decay = max(config.optim.decay_steps or config.train.steps, config.optim.warmup_steps + 1)
    # A GPU config on a CPU host: one error, not the kernel's OOM killer ("Killed")
    setup = build_train_setup(config, vocab_size, decay_steps=decay, lr=lr, mesh=mesh,
                              check_fits=True)
    step, _ = jit_train_step(setup, mesh)  # dropout as the model config says
    state = setup.state
    rows = mesh_lib.batch_sharded(mesh)
    host = random_batch(config.train.batch_size, step_width(config.train), vocab_size,
                        seed=config.seed, reset_every=reset_every,
                        zipf=bool(adaptive_cutoffs(config.model)))
    batch = {k: jax.device_put(host[k], rows) for k in BATCH_KEYS}
    t = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    check_step_fits_host(step, (state, batch), compiled=compiled)
    return compiled, state, batch, compile_s


def time_step(config: ml_collections.ConfigDict, *, steps: int = 10, warmup: int = 2,
              vocab_size: int = BYTE_VOCAB, grad: str = "custom", unroll: int = 0,
              layout: str = "auto", factors: str = "compute", reset_every: int = 0,
              devices: list[jax.Device] | None = None) -> dict[str, Any]:
    """Median time of the jitted training step and what follows from it (see module doc)."""
    with scan_options(grad=grad, unroll=unroll, layout=layout, factors=factors):
        compiled, state, batch, compile_s = compile_step(config, vocab_size, devices, reset_every)
    for _ in range(warmup):
        state, _ = compiled(state, batch)
    jax.block_until_ready(state)  # warmup 0: nothing ran (metrics was unbound)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t)
    n_dev = len(devices) if devices else jax.device_count()
    batch_size = config.train.per_device_batch_size * n_dev or config.train.batch_size
    tokens = batch_size * step_width(config.train)
    step_s = float(np.median(times))
    targets = np.asarray(jax.device_get(batch["targets"])).reshape(-1)  # the loss's cost
    id_counts = np.bincount(targets, minlength=vocab_size)
    per_token = train_flops_per_token(config.model, vocab_size, config.train.seq_len,
                                      id_counts=id_counts)
    again = (recompute_flops_per_token(config.model, config.train.seq_len)
             + adaptive_recompute_flops_per_token(config.model, vocab_size,
                                                  config.train.seq_len, id_counts))
    return {"step_s": step_s, "step_s_all": [round(x, 5) for x in times],
            "compile_s": round(compile_s, 2), "tokens_per_step": tokens,
            "tokens_per_s": tokens / step_s, "train_flops_per_token": per_token,
            "flops_per_step": per_token * tokens, "flop_per_s": per_token * tokens / step_s,
            "recompute_flops_per_token": again,
            "hardware_flop_per_s": (per_token + again) * tokens / step_s,
            "memory_bytes": _memory(compiled), "loss": float(metrics["loss"])}


def time_interleaved(runs: list[dict[str, Any]], rounds: int, steps: int) -> None:
    """Times compiled steps in alternation, as a shared machine needs: ``rounds`` rounds of
    ``steps`` steps of each run in turn. A run is {"fn": compiled step, "state", "batch"}; its
    state is carried and each step's wall and process CPU seconds (all threads) are appended
    to run["wall"] and run["cpu"]."""
    for run in runs:
        run.setdefault("wall", [])
        run.setdefault("cpu", [])
    for _ in range(rounds):
        for run in runs:
            for _ in range(steps):
                wall, cpu = time.perf_counter(), time.process_time()
                run["state"], metrics = run["fn"](run["state"], run["batch"])
                jax.block_until_ready((run["state"], metrics))
                run["wall"].append(time.perf_counter() - wall)
                run["cpu"].append(time.process_time() - cpu)


def time_pipeline(batcher: Any, steps: int = 20, devices: list[jax.Device] | None = None
                  ) -> dict[str, Any]:
    """Host batches/s of a ``StreamBatcher`` (its global ``batch_size`` rows) and the time to
    put one batch on the devices."""
    mesh = mesh_lib.make_mesh(devices)
    rows = mesh_lib.batch_sharded(mesh)
    batcher.batch(0)
    t = time.perf_counter()
    for k in range(steps):
        b = batcher.batch(k)
    host_s = (time.perf_counter() - t) / steps
    arrays = {"inputs": b.inputs, "targets": b.targets, "weights": b.weights, "resets": b.resets}
    t = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready({k: jax.device_put(v, rows) for k, v in arrays.items()})
    put_s = (time.perf_counter() - t) / steps
    tokens = batcher.batch_size * batcher.seq_len
    return {"batch_s": host_s, "put_s": put_s, "tokens_per_s": tokens / (host_s + put_s),
            "batch_size": batcher.batch_size}


def time_loop(config: ml_collections.ConfigDict, workdir: str, steps: int = 20) -> dict[str, Any]:
    """chars/s of the real training loop (lmscale.training.loop.train: batches from the
    prepared data, the step, metrics and logging; no validation or checkpoint inside the
    timed window), read from its own metrics.jsonl: 2 x ``steps`` steps logged every
    ``steps``, the second window timed (the first holds compilation)."""
    import shutil
    from lmscale.training.loop import train
    from lmscale.training.metrics import read_metrics
    run = ml_collections.ConfigDict(config.to_dict())
    run.train.steps, run.train.log_every, run.train.eval_every = 2 * steps, steps, 0
    run.train.eval_every_epochs = 0.0  # no validation pass inside the timed steps
    run.train.eval_steps, run.train.progress_bar = 1, False
    run.checkpoint.every = 10 * steps
    run.lock()
    shutil.rmtree(workdir, ignore_errors=True)
    train(run, workdir)
    [record] = [r for r in read_metrics(workdir) if r["split"] == "train" and r["step"] == 2 * steps]
    return {"steps": steps, "chars_per_s": record["chars_per_s"],
            "tokens_per_s": record["tokens_per_s"], "step_s": 1.0 / record["steps_per_s"]}


def train_process(args: list[str], cwd: str) -> tuple[float, Any]:
    """(wall seconds, resource usage) of one ``python -m lmscale.train ARGS`` process run in
    ``cwd`` (whose ``lmscale`` it imports). The usage is the child's own (``os.wait4``): its
    CPU seconds and peak resident memory, fair on a shared machine where wall time is not.
    Its stderr goes to a file, so a chatty run cannot fill a pipe and stall; a failed run
    exits with the command and that stderr's tail."""
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "lmscale.train", *args], cwd=cwd,
                                 stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status):
            log.seek(0)
            raise SystemExit(f"lmscale.train {' '.join(args)} (in {cwd}) failed:\n"
                             f"{log.read()[-3000:]}")
    return wall, usage


def installed_commit() -> str:
    """The commit pip recorded for an lmscale installed from git (``pip install git+URL@REF``:
    the distribution's ``direct_url.json``), short; "" for any other install."""
    from importlib import metadata
    try:
        direct = json.loads(metadata.distribution("lmscale").read_text("direct_url.json") or "{}")
        return str(direct.get("vcs_info", {}).get("commit_id", ""))[:7]
    except (metadata.PackageNotFoundError, ValueError, AttributeError):
        return ""


def git_commit(path: str | None = None) -> str:
    """The checkout's short commit (with "+dirty" if any tracked file changed), or "".

    Without ``path``: lmscale's own checkout, found only where this file is tracked there. An
    lmscale installed into a virtualenv inside another project's repository (``.venv/lib/
    .../site-packages``, ignored by that repository) is not that repository's code: its commit
    is the one pip recorded for a ``git+`` install (:func:`installed_commit`), else ""."""
    cwd = path or os.path.dirname(os.path.abspath(__file__))
    if path is None:
        try:
            subprocess.run(["git", "ls-files", "--error-unmatch", "--",
                            os.path.basename(__file__)], cwd=cwd, check=True,
                           capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError):
            return installed_commit()
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                               cwd=os.path.join(cwd, ".."), capture_output=True, text=True).stdout
        return sha + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return ""


def host_info() -> dict[str, Any]:
    d = jax.devices()[0]
    return {"platform": d.platform, "device": d.device_kind, "devices": jax.device_count(),
            "cpus": os.cpu_count(), "usable_cpus": usable_cores(),  # affinity, CPU quota
            "machine": platform.machine(), "node": platform.node(), "jax": jax.__version__,
            "malloc_huge_pages": huge_pages_on(os.environ)}


def run_bench(config: ml_collections.ConfigDict, *, steps: int = 10, warmup: int = 2,
              grad: str = "custom", unroll: int = 0, layout: str = "auto",
              factors: str = "compute", reset_every: int = 0, batcher: Any = None,
              matmul_n: int | None = None, label: str = "",
              loop_workdir: str | None = None) -> dict[str, Any]:
    """One benchmark record: the step, the matmul rate in the compute dtype, the pipeline,
    and (``loop_workdir``) the full training loop."""
    compute = config.precision.compute
    refuse_jax_debugging("lmscale.bench", compute)  # it times compiled programs
    from lmscale.training.data_source import one_byte_tokens, vocab_size_of
    # the tokenizer's vocabulary (the softmax is a large part of a subword model's step); its
    # errors say what to set (a word vocabulary's size: data.word_vocab_size)
    vocab_size = vocab_size_of(config.data)
    step = time_step(config, steps=steps, warmup=warmup, grad=grad, unroll=unroll,
                     layout=layout, factors=factors, reset_every=reset_every,
                     vocab_size=vocab_size)
    peak = matmul_rate(DTYPES[compute], matmul_n, devices=jax.devices())  # those the step ran on
    m = config.model
    from lmscale.models import architecture, get_kind
    from lmscale.models.recurrent_kinds import remat_steps
    # The loops as run (remat segments run the feature-major ones), their unroll and factors.
    static = ScanOptions(unroll=unroll, layout=layout, factors=factors).static(
        m.kind, DTYPES[compute], False, remat_steps(m), config.train.seq_len)
    custom_loops = grad == "custom" and m.kind in SCANNED_KINDS
    record = {"label": label, "kind": m.kind, "model": get_kind(m.kind).describe(m),
              "architecture": architecture(m), "layers": m.layers,
              "batch": step["tokens_per_step"] // step_width(config.train),  # rows
              "grad_accum_steps": int(config.train.get("grad_accum_steps", 1)),
              "seq": config.train.seq_len, "vocab_size": vocab_size, "compute": compute,
              # the recurrence's backward: autodiff for a kind without one of its own (the
              # transformer, the QRNN; recorded as asked before, e.g. "custom")
              "grad": grad if m.kind in SCANNED_KINDS else "autodiff",
              "unroll": static.unroll if custom_loops else unroll or 1,
              # the hand-written backward's loops: none under autodiff or without a recurrence
              # (recorded as asked before, e.g. "batch" for an autodiff or transformer step)
              "layout": static.layout if custom_loops else None,
              # the dtype of the gate factors the batch-major loops save
              "factors": static.factors if custom_loops and static.layout == "batch" else None,
              "reset_every": reset_every, "remat": m.get("remat", "none"), **step,
              "matmul": peak, "of_matmul_rate": step["flop_per_s"] / peak["flop_per_s"],
              "hardware_of_matmul_rate": step["hardware_flop_per_s"] / peak["flop_per_s"]}
    if record["remat"] == "segments":
        record["remat_steps"] = int(m.remat_steps)
    if batcher is not None:
        record["pipeline"] = time_pipeline(batcher)
    if loop_workdir is not None:
        record["loop"] = time_loop(config, loop_workdir, steps=max(steps, 10))
        record["loop"]["of_step"] = record["loop"]["tokens_per_s"] / record["tokens_per_s"]
    # chars/s: text bytes per second. A byte tokenizer's token is one byte; a subword or word
    # token's bytes are known only from real text (the loop's), else chars/s stays None.
    if one_byte_tokens(config.data):
        record["bytes_per_token"] = 1.0
    elif loop_workdir is not None:
        record["bytes_per_token"] = record["loop"]["chars_per_s"] / record["loop"]["tokens_per_s"]
    else:
        record["bytes_per_token"] = None
    for part in [record] + ([record["pipeline"]] if "pipeline" in record else []):
        part["chars_per_s"] = (None if record["bytes_per_token"] is None
                               else part["tokens_per_s"] * record["bytes_per_token"])
    # compile_s is a read from this folder when the same step was compiled before.
    record.update(host=host_info(), commit=git_commit(), date=time.strftime("%Y-%m-%d %H:%M"),
                  compile_cache=jax.config.jax_compilation_cache_dir or None)
    return record


def _loop_cell(loop: dict[str, Any] | None) -> str:
    if not loop:
        return "-"
    return f"{_rate_cell(loop, 1e3, 'k')} ({100 * loop['of_step']:.0f} % of step)"


def _rate_cell(part: dict[str, Any], scale: float, unit: str) -> str:
    """chars/s where the text's bytes per token are known, else tokens/s, said so."""
    if part.get("chars_per_s") is not None:
        return f"{part['chars_per_s'] / scale:.2f} {unit}"
    return f"{part['tokens_per_s'] / scale:.2f} {unit} tokens"


def _grad_cell(record: dict[str, Any]) -> str:
    """The recurrence's backward, unroll and remat segment length; '-' for a model they do not
    apply to (the transformer has no time loop, the QRNN's loop is its own)."""
    if record.get("kind") not in SCANNED_KINDS:
        return "-"
    remat = f" remat {record['remat_steps']}" if record.get("remat") == "segments" else ""
    layout = ""
    if record.get("layout") == "batch" and record["grad"] == "custom":
        f32 = record.get("factors") == "float32" and record.get("compute") != "float32"
        layout = " batch" + (" f32 factors" if f32 else "")
    return f"{record['grad']} u{record['unroll']}{layout}{remat}"


def _of_matmul_cell(record: dict[str, Any]) -> str:
    """The model's share of the matmul rate, and with remat the executed share."""
    cell = f"{100 * record['of_matmul_rate']:.0f} %"
    if record.get("recompute_flops_per_token"):
        cell += f" ({100 * record['hardware_of_matmul_rate']:.0f} % with recompute)"
    return cell


def append_jsonl(record: dict[str, Any], path: str) -> None:
    """Appends ``record`` as one JSON line, whole or not at all (``atomic.append_line``)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    append_line(path, json.dumps(record))


def _segments(r: dict[str, Any]) -> str:
    """``2x`` where a row holds grad_accum_steps = 2 segments of ``seq`` tokens, else ``""``."""
    k = r.get("grad_accum_steps", 1)
    return f"{k}x" if k > 1 else ""


def format_table(records: list[dict[str, Any]]) -> str:
    """A markdown table of bench records."""
    lines = ["| model | batch x seq | compute | grad | step | chars/s | train MFLOP/token | "
             "GFLOP/s | matmul GFLOP/s | of matmul | peak mem | pipeline chars/s | loop chars/s |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        mem = r.get("memory_bytes") or {}
        pipe = r.get("pipeline")
        lines.append(
            f"| {r['model']} | {r['batch']} x {_segments(r)}{r['seq']} | {r['compute']} "
            f"| {_grad_cell(r)} | {1e3 * r['step_s']:.1f} ms | {_rate_cell(r, 1e3, 'k')} "
            f"| {r['train_flops_per_token'] / 1e6:.2f} | {r['flop_per_s'] / 1e9:.1f} "
            f"| {r['matmul']['flop_per_s'] / 1e9:.0f} | {_of_matmul_cell(r)} "
            f"| {mem.get('peak', 0) / 2**20:.0f} MiB "
            f"| {'-' if not pipe else _rate_cell(pipe, 1e6, 'M')} "
            f"| {_loop_cell(r.get('loop'))} |")
    return "\n".join(lines)
