"""Fine-tuning settings refused by name before the workdir gets any folder (head features,
``num_classes``, ``multilabel`` with one label column), and a missing column said with the
setting that names it."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lmscale.config import ConfigError
from lmscale.data.errors import DataError
from tests.finetune.conftest import ft_config


@pytest.mark.parametrize("key, value, message", [
    ("finetune.pooling", "avg", "finetune.pooling must be one or more of last, mean, max, min "
                                "(comma-separated), got 'avg'"),
    ("finetune.pooling", "last,avg", "finetune.pooling must be one or more of last, mean, max, min "
                                     "(comma-separated), got 'last,avg'"),
    ("finetune.pooling", "last,mean,last", "finetune.pooling='last,mean,last' names last "
                                           "twice: each feature once"),  # was the same feature twice
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
    # Each ran: the last 10 val texts dropped, the head's gradient ascended, the LM unfrozen
    # with a stretched horizon, the auxiliary loss off; bucket_width=0 a ZeroDivisionError.
    ("finetune.max_val_texts", -10, "finetune.max_val_texts must be >= 0, got -10"),
    ("finetune.head_lr", -0.01, "finetune.head_lr must be >= 0, got -0.01"),
    ("finetune.freeze_steps", -5, "finetune.freeze_steps must be >= 0, got -5"),
    ("finetune.aux_lm_weight", -1.0, "finetune.aux_lm_weight must be >= 0, got -1.0"),
    ("finetune.bucket_width", 0, "finetune.bucket_width must be >= 1 (tokens a batch's width "
                                 "is rounded up to), got 0"),
    ("finetune.best_metric", "f1", "finetune.best_metric must be one of ['accuracy', "
                                   "'macro_f1', 'micro_f1', 'jaccard', 'mcc', 'loss'], got 'f1'"),
    ("finetune.lm_init", "scratch", "finetune.lm_init must be one of ['pretrained', 'random'], "
                                    "got 'scratch'"),
    # LM training's settings: recorded in config.json as if applied, changing nothing
    ("train.seq_len", 8, "train.seq_len=8 is a setting of language-model training that "
                         "fine-tuning does not use (it reads whole texts; finetune.grad_tokens "
                         "bounds the back-propagation through long ones); leave it at 256"),
    ("train.eval_steps", 1, "train.eval_steps=1 is a setting of language-model training that "
                            "fine-tuning does not use (it validates on whole texts; "
                            "finetune.max_val_texts bounds the validation during training); "
                            "leave it at 0"),
    ("train.bptt_max", 40, "train.bptt_max=40 is a setting of language-model training that "
                           "fine-tuning does not use (it reads whole texts); leave it at 0"),
    ("data.reset_on_documents", True, "data.reset_on_documents=True is a setting of "
                                      "language-model training that fine-tuning does not use (it "
                                      "reads finetune.train/val/test with the LM's own "
                                      "tokenizer); leave it at False"),
    # the model is init_from's LM: a different value was recorded, not applied
    ("model.output_dropout", 0.5, "model.output_dropout=0.5: a fine-tune's model is init_from's "
                                  "LM, whose model.output_dropout is 0.0; leave it unset "
                                  "(fine-tuning applies the LM's own dropouts times "
                                  "finetune.lm_dropout; finetune.head_dropout regularizes the "
                                  "head)"),
    ("model.hidden", 64, "model.hidden=64: a fine-tune's model is init_from's LM, whose "
                         "model.hidden is 32; leave it unset"),
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


def test_an_empty_init_from_is_refused_by_name(data, tmp_path):
    from lmscale.finetuning.loop import finetune
    with pytest.raises(ConfigError, match=re.escape(
            "init_from is empty: give config.init_from=LM_WORKDIR (a trained LM run)")):
        finetune(ft_config("", data["sst_train"], data["sst_val"]), str(tmp_path / "ft"))
    assert not (tmp_path / "ft").exists()


def test_the_data_message_stays_for_data_of_one_class(sst_run, tmp_path):
    from lmscale.finetuning.loop import finetune
    zeros = tmp_path / "zeros.csv"
    zeros.write_text("sentence,label\ngood,0\nbad,0\n")
    with pytest.raises(DataError, match="zeros.csv: one class only; classification needs two or more"):
        finetune(ft_config(sst_run, str(zeros), str(zeros)), str(tmp_path / "ft"))
    assert not (tmp_path / "ft").exists()


def test_fewer_texts_than_a_batch_are_refused_before_any_folder(sst_run, tmp_path):
    """Refused after the workdir got best/checkpoints/, checkpoints/ and .lock (and a run
    there archived with resume=false), as the other refusals are not; the setting named."""
    from lmscale.finetuning.loop import finetune
    few = tmp_path / "few.csv"
    few.write_text("sentence,label\ngood,1\nbad,0\nfine,1\n")
    with pytest.raises(DataError, match=re.escape(
            "few.csv: 3 training texts are fewer than one batch of train.batch_size=16")):
        finetune(ft_config(sst_run, str(few), str(few)), str(tmp_path / "ft"))
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
    hint = "(set config.finetune.text_column / config.finetune.label_column)"  # the API's
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


def test_the_lms_dropouts_are_said_and_an_unreadable_checkpoint_falls_back(sst_run, data,
                                                                            tmp_path, capsys):
    """checkpoint.fallback was ignored by fine-tuning (an unreadable newest checkpoint stopped
    the resume even with it); an LM trained with dropout was fine-tuned without it, unsaid; a
    model setting equal to the LM's is no refusal."""
    import json
    import os
    import shutil
    from lmscale.finetuning.loop import finetune
    from lmscale.training.checkpoints import UnreadableCheckpointError
    from lmscale.training.metrics import read_metrics
    lm = tmp_path / "lm"
    shutil.copytree(sst_run, lm, ignore=shutil.ignore_patterns("best", "transfer", "features"))
    record = json.load(open(lm / "config.json"))
    record["model"]["input_dropout"] = 0.3
    json.dump(record, open(lm / "config.json", "w"))
    kw = {"train.steps": 4, "train.eval_every": 4, "checkpoint.every": 2,
          "model.input_dropout": 0.3}
    workdir = str(tmp_path / "ft")
    finetune(ft_config(str(lm), data["sst_train"], data["sst_val"], **kw), workdir)
    assert ("note: the LM was trained with dropout (model.input_dropout=0.3); fine-tuning reads "
            "the texts without it (finetune.lm_dropout=0.5 applies half of each rate, ULMFiT's "
            "classifier recipe; finetune.head_dropout regularizes the head)"
            in capsys.readouterr().err)
    os.remove(os.path.join(workdir, "checkpoints", "4", "state", "manifest.ocdbt"))
    with pytest.raises(UnreadableCheckpointError,
                       match=r"checkpoints/4 is unreadable.*config.checkpoint.fallback = True "
                             r"resumes from the previous one \(step 2\)"):
        finetune(ft_config(str(lm), data["sst_train"], data["sst_val"], **{**kw, "train.steps": 6}),
                 workdir)
    finetune(ft_config(str(lm), data["sst_train"], data["sst_val"],
                       **{**kw, "train.steps": 6, "checkpoint.fallback": True}), workdir)
    assert os.listdir(os.path.join(workdir, "unreadable_checkpoints"))[0].startswith("4-")
    assert sorted(map(int, os.listdir(os.path.join(workdir, "checkpoints")))) == [2, 4, 6]
    train = [r["step"] for r in read_metrics(workdir) if r["split"] == "train"]
    assert train == [2, 4, 6], train  # steps 3 and 4 trained again from step 2

    # A resume that would choose its best checkpoint otherwise, or read other batches, is
    # refused: best_metric=loss compared losses with the accuracy kept in best.json (the best
    # stayed at its old step), and a per-device batch on another device count changed the
    # global batch and so every later step's texts, both silently.
    from lmscale.training.checkpoints import CheckpointMismatchError
    for key, value, why in (
            ("finetune.best_metric", "loss", "the best checkpoint so far was chosen by it"),
            ("finetune.max_val_texts", 10, "the best checkpoint so far was scored on those texts"),
            ("train.batch_size", 8, "a step's texts follow from the step and the batch")):
        with pytest.raises(CheckpointMismatchError, match=re.escape(
                f"was fine-tuned with {key}=") + f".* is refused \\({why}"):
            finetune(ft_config(str(lm), data["sst_train"], data["sst_val"],
                               **{**kw, "train.steps": 8, key: value}), workdir)


