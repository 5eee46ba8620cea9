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


def test_a_train_record_adds_no_entry_to_jax_caches(tmp_path, corpus):
    """The loops reset their sums at every train record with ``host_zeros(zero_acc)``:
    ``jax.eval_shape`` made a new ``jit`` of the same function each time and JAX's tracing
    cache kept an entry per record (~2048 kept: tens of MB over a long run). After a first
    run (its programs' entries), runs of 3 and 11 records grow it alike."""
    import gc

    from lmscale.training.loop import train
    from tests.conftest import tiny_config

    def entries() -> int:
        return sum(1 for o in gc.get_objects() if type(o).__name__ == "InferParamsCacheEntry")

    grown = []
    for steps in (2, 3, 11):
        before = entries()
        train(tiny_config(corpus, **{"train.steps": steps, "train.log_every": 1,
                                     "train.eval_every": 0}), str(tmp_path / str(steps)))
        grown.append(entries() - before)
    assert grown[2] <= grown[1] + 2, grown
