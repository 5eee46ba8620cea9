"""The (m)LSTM gate bias is added to float32 pre-activations unrounded: not rounded to the
compute dtype (README "Mixed precision": only the matmuls run in it). c_t = c_{t-1} + 0.01
(forget gate saturated, i = 0.5, tanh(g) = 0.02 from the bias alone): c_T = 0.01 T in every
dtype (rounded through bfloat16, the bias made it 0.01 T (1 + 8e-4))."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.models.lm import RecurrentLM
from lmscale.models.recurrent import scan_options


@pytest.mark.parametrize("grad", ["custom", "autodiff"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("kind", ["lstm", "mlstm"])
def test_gate_bias_not_rounded_to_compute_dtype(kind, dtype, grad):
    t, h = 256, 8
    m = RecurrentLM(kind=kind, vocab_size=4, embed=8, hidden=h, layers=1, weight_norm=False,
                    dtype=dtype, rngs=nnx.Rngs(0))
    p = jax.tree.map(jnp.zeros_like, nnx.to_pure_dict(nnx.state(m, nnx.Param)))
    b = np.zeros(4 * h, np.float32)
    b[h:2 * h], b[2 * h:3 * h] = 30.0, np.arctanh(0.02)
    p["layers"][0]["bias"] = jnp.asarray(b)
    nnx.update(m, p)
    with scan_options(grad=grad):  # the custom backward's loop, and plain autodiff's
        _, carry = m(jnp.zeros((2, t), jnp.int32), None)
    np.testing.assert_allclose(np.asarray(carry[0][1]), 0.01 * t, rtol=1e-5)