@pytest.mark.parametrize("spec", ["0,1", "1,-1", "1", "nan,1", "1,inf"])
def test_class_weights_must_be_positive_and_one_per_class(spec):
    """A weight of 0 made its class's real rows count as filler in the logged accuracy (rows of
    weight 0 are the batch's filler): 4 texts of which 1 right read as 1/1. nan or inf trained
    on a loss of nan and stopped advising a lower optim.lr."""
    from lmscale.finetuning.data import class_weights_from
    with pytest.raises(DataError, match=r"finetune.class_weights has \d values; the task has 2 "
                                        r"classes \(each weight > 0 and finite\), got "
                                        + re.escape(repr(spec))):
        class_weights_from(spec, np.array([0, 1, 1]), 2)
    np.testing.assert_allclose(class_weights_from("0.5,2", np.array([0, 1]), 2), [0.5, 2.0])


def test_a_model_setting_given_at_its_default_is_checked_against_the_lm(sst_run, data, tmp_path):
    """``--config.model.hidden=4096`` (the default) on a 32-unit LM was replaced by the LM's 32
    unsaid (only a value other than the default was compared); now the flags given are, and
    an unused setting given at its default (``--config.train.seq_len=256``) is refused too."""
    from lmscale.finetuning.loop import finetune
    config = ft_config(sst_run, data["sst_train"], data["sst_val"], **{"model.hidden": 4096})
    with pytest.raises(ConfigError, match=re.escape(
            "model.hidden=4096: a fine-tune's model is init_from's LM, whose model.hidden is 32")):
        finetune(config, str(tmp_path / "ft"), given={"model.hidden": 4096})
    assert not (tmp_path / "ft").exists()
    from tests.finetune.conftest import run_tool
    p = run_tool("lmscale.finetune", "--config=configs/finetune_sst.py",
                 f"--workdir={tmp_path / 'cli'}", f"--config.init_from={sst_run}",
                 f"--config.finetune.train={data['sst_train']}",
                 f"--config.finetune.val={data['sst_val']}", "--config.model.hidden=4096",
                 ok=False)
    assert "model.hidden=4096: a fine-tune's model is init_from's LM" in p.stderr, p.stderr
    assert not (tmp_path / "cli").exists()
    config = ft_config(sst_run, data["sst_train"], data["sst_val"])  # seq_len at its default
    with pytest.raises(ConfigError, match=re.escape(
            "train.seq_len=256 is a setting of language-model training that fine-tuning does "
            "not use (it reads whole texts; finetune.grad_tokens bounds the back-propagation "
            "through long ones); leave it unset")):
        finetune(config, str(tmp_path / "ft"), given={"train.seq_len": 256})
    assert not (tmp_path / "ft").exists()


