"""Features that are not finite stop the transfer with a line naming the split, the texts and
the way out: they reached scikit-learn's fits as a traceback advising to impute missing
values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmscale.data.errors import DataError
from lmscale.transfer.run import run_transfer
from tests.transfer.conftest import random_lm, write_labeled


def _splits(tmp_path):
    rows = [(f"text number {i}, " + "good " * (i % 5) + "bad " * (i % 3), i % 2) for i in range(12)]
    return (write_labeled(tmp_path / "train.csv", rows),
            write_labeled(tmp_path / "val.csv", rows[:6]))


def test_float16_overflow_is_named_with_its_way_out(tmp_path):
    train, val = _splits(tmp_path)
    lm = random_lm()
    lm.params = jax.tree.map(lambda x: x * 1e4, lm.params)  # matmul outputs past 65504
    with pytest.raises(DataError) as e:
        run_transfer(str(tmp_path), train, val, lm=lm, compute="float16",
                     output=str(tmp_path / "out"), baseline="none", Cs=[1.0])
    message = str(e.value)
    assert message.startswith(f"{train}: the features of 12 of 12 texts are not finite")
    assert "text 0: 'text number 0, '" in message and "float16's range" in message
    assert "compute=bfloat16" in message and "--compute" not in message  # the API's argument
    # the same weights in float32 are finite: the transfer runs
    results = run_transfer(str(tmp_path), train, val, lm=lm, compute="float32",
                           output=str(tmp_path / "out"), baseline="none", Cs=[1.0])
    assert 0.0 <= results["all_features"]["val_accuracy"] <= 1.0


def test_weights_that_are_not_finite_are_named(tmp_path):
    train, val = _splits(tmp_path)
    lm = random_lm()
    leaves, treedef = jax.tree.flatten(lm.params)
    leaves = [jnp.full_like(x, np.nan) if x.ndim == 2 else x for x in leaves]
    lm.params = jax.tree.unflatten(treedef, leaves)
    with pytest.raises(DataError, match=r"val\.csv|train\.csv") as e:
        run_transfer(str(tmp_path), train, val, lm=lm, output=str(tmp_path / "out"),
                     baseline="none", Cs=[1.0])
    assert "not finite" in str(e.value) and "weights or states" in str(e.value)
