"""The hand-written backward of the recurrences (recurrent_vjp) vs autodiff through the scan."""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.models import LSTMLayer, MLSTMLayer, RecurrentLM, lstm_scan, mlstm_scan, weight_norm
from lmscale.models.weight_norm import unit_scale
from lmscale.models.recurrent import scan_options
from tests.models.helpers import computations, jaxpr_equations, loop_computations

B, T, IN, H = 3, 9, 5, 8


def resets_tm(steps: int = T, rows: int = B) -> np.ndarray:
    """Time-major resets [T, B]: row 0 resets at t=0 and t=4, row 1 at 2, 3 and the end, row 2 never."""
    r = np.zeros((steps, rows), bool)
    r[0, 0] = r[4, 0] = True
    r[2, 1] = r[3, 1] = r[steps - 1, 1] = True
    return r


def problem(kind: str, seed: int, steps: int = T, hidden: int = H) -> dict[str, Any]:
    """Weight-norm params (g, v), bias, inputs, initial carry and output probes."""
    rng = np.random.default_rng(seed)
    u = lambda *s: jnp.asarray(rng.uniform(-0.5, 0.5, s), jnp.float32)
    shapes = {"w_x": (IN, 4 * hidden), "w_h": (hidden, 4 * hidden)}
    if kind == "mlstm":
        shapes.update(w_mx=(IN, hidden), w_mh=(hidden, hidden))
    return {"g": {n: jnp.asarray(rng.uniform(0.5, 1.5, s[1:]), jnp.float32) for n, s in shapes.items()},
            "v": {n: u(*s) for n, s in shapes.items()}, "b": u(4 * hidden),
            "xs": u(steps, B, IN), "h0": u(B, hidden), "c0": u(B, hidden),
            "probe": u(steps, B, hidden)}


def loss_fn(kind: str, dtype: Any, grad: str, resets: np.ndarray | None, return_cells: bool,
            folded: bool = False, remat_steps: int = 0):
    """A scalar of every output (hs, final carry, and cs when returned) of a weight-normed scan.

    ``folded``: W_mh and W_h go in as (v, g / ||v||) (``w_*_scale``), not normalized;
    ``remat_steps``: the scans' (recomputed segments of the custom backward)."""

    def loss(p: dict[str, Any]) -> jax.Array:
        w = {n: weight_norm(p["g"][n], p["v"][n]) for n in p["g"]}
        scale = {}
        if folded:
            for n in ("w_mh", "w_h") if kind == "mlstm" else ("w_h",):
                w[n], scale[n + "_scale"] = p["v"][n], unit_scale(p["g"][n], p["v"][n])
        r = None if resets is None else jnp.asarray(resets)
        if kind == "mlstm":
            hs, (h, c), cs = mlstm_scan(p["xs"], (p["h0"], p["c0"]), w["w_x"], w["w_mx"], w["w_mh"],
                                        w["w_h"], p["b"], r, dtype=dtype, return_cells=return_cells,
                                        grad=grad, remat_steps=remat_steps, **scale)
        else:
            hs, (h, c), cs = lstm_scan(p["xs"], (p["h0"], p["c0"]), w["w_x"], w["w_h"], p["b"], r,
                                       dtype=dtype, return_cells=return_cells, grad=grad,
                                       remat_steps=remat_steps, **scale)
        out = jnp.sum(hs.astype(jnp.float32) * p["probe"]) + jnp.sum(jnp.sin(h) + c * c)
        if return_cells:
            out = out + jnp.sum(jnp.cos(cs) * p["probe"])
        return out

    return loss


def assert_same_gradients(got_tree: Any, want_tree: Any) -> None:
    """Every gradient but the probe's equal to 1e-5, and none of the wanted ones all zero."""
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(got_tree),
                                 jax.tree.leaves(want_tree)):
        if jax.tree_util.keystr(path) == "['probe']":
            continue
        assert float(jnp.abs(want).max()) > 0, path
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5,
                                   err_msg=jax.tree_util.keystr(path))


LAYOUTS = ["feature", "batch"]  # the custom backward's loops: recurrent_loops, recurrent_batch_major


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
@pytest.mark.parametrize("with_resets,return_cells", [(True, False), (True, True), (False, True)])
def test_custom_vjp_equals_autodiff_float32(kind, with_resets, return_cells, layout):
    """Gradients w.r.t. g, v, b, inputs and the initial carry equal jax.grad of the plain scan."""
    p = problem(kind, seed=1)
    resets = resets_tm() if with_resets else None
    args = (kind, jnp.float32)
    with scan_options(layout=layout):
        val_c, g_c = jax.value_and_grad(loss_fn(*args, "custom", resets, return_cells))(p)
    val_a, g_a = jax.value_and_grad(loss_fn(*args, "autodiff", resets, return_cells))(p)
    np.testing.assert_allclose(float(val_c), float(val_a), rtol=1e-6)
    assert_same_gradients(g_c, g_a)


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
@pytest.mark.parametrize("grad,layout", [("custom", "feature"), ("custom", "batch"),
                                         ("autodiff", "feature")])