def test_the_best_record_travels_in_its_checkpoint(sst_run, data, tmp_path, capsys):
    """best.json was written beside the best weights' asynchronous save: a failed save (a full
    disk) or a kill left it naming weights never completed (keep=1 had deleted the old ones),
    and a resumed run whose best.json named them failed at its end restoring them. The best
    checkpoint now carries the record, and best.json names it once it is on disk."""
    import json
    import os
    from lmscale.finetuning.loop import finetune
    from lmscale.training.checkpoints import Checkpointer
    kw = {"train.steps": 4, "train.eval_every": 2, "checkpoint.every": 2}
    workdir = str(tmp_path / "ft")
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **kw), workdir)
    best = json.load(open(os.path.join(workdir, "best.json")))
    kept = Checkpointer(os.path.join(workdir, "best"), keep=1, read_only=True)
    assert kept.steps() == [best["step"]] and kept.read_meta()["best"] == best
    kept.close()
    # What a stop between a best save and best.json leaves: best.json naming weights that are
    # gone, with a score no later validation beats.
    json.dump({"step": 1, "metric": "accuracy", "value": 1.0},
              open(os.path.join(workdir, "best.json"), "w"))
    results = finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                                 **{**kw, "train.steps": 6}), workdir)
    assert results["best"]["step"] in (best["step"], 6) and results["best"]["value"] < 1.0
    assert json.load(open(os.path.join(workdir, "best.json"))) == results["best"]
    assert not results["already_trained"]
    from lmscale.training.restore import load_trained, weights_fingerprint  # which LM it began from
    lm = load_trained(sst_run)
    assert json.load(open(os.path.join(workdir, "results.json")))["lm"] == {
        "workdir": os.path.abspath(sst_run), "step": lm.step, "weights": weights_fingerprint(lm),
        "init": "pretrained"}
    # Run again, finished: said without a progress bar too (a notebook's second call printed
    # the same tables as if it had trained again), and in the record.
    capsys.readouterr()
    again = finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                               **{**kw, "train.steps": 6}), workdir)
    assert again["already_trained"] and again["best"] == results["best"]
    assert f"{workdir} is already fine-tuned to step 6 (train.steps=6)" in capsys.readouterr().err
    # A run of an older lmscale (no record in its best checkpoint) whose best.json names
    # weights never written, re-run at its end: the kept weights scored again (a TypeError on
    # best None; then the last state, worse, replaced them)
    step = results["best"]["step"]
    meta = os.path.join(workdir, "best", "checkpoints", str(step), "meta", "metadata")
    record = json.load(open(meta))
    del record["best"]
    json.dump(record, open(meta, "w"))
    json.dump({"step": step + 100, "metric": "accuracy", "value": 0.9},
              open(os.path.join(workdir, "best.json"), "w"))
    old = finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                             **{**kw, "train.steps": 6}), workdir)
    assert old["best"] == results["best"]  # the same weights and texts, scored again
    assert json.load(open(os.path.join(workdir, "best.json"))) == old["best"]
    assert os.listdir(os.path.join(workdir, "best", "checkpoints")) == [str(step)]
    # An LM trained into the classifier's folder: refused as what it is (was field by field),
    # before anything is archived.
    from lmscale.training.checkpoints import CheckpointMismatchError
    from lmscale.training.loop import train
    from tests.conftest import tiny_config
    for resume in (True, False):
        lm_config = tiny_config(data["sst_train"])
        lm_config.resume = resume
        with pytest.raises(CheckpointMismatchError, match=f"{workdir} holds a fine-tuned "
                                                          f"classifier \\(lmscale.finetune\\)"):
            train(lm_config, workdir)
    assert not os.path.exists(os.path.join(workdir, "archive"))


