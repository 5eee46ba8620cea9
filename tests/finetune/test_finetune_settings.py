"""Fine-tuning settings refused by name before the workdir gets any folder (head features,
``num_classes``, ``multilabel`` with one label column), and a missing column said with the
setting that names it."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lmscale.config import ConfigError
from lmscale.data.errors import DataError
from tests.finetune.test_finetune import ft_config


@pytest.mark.parametrize("key, value, message", [
    ("finetune.pooling", "avg", "finetune.pooling must be one or more of last, mean, max "
                                "(comma-separated), got 'avg'"),
    ("finetune.pooling", "last,avg", "finetune.pooling must be one or more of last, mean, max "
                                     "(comma-separated), got 'last,avg'"),
    ("finetune.state", "cel", "finetune.state must be one or more of cell, hidden "
                              "(comma-separated: this model's states; \"\" = cell), got 'cel'"),
    ("finetune.head_activation", "gleu", "finetune.head_activation must be one of gelu, relu, "
                                         "tanh, got 'gleu'"),
    ("finetune.head_hidden", "abc", "finetune.head_hidden must be comma-separated positive "
                                    "integers (e.g. \"256\" or \"512,256\"), got 'abc'"),
    ("finetune.head_hidden", "256,0", "finetune.head_hidden must be comma-separated positive "
                                      "integers (e.g. \"256\" or \"512,256\"), got '256,0'"),
    ("finetune.head_dropout", 1.0, "finetune.head_dropout must be in [0, 1), got 1.0"),
    ("finetune.num_classes", 1, "finetune.num_classes=1: classification needs 2 or more "
                                "classes (0 = the largest train label + 1)"),
    ("finetune.num_classes", -3, "finetune.num_classes=-3: classification needs 2 or more "
                                 "classes (0 = the largest train label + 1)"),
])
def test_a_bad_head_setting_is_one_line_naming_it_and_writes_nothing(sst_run, data, tmp_path,
                                                                     key, value, message):
    """A typo in a head setting was a 51-line traceback from flax's module constructor, after
    the workdir got best/checkpoints/ and checkpoints/; num_classes=1 blamed the data."""
    from lmscale.finetuning.loop import finetune
    workdir = tmp_path / "ft"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **{key: value}),
                 str(workdir))
    assert not workdir.exists()


def test_the_data_message_stays_for_data_of_one_class(sst_run, tmp_path):
    from lmscale.finetuning.loop import finetune
    zeros = tmp_path / "zeros.csv"
    zeros.write_text("sentence,label\ngood,0\nbad,0\n")
    with pytest.raises(DataError, match="zeros.csv: one class only; classification needs two or more"):
        finetune(ft_config(sst_run, str(zeros), str(zeros)), str(tmp_path / "ft"))
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("column", ["finetune.text_column", "finetune.label_column"])
@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_a_missing_column_names_the_setting(sst_run, tmp_path, column, ext):
    from lmscale.finetuning.loop import finetune
    path = tmp_path / f"train.{ext}"
    if ext == "csv":
        path.write_text("sentence,label\ngood,1\nbad,0\n")
    else:
        path.write_text('{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": 0}\n')
    hint = "(set --config.finetune.text_column / --config.finetune.label_column)"
    with pytest.raises(DataError, match=re.escape("'oops'; ") + ".*" + re.escape(hint)):
        finetune(ft_config(sst_run, str(path), str(path), **{column: "oops"}), str(tmp_path / "ft"))


def test_multilabel_with_one_label_column_is_refused_by_name(sst_run, data, tmp_path):
    """``finetune.multilabel=true`` on SST's one column trained with a wrong loss (labels [B]
    against logits [B, 1] broadcast to [B, B]) and crashed at the first validation
    (IndexError in tune_thresholds); refused at start-up, before any data is read."""
    from lmscale.finetuning.loop import finetune
    workdir = tmp_path / "ml1"
    with pytest.raises(ConfigError, match=re.escape(
            "finetune.multilabel=true needs two or more 0/1 label columns, and "
            "finetune.label_column='label' names one; for one binary label leave "
            "finetune.multilabel=false (a softmax over classes 0 and 1)")):
        finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **{
            "finetune.multilabel": True, "train.steps": 2, "train.eval_every": 2}), str(workdir))
    assert not workdir.exists()


def test_the_multilabel_loss_refuses_labels_that_would_broadcast():
    """Why one column is refused, and the loss's own guard: labels [B] against logits [B, 1]
    broadcast to a [B, B] loss, each text scored against every label of the batch."""
    import jax.numpy as jnp
    from lmscale.finetuning.steps import classification_loss
    logits, labels, w = jnp.array([[5.0], [-5.0], [5.0], [-5.0]]), jnp.array([1.0, 0, 1, 0]), jnp.ones(4)
    right = 4 * float(np.log1p(np.exp(-5.0)))
    assert float(classification_loss(logits, labels[:, None], w, True)) == pytest.approx(right, rel=1e-5)
    with pytest.raises(ValueError, match=r"labels \(4,\) must have the logits' shape \(4, 1\)"):
        classification_loss(logits, labels, w, True)