def test_weight_norm_folded_into_the_products_same_values_and_gradients(kind, grad, layout):
    """W_mh and W_h given as (v, g / ||v||), the scale applied to the products' results, give
    the values and the g, v gradients of the normalized matrices given whole, to 1e-5."""
    p = problem(kind, seed=4)
    val_w, g_w = jax.value_and_grad(loss_fn(kind, jnp.float32, "autodiff", resets_tm(), True))(p)
    with scan_options(layout=layout):
        val_f, g_f = jax.value_and_grad(loss_fn(kind, jnp.float32, grad, resets_tm(), True,
                                                folded=True))(p)
    np.testing.assert_allclose(float(val_f), float(val_w), rtol=1e-5)  # 1.05e-6 seen (jaxlib 0.10.0)
    assert_same_gradients(g_f, g_w)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
def test_layer_and_lm_gradients_through_scan_options(kind, layout):
    """The modules (default: custom backward) give the same gradients as under grad="autodiff"."""
    model = RecurrentLM(kind=kind, vocab_size=11, embed=6, hidden=H, layers=2, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 11, (B, T)), jnp.int32)
    resets = jnp.asarray(resets_tm().T)
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params: Any) -> jax.Array:
        logits, carry = nnx.merge(graphdef, params)(tokens, None, resets)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3]) + jnp.sum(carry[-1][1])

    with scan_options(layout=layout):
        g_c = jax.grad(loss)(params)
    with scan_options(grad="autodiff"):
        g_a = jax.grad(loss)(params)
    for got, want in zip(jax.tree.leaves(g_c), jax.tree.leaves(g_a)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    layer = (MLSTMLayer if kind == "mlstm" else LSTMLayer)(IN, H, rngs=nnx.Rngs(1))
    assert layer.scan_time_major(jnp.ones((T, B, IN)), layer.initial_carry(B))[0].shape == (T, B, H)


def _grad_jaxpr(kind: str, dtype: Any, grad: str, folded: bool = False,
                layout: str = "feature") -> Any:
    p = problem(kind, seed=3)
    loss = loss_fn(kind, dtype, grad, resets_tm(), False, folded)
    with scan_options(layout=layout):
        return jax.make_jaxpr(jax.grad(loss))(p).jaxpr


def _weight_shapes(kind: str, layout: str = "feature") -> set[tuple[int, int]]:
    """Shapes of the recurrent weights' gradient products: the batch layout forms W_h's with
    W_x's, as [H + in, 4H]."""
    rows = H + IN if layout == "batch" else H
    return {(rows, 4 * H)} | ({(H, H)} if kind == "mlstm" else set())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("folded", [False, True])
def test_weight_gradients_accumulate_in_float32(kind, dtype, folded, layout):
    """In the jaxpr: no loop carries a recurrent-weight-shaped array; their gradients are
    float32 dot_generals over all T x B rows, with the weight norm folded into the products
    (as the layers run) or not. Autodiff (the defect) carries them in ``dtype``."""
    shapes = _weight_shapes(kind, layout)

    def carried(jaxpr: Any) -> list[Any]:
        """What loop bodies return every step: their carries (and a scan's per-step
        outputs). Read from the bodies, whose form is the same in every JAX version (scan's
        num_consts/num_carry parameters are gone in JAX 0.11)."""
        out = []
        for e in jaxpr_equations(jaxpr):
            body = {"scan": "jaxpr", "while": "body_jaxpr"}.get(e.primitive.name)
            if body is not None:
                out += [v.aval for v in e.params[body].jaxpr.outvars]
        return out

    custom = _grad_jaxpr(kind, dtype, "custom", folded, layout)
    assert not [a for a in carried(custom) if tuple(a.shape) in shapes | _weight_shapes(kind)]
    dots = [e for e in jaxpr_equations(custom) if e.primitive.name == "dot_general"
            and tuple(e.outvars[0].aval.shape) in shapes]


    def contracted(e: Any) -> list[int]:
        """Number of contracted elements of both operands (T * B for an all-rows matmul)."""
        dims = e.params["dimension_numbers"][0]
        return [int(np.prod([v.aval.shape[d] for d in ds])) for v, ds in zip(e.invars, dims)]

    outer = [e for e in dots if contracted(e) == [T * B] * 2]
    assert len(outer) == len(shapes), dots
    for e in outer:
        assert e.outvars[0].aval.dtype == jnp.float32
        assert e.params["preferred_element_type"] == jnp.float32
        assert {v.aval.dtype for v in e.invars} == {jnp.dtype(dtype)}  # compute-dtype operands
    autodiff = _grad_jaxpr(kind, dtype, "autodiff")
    weights = _weight_shapes(kind)
    assert {(tuple(a.shape), a.dtype) for a in carried(autodiff)
            if tuple(a.shape) in weights} == {(s, jnp.dtype(dtype)) for s in weights}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_gradients_closer_to_float32_at_t256(kind, dtype, layout):
    """At T=256, the recurrent weights' (g, v) gradients in bf16/fp16 compute are closer to the
    float32 reference with the custom backward than with autodiff's low-precision carry."""
    steps, hidden = 256, 16
    p = problem(kind, seed=4, steps=steps, hidden=hidden)
    resets = np.zeros((steps, B), bool)
    resets[100, 0] = True
    ref = jax.grad(loss_fn(kind, jnp.float32, "autodiff", resets, False))(p)
    with scan_options(layout=layout):
        got = {g: jax.grad(loss_fn(kind, dtype, g, resets, False))(p)
               for g in ("custom", "autodiff")}
        # The weight norm folded into the products, as the layers run it.
        got["folded"] = jax.grad(loss_fn(kind, dtype, "custom", resets, False, folded=True))(p)
    names = ["w_h"] + (["w_mh"] if kind == "mlstm" else [])
    for name in names:
        for part in ("g", "v"):
            want = np.asarray(ref[part][name], np.float64)
            err = {g: np.linalg.norm(np.asarray(got[g][part][name], np.float64) - want)
                   / np.linalg.norm(want) for g in got}
            assert err["custom"] < 0.5 * err["autodiff"], (name, part, err)  # ~4-7x here
            assert err["folded"] < 0.5 * err["autodiff"], (name, part, err)


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
def test_unrolled_loops_same_gradient_and_no_whole_buffer_copy_per_step(kind):
    """scan_options(unroll=2): the gradient equals unroll 1's, and no compiled loop body
    copies a whole saved [T, F, B] sequence (the mLSTM's unrolled backward did, every step)."""
    steps = 16
    p = problem(kind, seed=5, steps=steps)
    loss = loss_fn(kind, jnp.float32, "custom", resets_tm(steps), False)
    g1 = jax.grad(loss)(p)
    with scan_options(unroll=2):
        g2 = jax.grad(loss)(p)
        hlo = jax.jit(jax.grad(loss)).lower(p).compile().as_text()
    for got, want in zip(jax.tree.leaves(g2), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=1e-6)
    comps = computations(hlo)
    body_names = set(re.findall(r"body=%([\w.\-]+)", hlo))
    bodies = [comps[n] for n in body_names if n in comps]
    assert len(bodies) == len(body_names) >= 2  # the forward and backward loops
    copies = [line.strip() for c in bodies for line in c.split("\n")
              if " copy(" in line and f"[{steps}," in line]
    assert not copies, copies


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("folded", [False, True])
def test_low_precision_loops_write_saved_sequences_in_place(kind, dtype, folded):
    """No compiled loop body converts a whole saved [T, F, B] sequence: XLA:CPU ran a
    bfloat16 per-step write as float32 on the whole buffer (convert, update, convert back),
    59 % of the 1024-unit bfloat16 step; the sequences are kept as uint16 bits."""
    steps = 16
    p = problem(kind, seed=6, steps=steps)
    loss = loss_fn(kind, dtype, "custom", resets_tm(steps), False, folded)
    hlo = jax.jit(jax.grad(loss)).lower(p).compile().as_text()
    loops = loop_computations(hlo)
    assert len(loops) >= 4  # two loop bodies and their fusions
    whole = [line.strip() for c in loops for line in c.split("\n")
             if re.search(r"= \w+\[[\d,]*\b%d\b[\d,]*\]\S* convert\(" % steps, line)]
    assert not whole, whole


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
def test_batch_layout_unrolled_same_gradient_and_auto_options(kind):
    """The batch-major loops unrolled by 2 (their default, ``unroll=0``) give unroll 1's
    gradient; "auto" is the feature layout on this CPU, the batch layout's unroll 2."""
    from lmscale.models.recurrent import ScanOptions
    p = problem(kind, seed=7, steps=16)
    loss = loss_fn(kind, jnp.float32, "custom", resets_tm(16), True)
    with scan_options(layout="batch", unroll=1):
        g1 = jax.grad(loss)(p)
    with scan_options(layout="batch"):
        g2 = jax.grad(loss)(p)
    for got, want in zip(jax.tree.leaves(g2), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=1e-6)
    import unittest.mock
    with unittest.mock.patch.object(jax, "default_backend", lambda: "cpu"):  # as on a CPU
        assert ScanOptions().resolved_layout() == "feature"
        assert ScanOptions().resolved_unroll() == 1
    assert ScanOptions(layout="batch").resolved_unroll() == 2
    assert ScanOptions(layout="batch", unroll=3).resolved_unroll() == 3
    with unittest.mock.patch.object(jax, "default_backend", lambda: "gpu"):  # as on a GPU
        assert ScanOptions().resolved_layout() == "batch" and ScanOptions().resolved_unroll() == 2
        assert ScanOptions(layout="feature").resolved_unroll() == 1
        # Remat segments run the feature-major loops, at their unroll; a segment as long as
        # the sequence is no remat.
        assert ScanOptions().loops_layout(remat_steps=32, n_t=256) == "feature"
        assert ScanOptions().resolved_unroll("feature") == 1
        assert ScanOptions().loops_layout(remat_steps=256, n_t=256) == "batch"
        assert ScanOptions().loops_layout() == "batch"
    with pytest.raises(ValueError, match="layout in"):
        with scan_options(layout="rows"):
            pass


def test_batch_layout_rounds_a_weight_normed_matrix_once():
    """In bfloat16 with weight norm, the batch layout formed W = V * s from V already rounded
    to bfloat16 and rounded again: its gradients were 20 % further from float32's than the
    feature layout's (which rounds V once and scales the product). Formed from the float32
    direction, the two are as close (the gate factors saved in float32 by both)."""
    steps, hidden = 32, 16
    p = problem("mlstm", seed=8, steps=steps, hidden=hidden)
    ref = jax.grad(loss_fn("mlstm", jnp.float32, "autodiff", resets_tm(steps), True))(p)
    err = {}
    for layout in LAYOUTS:
        with scan_options(layout=layout, factors="float32"):
            got = jax.grad(loss_fn("mlstm", jnp.bfloat16, "custom", resets_tm(steps), True,
                                   folded=True))(p)
        flat = lambda tree: np.concatenate([np.ravel(np.asarray(a, np.float64))
                                            for a in jax.tree.leaves(tree["v"])])
        err[layout] = np.linalg.norm(flat(got) - flat(ref)) / np.linalg.norm(flat(ref))
    assert err["batch"] < 1.1 * err["feature"], err


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_batch_layout_saves_gate_factors_in_the_compute_dtype(kind, dtype):
    """The batch-major loops save the gate factors d [T, B, 4H] in the compute dtype (the
    forget gate and output factor [T, B, 2H] in float32) unless told float32; at T = 256 the
    recurrent weights' gradients stay within 1.4x (measured 1.03-1.25x) of float32 factors'
    distance to the float32 reference. bfloat16 factors in float16 compute were 6x further."""
    steps = 256
    p = problem(kind, seed=3, steps=steps)
    resets = resets_tm(steps)
    ref = jax.grad(loss_fn(kind, jnp.float32, "autodiff", resets, False))(p)
    flat = lambda tree: np.concatenate([np.ravel(np.asarray(a, np.float64))
                                        for a in jax.tree.leaves(tree["v"])])
    err, saved = {}, {}
    for factors in ("compute", "float32"):
        with scan_options(layout="batch", factors=factors):
            loss = loss_fn(kind, dtype, "custom", resets, False)
            err[factors] = (np.linalg.norm(flat(jax.grad(loss)(p)) - flat(ref))
                            / np.linalg.norm(flat(ref)))
            jaxpr = str(jax.make_jaxpr(jax.grad(loss))(p))
        # The loops' outputs: uninitialized buffers; [T, B, 4H]: d (forward) and dz (backward,
        # compute dtype), [T, B, 2H]: f and p.
        saved[factors] = set(re.findall(r"\b(\w+)\[%d,%d,%d\] = empty" % (steps, B, 4 * H), jaxpr))
        assert re.search(r"\bf32\[%d,%d,%d\] = empty" % (steps, B, 2 * H), jaxpr)
    short = {jnp.bfloat16: "bf16", jnp.float16: "f16"}[dtype]
    assert saved == {"compute": {short}, "float32": {"f32", short}}, saved
    assert err["compute"] < 1.4 * err["float32"], err
    with pytest.raises(ValueError, match="factors in"):
        with scan_options(factors="bfloat16"):
            pass