def test_a_run_from_before_threshold_metric_resumes_as_f1_only():
    """An older multi-label fine-tune (no finetune.threshold_metric in its record) resumed with
    jaccard went on silently, comparing Jaccard-tuned scores with its F1-tuned best."""
    from lmscale.finetuning.settings import check_same_start
    from lmscale.training.checkpoints import CheckpointMismatchError
    config = ft_config("/lm", "/t.csv", "/v.csv", **{"finetune.multilabel": True,
                                                     "finetune.threshold_metric": "jaccard"})
    old = config.to_dict()
    del old["finetune"]["threshold_metric"]
    meta = {"config": old, "derived": {"init_from": "/lm", "lm_step": 3, "lm_init": "pretrained"}}
    with pytest.raises(CheckpointMismatchError, match="finetune.threshold_metric='f1'"):
        check_same_start(meta, config, 3, "/run")
    with config.unlocked():
        config.finetune.threshold_metric = "f1"
    check_same_start(meta, config, 3, "/run")



def test_an_interrupted_fine_tune_returns_stopped_and_its_best_so_far(sst_run, data, tmp_path,
                                                                     capfd):
    """A notebook's interrupt (SIGINT) stopped finetune() at a checkpoint and it returned only
    {"step", "stopped_by_signal"}: the cell's next line, results["metrics"], raised KeyError
    with nothing saying why; train() returns "stopped" and its last validation."""
    import os
    import signal
    import threading
    import time

    from lmscale.finetuning.loop import finetune
    from lmscale.training.metrics import read_metrics
    run = str(tmp_path / "ft")

    def interrupt() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if any(r["split"] == "val" for r in read_metrics(run)):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt)
    thread.start()
    result = finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **{
        "train.steps": 100000, "train.eval_every": 2, "train.log_every": 1}), run)
    thread.join()
    assert result["stopped"] and result["stopped_by_signal"] == signal.SIGINT
    assert result["best"]["step"] >= 2 and result["best"]["metric"] == "accuracy"
    assert f"stopped by signal 2 at step {result['step']}" in capfd.readouterr().err


