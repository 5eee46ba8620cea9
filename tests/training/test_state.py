"""``host_zeros``: the running sums reset from NumPy zeros of the right shapes and dtypes,
with no device program (eagerly, each zero was a program compiled in every process)."""

from __future__ import annotations

import jax
import numpy as np

from lmscale.finetuning.steps import zero_acc as finetune_zero_acc
from lmscale.training.state import host_zeros, zero_acc
from tests.conftest import lowered_programs


def test_host_zeros_match_the_sums_and_lower_nothing():
    for zeros_fn in (zero_acc, finetune_zero_acc):
        with lowered_programs() as built:
            host = host_zeros(zeros_fn)
        assert built == []
        device = zeros_fn()
        assert jax.tree.structure(host) == jax.tree.structure(device)
        for h, d in zip(jax.tree.leaves(host), jax.tree.leaves(device)):
            assert isinstance(h, np.ndarray) and (h.shape, h.dtype) == (d.shape, d.dtype)
            assert not h.any()