def test_a_resume_with_another_seed_is_refused():
    """A fine-tune resumed with another config.seed went on silently with another order of the
    training texts (TrainBatches draws each epoch's permutation from the seed): mid-epoch,
    some texts read twice and some never, as lmscale.train refuses."""
    from lmscale.finetuning.settings import check_same_start
    from lmscale.training.checkpoints import CheckpointMismatchError
    config = ft_config("/lm", "/t.csv", "/v.csv")
    meta = {"config": config.to_dict(), "derived": {"init_from": "/lm", "lm_step": 3,
                                                    "lm_init": "pretrained"}}
    check_same_start(meta, config, 3, "/run")
    with config.unlocked():
        config.seed = config.seed + 1
    with pytest.raises(CheckpointMismatchError, match="seed=0.*order of the training texts"):
        check_same_start(meta, config, 3, "/run")


def test_a_resume_on_other_validation_texts_is_refused():
    """A fine-tune resumed with another finetune.val compared the new texts' scores with a best
    scored on the old ones (as max_val_texts, refused), said nowhere."""
    from lmscale.finetuning.settings import check_same_start
    from lmscale.training.checkpoints import CheckpointMismatchError
    config = ft_config("/lm", "/t.csv", "/v.csv")
    meta = {"config": config.to_dict(), "derived": {"init_from": "/lm", "lm_step": 3,
                                                    "lm_init": "pretrained"}}
    with config.unlocked():
        config.finetune.val = "/other.csv"
    with pytest.raises(CheckpointMismatchError, match="finetune.val='/v.csv'"):
        check_same_start(meta, config, 3, "/run")


def test_a_resume_names_the_validation_texts_by_content_not_path(sst_run, data, tmp_path):
    """finetune.val was compared as text: the same file named through a link (or "./v.csv",
    an absolute path) was refused, and the same path holding edited labels resumed silently,
    its best compared with scores of other texts. The run records its data's fingerprint."""
    import json
    import os
    import shutil
    from lmscale.finetuning.loop import finetune
    from lmscale.training.checkpoints import CheckpointMismatchError
    val = tmp_path / "val.csv"
    shutil.copy(data["sst_val"], val)
    link = tmp_path / "link.csv"
    link.symlink_to(val)
    kw = {"train.steps": 2, "train.eval_every": 2, "checkpoint.every": 2}
    workdir = str(tmp_path / "ft")
    finetune(ft_config(sst_run, data["sst_train"], str(val), **kw), workdir)
    derived = json.load(open(os.path.join(workdir, "config.json")))["derived"]
    assert set(derived["texts_fingerprint"]) == {"train", "val"}
    result = finetune(ft_config(sst_run, data["sst_train"], str(link), **{**kw, "train.steps": 3}),
                      workdir)
    assert not result["already_trained"]  # resumed at step 2, trained its third step
    lines = val.read_text().splitlines()
    label, text = lines[1].split(",", 1)
    lines[1] = f"{1 - int(label)},{text}"  # one label flipped
    val.write_text("\n".join(lines) + "\n")
    with pytest.raises(CheckpointMismatchError, match=f"other texts or labels than finetune.val="
                                                      f"'{re.escape(str(val))}'"):
        finetune(ft_config(sst_run, data["sst_train"], str(val), **{**kw, "train.steps": 4}),
                 workdir)


@pytest.mark.parametrize("key, value", [("train.start_from", "runs/other"),
                                        ("train.divergence_factor", 0.001),
                                        ("checkpoint.keep_best", True),
                                        ("optim.ntasgd_nonmono", 7),
                                        ("optim.lr_drop_factor", 0.5)])
def test_lm_training_settings_fine_tuning_ignored_are_refused(key, value):
    """Each ran a fine-tune identical to the one without it (test accuracy to the last digit)
    and was recorded in config.json as if applied (train.start_from: as if the classifier
    started from that run)."""
    from lmscale.finetuning.settings import check_used_in_fine_tuning
    from tests.training.test_config import locked
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}=.* fine-tuning does not use"):
        check_used_in_fine_tuning(locked(**{key: value}))


def test_bad_class_weights_leave_the_workdir_and_its_run_as_they_were(sst_run, data, tmp_path):
    """With --config.resume=false a typo in finetune.class_weights archived the finished run in
    the workdir first (WORKDIR/archive/, empty best/ and checkpoints/ left), then failed."""
    from lmscale.finetuning.loop import finetune
    workdir = tmp_path / "ft"
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **{"train.steps": 2}),
             str(workdir))
    before = sorted(p.name for p in workdir.iterdir())
    for spec in ("-1,1", "nan,1"):
        with pytest.raises(DataError, match="finetune.class_weights has 2 values"):
            finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                               **{"train.steps": 2, "resume": False,
                                  "finetune.class_weights": spec}), str(workdir))
    assert sorted(p.name for p in workdir.iterdir()) == before
    with pytest.raises(DataError, match="finetune.class_weights"):
        finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                           **{"finetune.class_weights": "0,1"}), str(tmp_path / "new"))
    assert not (tmp_path / "new" / "checkpoints").exists()


@pytest.mark.parametrize("labels, shown", [((-1, 1), "[-1]"), ((-1, 0), "[-1]"),
                                           ((-2, -1), "[-2, -1]")])
def test_negative_labels_are_named_as_such(tmp_path, labels, shown):
    """Labels -1/1 (SVM-light's) were "no text of class id(s) [0] ... labels from 1? subtract
    1: set finetune.num_classes=2" (then refused for the -1), and -1/0 "one class only"."""
    from lmscale.config import default_config
    from lmscale.finetuning.data import load_splits
    path = tmp_path / "pm.csv"
    path.write_text("sentence,label\n" + "".join(f"text {i},{y}\n" for i, y in enumerate(labels)))
    ft = default_config().finetune
    ft.train, ft.val, ft.text_column, ft.label_column = str(path), str(path), "sentence", "label"
    with pytest.raises(DataError, match=re.escape(
            f"pm.csv: label column 'label' has negative values {shown}; class ids run from 0 "
            f"(labels -1 and 1? give 0 and 1)")):
        load_splits(ft)


def test_a_resume_after_the_lm_trained_on_names_no_setting_to_set_back():
    """The LM run trained on after the fine-tune began: "use the same value" named nothing a
    user can set (a fine-tune starts from the LM's newest checkpoint)."""
    from lmscale.finetuning.settings import check_same_start
    from lmscale.training.checkpoints import CheckpointMismatchError
    config = ft_config("/lm", "/t.csv", "/v.csv")
    meta = {"config": config.to_dict(), "derived": {"init_from": "/lm", "lm_step": 40,
                                                    "lm_init": "pretrained"}}
    with pytest.raises(CheckpointMismatchError) as e:
        check_same_start(meta, config, 60, "/run")
    assert str(e.value) == (
        "/run was fine-tuned with the LM's checkpoint step=40; resuming it with 60 is refused "
        "(the LM run /lm has trained on since: a fine-tune starts from its newest checkpoint); "
        "a new --workdir, or --config.resume=false to start afresh (the old run is archived)")
