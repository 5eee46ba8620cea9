"""Fine-tuning: head on mLSTM and transformer, learning, restore/freeze, resume, thresholds,
aux-loss mask, classify on a fine-tuned run, bad input (classify on a transfer output:
test_classify_transfer_output.py)."""

from __future__ import annotations

import csv
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import TINY_TRANSFORMER, lowered_programs, shared_data, tiny_config
from tests.finetune.conftest import EMOTIONS, ft_config, run_tool


@pytest.fixture(scope="module")
def transformer_lm(tmp_path_factory) -> str:
    from lmscale.training.loop import train
    workdir = str(tmp_path_factory.mktemp("tlm") / "run")
    config = tiny_config(f"{shared_data('sst_binary')}/train.csv", **TINY_TRANSFORMER, **{
        "data.text_column": "sentence", "data.split": "8,1,0", "data.shard_tokens": 65536,
        "train.steps": 4, "train.eval_every": 0})
    train(config, workdir)
    return workdir


def _params(workdir: str, sub: str = "") -> dict:
    from lmscale.finetuning.classifier import load_classifier
    return jax.device_get(load_classifier(workdir).params)


def test_head_on_both_lms_pads_and_cuts(sst_run, transformer_lm):
    """Features of a text do not depend on the padding after it; the transformer reads at most
    max_len tokens (the last ones)."""
    from lmscale.finetuning.data import encode, make_batch
    from lmscale.finetuning.head import Classifier
    from lmscale.training.restore import load_trained
    for workdir, states in ((sst_run, ("cell", "hidden")), (transformer_lm, ("hidden",))):
        lm = load_trained(workdir)
        clf = Classifier(lm.model(), 3, states=states, poolings=("last", "mean", "max", "min"),
                         hidden=(8,), rngs=nnx.Rngs(0))
        long_text = "a remarkably long sentence " * 5
        ids = encode(lm.tokenizer, lambda t: t, ["good film", long_text], lm.model().max_len)
        assert lm.model().max_len is None or len(ids[1]) == lm.model().max_len
        b = make_batch(ids, np.zeros(2, np.int64), 2, pad=0, bucket=8, max_len=lm.model().max_len,
                       row_weights=np.ones(2))
        feats = clf.features(jnp.asarray(b["tokens"]), jnp.asarray(b["lengths"]))
        assert feats.shape == (2, len(states) * 4 * lm.model().feature_width)
        alone = clf.features(jnp.asarray(ids[0][None]), jnp.asarray([len(ids[0])]))
        np.testing.assert_allclose(feats[0], alone[0], rtol=1e-5, atol=1e-5)
        assert clf(jnp.asarray(b["tokens"]), jnp.asarray(b["lengths"])).shape == (2, 3)


def test_aux_lm_loss_counts_only_real_tokens(sst_run):
    from lmscale.finetuning.data import encode, make_batch
    from lmscale.finetuning.steps import aux_lm_loss
    from lmscale.training.loss import cross_entropy_sums
    from lmscale.training.restore import load_trained
    lm = load_trained(sst_run)
    model = lm.model()
    ids = encode(lm.tokenizer, lambda t: t, ["a fine and moving film", "dull"], None)
    b = make_batch(ids, np.zeros(2, np.int64), 2, pad=0, bucket=16, max_len=None, row_weights=np.ones(2))
    logits, _ = model(jnp.asarray(b["tokens"]), model.initial_carry(2))
    got = float(aux_lm_loss(logits, jnp.asarray(b["tokens"]), jnp.asarray(b["lm_weights"])))
    nats = count = 0.0
    for x in ids:  # each text alone, unpadded
        lg, _ = model(jnp.asarray(x[None]), model.initial_carry(1))
        n, c = cross_entropy_sums(lg[:, :-1], jnp.asarray(x[None, 1:]), jnp.ones((1, len(x) - 1)))
        nats, count = nats + float(n), count + float(c)
    assert got == pytest.approx(nats / count, rel=1e-5)
    inverted = (b["lm_weights"] == 0).astype(np.float32)  # padding counted, real tokens not
    inverted /= inverted.sum()
    bad = float(aux_lm_loss(logits, jnp.asarray(b["tokens"]), jnp.asarray(inverted)))
    assert bad != pytest.approx(nats / count, rel=1e-3)


def test_sst_learns_restores_freezes_and_classify_reproduces(sst_run, data, tmp_path):
    from lmscale.finetuning.loop import finetune
    from lmscale.training.metrics import read_metrics
    from lmscale.training.restore import load_trained
    run = str(tmp_path / "ft")
    config = ft_config(sst_run, data["sst_train"], data["sst_val"], **{
        "train.steps": 16, "finetune.freeze_steps": 4, "checkpoint.every": 4, "checkpoint.keep": 10,
        "finetune.aux_lm_weight": 0.1, "finetune.pooling": "last,mean", "train.log_every": 1})
    results = finetune(config, run)
    train_recs = [r for r in read_metrics(run) if r["split"] == "train"]
    # Steps 1 and 5 compile (the frozen and the unfrozen program), and the first step of each
    # other batch width: no throughput there (test_finetune_timing.py counts them).
    untimed = {r["step"] for r in train_recs if r["steps_per_s"] is None}
    assert {1, 5} <= untimed, untimed
    for r in train_recs:
        if r["step"] in untimed:
            assert r["first_step_s"] > 0, r
        else:
            assert r["steps_per_s"] > 0 and "first_step_s" not in r, r
    assert train_recs[-1]["loss"] < train_recs[0]["loss"]  # it learns
    assert train_recs[-1]["aux_lm_loss"] > 0
    # The logged learning rates are the schedules' (the LM's 0 while frozen, then counted from 0).
    from lmscale.config import load_config
    from lmscale.training.optimizer import make_finetune_optimizer
    saved_config, derived = load_config(os.path.join(run, "config.json"))
    _, schedules = make_finetune_optimizer(saved_config.optim, derived["decay_steps"], lr=derived["lr"],
                                           head_lr=derived["head_lr"], freeze_steps=4)
    for r in train_recs:
        assert r["lr"] == pytest.approx(float(schedules["head"](r["step"] - 1)), rel=1e-6)
        assert r["lm_lr"] == (0.0 if r["step"] <= 4 else
                              pytest.approx(float(schedules["lm"](r["step"] - 5)), rel=1e-6))
    assert {r["lm_lr"] > 0 for r in train_recs} == {False, True}
    assert set(results["metrics"]["val"]) >= {"accuracy", "macro_f1", "micro_f1", "jaccard", "mcc",
                                              "per_class"}
    assert json.load(open(os.path.join(run, "best.json")))["metric"] == "accuracy"
    log = open(os.path.join(run, "commands.log")).read().splitlines()  # a start from Python
    assert len(log) == 2 and "start at step 0, 1 process x" in log[0]
    assert log[1].startswith("# started from Python: ")
    # Step 4 (all frozen): LM parameters bit-identical to the LM checkpoint; the head trained.
    from lmscale.training.checkpoints import Checkpointer
    ck = Checkpointer(run, async_save=False)
    like = _params(run)
    at4 = jax.device_get(ck.restore_params(like, jax.sharding.SingleDeviceSharding(jax.devices()[0]), 4))
    at24 = jax.device_get(ck.restore_params(like, jax.sharding.SingleDeviceSharding(jax.devices()[0]), 16))
    ck.close()
    lm_params = jax.device_get(load_trained(sst_run).params)
    for a, b in zip(jax.tree.leaves(at4["lm"]), jax.tree.leaves(lm_params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(at24["lm"]),
                                                          jax.tree.leaves(lm_params)))
    # classify CLI on the run reproduces the run's own validation predictions
    out = str(tmp_path / "pred.csv")
    said = run_tool("lmscale.classify", f"--workdir={run}", f"--input={data['sst_val']}",
                    "--text_column=sentence", f"--output={out}", "--labels=label").stderr
    assert "classifying 64 texts (" in said  # before the wait, for a log
    assert re.search(r"classifying 64 texts \(\d+ bytes of UTF-8\) with the weights of step \d+",
                     said), said  # the step whose weights it reads
    mine = list(csv.DictReader(open(out)))
    saved = list(csv.DictReader(open(os.path.join(run, "val_predictions.csv"))))
    assert [r["predicted"] for r in mine] == [r["predicted"] for r in saved]
    gold = [r["label"] for r in csv.DictReader(open(data["sst_val"]))]
    assert [r["gold"] for r in mine] == [r["gold"] for r in saved] == gold  # copied, named apart
    refused = run_tool("lmscale.classify", f"--workdir={run}", f"--input={out}",
                       "--text_column=text", f"--output={out}", ok=False)  # it overwrote its input
    assert "--output is the input file" in refused.stderr
    # a folder as --output: found only after classifying every text (a traceback) before
    refused = run_tool("lmscale.classify", f"--workdir={run}", f"--input={data['sst_val']}",
                       "--text_column=sentence", f"--output={tmp_path}", ok=False)
    assert refused.stderr.strip() == (f"error: --output={tmp_path} is a folder: give the "
                                      f"predictions CSV's file path (e.g. {tmp_path}/predictions.csv)")
    refused = run_tool("lmscale.classify", f"--workdir={run}", f"--input={data['sst_val']}",
                       "--text_column=sentence", f"--output={tmp_path}/no/p.csv", ok=False)
    assert refused.stderr.strip() == (f"error: {tmp_path}/no/p.csv: the folder {tmp_path}/no "
                                      f"does not exist")
    assert "classifying" not in refused.stderr  # said before the work
    (tmp_path / "afile").write_text("")  # a file where the folder goes: "does not exist" was said
    refused = run_tool("lmscale.classify", f"--workdir={run}", f"--input={data['sst_val']}",
                       "--text_column=sentence", f"--output={tmp_path}/afile/p.csv", ok=False)
    assert refused.stderr.strip() == (f"error: {tmp_path}/afile/p.csv: {tmp_path}/afile is a "
                                      f"file, not a folder")
    long = "é" * 120 + ".csv"  # a valid name (244 bytes), but not with ".metrics.json" after it
    refused = run_tool("lmscale.classify", f"--workdir={run}", f"--input={data['sst_val']}",
                       "--text_column=sentence", f"--output={tmp_path}/{long}", "--labels=label",
                       ok=False)
    assert refused.stderr.strip().endswith(f"the file name {long}.metrics.json is 257 bytes, "
                                           f"over the 255 a file system takes: give a shorter "
                                           f"name"), refused.stderr
    assert "classifying" not in refused.stderr  # said before the work
    longest = tmp_path / ("p" * 251 + ".csv")  # 255 bytes: NAME_MAX's, written
    run_tool("lmscale.classify", f"--workdir={run}", f"--input={data['sst_val']}",
             "--text_column=sentence", f"--output={longest}")
    assert len(list(csv.DictReader(open(longest)))) == 64
    # to the last digit: on the devices and in the rows its validation read (1e-6 apart on a
    # few rows before, on one device and 64 rows)
    assert [(r["p_0"], r["p_1"]) for r in mine] == [(r["p_0"], r["p_1"]) for r in saved]
    with pytest.raises(FileNotFoundError, match="is a fine-tuned classifier .* load it with "
                       "lmscale.load_classifier"):  # it advised --config.resume=false
        load_trained(run)
    assert json.load(open(out + ".metrics.json"))["accuracy"] == pytest.approx(
        results["metrics"]["val"]["accuracy"])
    # Again without --labels: the earlier metrics sat beside predictions they did not describe.
    run_tool("lmscale.classify", f"--workdir={run}", f"--input={data['sst_val']}",
             "--text_column=sentence", f"--output={out}")
    assert os.path.exists(out) and not os.path.exists(out + ".metrics.json")


def test_exact_resume_bitwise(sst_run, data, tmp_path, capsys):
    from lmscale.finetuning.loop import finetune
    from lmscale.training.metrics import read_metrics
    kw = {"optim.decay_steps": 6, "train.steps": 6, "train.eval_every": 3, "checkpoint.every": 3,
          "optim.schedule": "slanted_triangular", "finetune.freeze_steps": 2,
          "finetune.head_dropout": 0.2, "finetune.head_hidden": "8"}
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **kw), whole)
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **{**kw, "train.steps": 3}), parts)
    capsys.readouterr()
    with lowered_programs() as built:
        finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                           **{**kw, "train.progress_bar": True}), parts)
    assert f"resuming {parts} from its checkpoint at step 3 (of 6)" in capsys.readouterr().err
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                       **{**kw, "train.progress_bar": True}), parts)  # it did not say so
    assert f"{parts} is already fine-tuned to step 6 (train.steps=6)" in capsys.readouterr().err
    # restored into shapes: neither the classifier nor its optimizer state is initialized
    assert built and not [n for n in built if "init_classifier" in n or "initial_finetune" in n], built
    # Records whose window is the same in both (parts also logs at its end, step 3, which
    # starts a new window): train at 2 and 6, every validation.
    recs = lambda w: [(r["step"], r["split"], r["loss"]) for r in read_metrics(w)
                      if r["split"] == "val" or r["step"] in (2, 6)]
    assert recs(whole) == recs(parts)
    for a, b in zip(jax.tree.leaves(_params(whole)), jax.tree.leaves(_params(parts)), strict=True):
        np.testing.assert_array_equal(a, b)
    # Another start is refused, naming the field, and config.json is left as it was;
    # resume=false sets the finished run aside and starts afresh.
    from lmscale.training.checkpoints import CheckpointMismatchError
    config_json = open(os.path.join(whole, "config.json")).read()
    with pytest.raises(CheckpointMismatchError, match=(
            "fine-tuned with finetune.lm_init='pretrained'; resuming it with 'random' is refused")):
        finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                           **{**kw, "finetune.lm_init": "random"}), whole)
    assert open(os.path.join(whole, "config.json")).read() == config_json
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                       **{**kw, "finetune.lm_init": "random", "resume": False, "train.steps": 1}),
             whole)
    (archived,) = os.listdir(os.path.join(whole, "archive"))
    old = set(os.listdir(os.path.join(whole, "archive", archived)))
    assert {"checkpoints", "best", "best.json", "results.json", "config.json"} <= old, old
    assert json.load(open(os.path.join(whole, "config.json")))["finetune"]["lm_init"] == "random"


def test_multilabel_transformer_thresholds_reused_by_classify(transformer_lm, data, tmp_path):
    from lmscale.finetuning.classifier import load_classifier
    from lmscale.finetuning.loop import finetune
    run = str(tmp_path / "sem")
    config = ft_config(transformer_lm, data["sem_train"], data["sem_val"], **{
        "finetune.multilabel": True, "finetune.text_column": "Tweet",
        "finetune.label_column": EMOTIONS, "finetune.best_metric": "jaccard",
        "finetune.pooling": "last,max", "finetune.class_weights": "balanced",
        "finetune.threshold_metric": "jaccard"})
    results = finetune(config, run)
    saved = json.load(open(os.path.join(run, "thresholds.json")))
    assert saved["classes"] == EMOTIONS.split(",") and len(saved["thresholds"]) == 11
    assert saved["tuned_for"] == "jaccard"
    clf = load_classifier(run)
    np.testing.assert_array_equal(clf.thresholds, saved["thresholds"])
    from lmscale.transfer.labeled import load_labeled
    val = load_labeled(data["sem_val"], text_column="Tweet", label_column=EMOTIONS)
    probs, pred = clf.predict(val.texts)
    assert pred.shape == (64, 11)
    np.testing.assert_array_equal(pred, (probs >= np.asarray(saved["thresholds"])).astype(int))
    with open(os.path.join(run, "val_predictions.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))  # its labels by the tuned thresholds, not 0.5
    np.testing.assert_array_equal(
        [[int(r[f"predicted_{c}"]) for c in EMOTIONS.split(",")] for r in rows], pred)
    from sklearn.metrics import jaccard_score
    assert jaccard_score(val.labels, pred, average="samples", zero_division=1.0) == pytest.approx(
        results["metrics"]["val"]["jaccard"], abs=1e-6)
    from lmscale.transfer.metrics import tune_thresholds  # tuned for the val Jaccard
    np.testing.assert_allclose(saved["thresholds"], tune_thresholds(probs, val.labels, "jaccard"))
    from lmscale.training.metrics import read_metrics
    train_records = [r for r in read_metrics(run) if r["split"] == "train"]
    assert train_records and all("label_accuracy" in r and "accuracy" not in r
                                 for r in train_records)
    # Thresholds tuned for another step than best/'s (a run that went on past them and was
    # killed, or is still running): applied to other weights, silently; now 0.5, said.
    json.dump({**saved, "step": saved["step"] - 1}, open(os.path.join(run, "thresholds.json"), "w"))
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert load_classifier(run).thresholds is None
    assert f"was tuned for step {saved['step'] - 1}, and these weights are step " in err.getvalue()


def test_bad_input_one_line_errors(sst_run, data, tmp_path):
    from lmscale.config import ConfigError
    from lmscale.data.errors import DataError
    from lmscale.finetuning.loop import finetune
    p = run_tool("lmscale.classify", f"--workdir={sst_run}/transfer", f"--input={data['sst_val']}",
                 "--text_column=text", f"--output={tmp_path}/p.csv", ok=False)
    if "holds no classifier" not in p.stderr:  # no transfer output yet in this session
        assert "no column 'text'; columns are ['label', 'sentence']" in p.stderr
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error: ")
    assert not os.path.exists(f"{tmp_path}/p.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("Tweet,anger,joy\nhello,0,2\n")
    with pytest.raises(DataError, match="'joy' has values \\[2\\]; multi-label columns must be 0 or 1"):
        finetune(ft_config(sst_run, str(bad), str(bad), **{"finetune.multilabel": True,
                 "finetune.text_column": "Tweet", "finetune.label_column": "anger,joy"}), str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="not an lmscale LM workdir"):
        finetune(ft_config(str(tmp_path), data["sst_train"], data["sst_val"]), str(tmp_path / "y"))
    with pytest.raises(DataError, match="no column 'text'"):
        finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **{"finetune.text_column": "text"}),
                 str(tmp_path / "z"))
    with pytest.raises(DataError, match="no column 'joy'"):  # a missing label column
        finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **{
            "finetune.multilabel": True, "finetune.label_column": "label,joy"}), str(tmp_path / "m"))
    three = tmp_path / "three.csv"
    three.write_text("sentence,label\ngood,1\nbad,0\nodd,2\n")
    with pytest.raises(DataError, match=r"has values \[2\] outside the classes 0..1 \(of "
                                        r"finetune.num_classes\)"):
        finetune(ft_config(sst_run, str(three), str(three), **{"finetune.num_classes": 2}),
                 str(tmp_path / "c"))
    negative = tmp_path / "negative.csv"
    negative.write_text("sentence,label\ngood,1\nbad,0\nodd,-1\n")
    with pytest.raises(DataError, match=r"negative\.csv: label column 'label' has negative "
                                        r"values \[-1\]; class ids run from 0"):
        finetune(ft_config(sst_run, str(negative), str(negative)), str(tmp_path / "n"))
    empty = tmp_path / "empty.csv"
    empty.write_text("sentence,label\ngood,1\n  ,0\n")
    with pytest.raises(DataError, match="row 2 has only whitespace in 'sentence'"):
        finetune(ft_config(sst_run, str(empty), str(empty)), str(tmp_path / "e"))
    assert not any((tmp_path / d).exists() for d in ("m", "c", "e"))  # nothing half-written
    # The LM's own workdir, or another LM run's, is not a fine-tuning workdir (it was refused
    # as "a different model" after making best/, and resume=false archived the LM).
    import shutil
    other = tmp_path / "other_lm"
    shutil.copytree(sst_run, other, ignore=shutil.ignore_patterns("best", "transfer", "features"))
    for workdir, message in ((sst_run, "is the language model's own workdir"),
                             (str(other), "holds a language-model training run")):
        for resume in (True, False):
            with pytest.raises(ConfigError, match=message):
                finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                                   **{"resume": resume}), workdir)
    assert not (other / "best").exists() and not (other / "archive").exists()


def test_optimizer_settings_are_applied_or_refused(sst_run, data, tmp_path, capsys):
    """optim.weight_decay (and optim.name, lr_drop_epochs, ...) were ignored by fine-tuning and
    recorded in config.json as if applied. Now weight decay, the per-device batch, the decay
    horizon in epochs and the bfloat16 all-reduce apply; LM-training-only settings are refused."""
    import math
    import re
    from lmscale.config import ConfigError
    from lmscale.finetuning.loop import finetune
    for key, value in (("optim.name", "sgd"), ("optim.lr_drop_epochs", "2"),
                       ("train.grad_accum_steps", 2), ("train.variable_bptt", True)):
        with pytest.raises(ConfigError, match=f"^{re.escape(key)}=.* fine-tuning does not use"):
            finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **{key: value}),
                     str(tmp_path / "refused"))
    for key, value, message in (("optim.weight_decay_on", "weights", "optim.weight_decay_on must be one of"),
                                ("parallel.grad_reduce_dtype", "bf16", "parallel.grad_reduce_dtype must be"),
                                ("train.per_device_batch_size", -2, "train.per_device_batch_size must be >= 0")):
        with pytest.raises(ConfigError, match=message):  # bf16: a TypeError after files were written
            finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **{key: value}),
                     str(tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()

    common = {"train.steps": 4, "train.eval_every": 4, "finetune.freeze_steps": 0,
              "train.per_device_batch_size": 8, "optim.schedule": "linear",
              "optim.decay_epochs": 0.05, "optim.warmup_steps": 4,
              "parallel.grad_reduce_dtype": "bfloat16"}
    runs = {}
    for name, decay in (("plain", {}), ("decayed", {"optim.weight_decay": 1.0,
                                                     "optim.weight_decay_style": "decoupled",
                                                     "optim.weight_decay_on": "matrices"})):
        runs[name] = str(tmp_path / name)
        capsys.readouterr()
        finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **common, **decay), runs[name])
        err = capsys.readouterr().err
        assert ("note: optim.warmup_steps=4 is not shorter than the run's 4 steps: the learning "
                "rate rises to 75.0% of its peak at most") in err
        assert f"note: global batch {8 * jax.device_count()} (8 per device x " in err
    saved = json.load(open(os.path.join(runs["decayed"], "config.json")))
    batch = 8 * jax.device_count()
    assert saved["train"]["batch_size"] == batch
    assert saved["derived"]["decay_steps"] == min(4, math.ceil(0.05 * math.ceil(256 / batch))) < 4
    plain, decayed = _params(runs["plain"]), _params(runs["decayed"])
    differ = lambda a, b: not np.array_equal(np.asarray(a), np.asarray(b))
    assert differ(plain["lm"]["embedding"]["embedding"], decayed["lm"]["embedding"]["embedding"])
    assert all(differ(a, b) for a, b in zip(jax.tree.leaves(plain["head"]),
                                            jax.tree.leaves(decayed["head"])) if a.ndim >= 2)


def test_a_resumed_fine_tune_keeps_its_decay_horizon(sst_run, data, tmp_path, capsys):
    """Re-run with more train.steps, a fine-tune stretched its schedule: the rate jumped back
    up (8.5e-4 at step 20, 2.5e-3 at 25). It keeps the horizon it began with, as training does."""
    from lmscale.finetuning.loop import finetune
    from lmscale.training.metrics import read_metrics
    workdir = str(tmp_path / "ft")
    common = {"optim.schedule": "linear", "finetune.freeze_steps": 0, "train.log_every": 1,
              "train.eval_every": 4, "checkpoint.every": 4}
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **common, **{"train.steps": 4}), workdir)
    capsys.readouterr()
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **common, **{"train.steps": 6}), workdir)
    assert "keeps the decay horizon of 4 steps" in capsys.readouterr().err
    lrs = [r["lr"] for r in read_metrics(workdir) if r["split"] == "train"]
    assert len(lrs) == 6 and lrs[4:] == [0.0, 0.0]  # past the horizon: 0, not back up
    assert json.load(open(os.path.join(workdir, "config.json")))["derived"]["decay_steps"] == 4


def test_a_fine_tune_begun_before_weight_decay_applied_resumes_without_it():
    """Its record says optim.weight_decay=0.01 (ignored then): the same command resumes, without
    decay and said so, instead of being refused for an optimizer it never had."""
    from lmscale.config import default_config
    from lmscale.finetuning.settings import optim_as_begun
    from lmscale.training.resume import check_same_optimizer
    config = default_config()
    config.optim.weight_decay = 0.01
    old = config.to_dict()
    del old["optim"]["weight_decay_style"], old["optim"]["weight_decay_on"]
    optim = optim_as_begun(config, {"config": old}, "W")
    assert optim.weight_decay == 0.0 and config.optim.weight_decay == 0.01
    check_same_optimizer(old, {**config.to_dict(), "optim": optim.to_dict()}, "W", fine_tuning=True)
    assert optim_as_begun(config, {"config": config.to_dict()}, "W") is config.optim  # recorded since
    assert optim_as_begun(config, None, "W") is config.optim  # a new run
    # Its checkpoints since record the config as given and the decay applied (0): a second
    # resume with the same command goes on without it too (it failed in orbax).
    from lmscale.finetuning.settings import as_applied
    since = {"config": config.to_dict(), "derived": {"weight_decay": 0.0}}
    again = optim_as_begun(config, since, "W")
    assert again.weight_decay == 0.0
    check_same_optimizer(as_applied(since), {**config.to_dict(), "optim": again.to_dict()}, "W",
                         fine_tuning=True)
    applied = {"config": config.to_dict(), "derived": {"weight_decay": 0.01}}
    assert optim_as_begun(config, applied, "W") is config.optim  # a run that applied it


def test_validation_every_quarter_epoch_of_the_training_texts(sst_run, data, tmp_path):
    """train.eval_every_epochs: 256 texts in batches of 16 are 16 steps an epoch, so a quarter
    of one validates every 4 steps (train.eval_every=3 is ignored), and at the end."""
    from lmscale.finetuning.loop import finetune
    from lmscale.training.metrics import read_metrics
    run = str(tmp_path / "ft")
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                       **{"train.steps": 10, "train.eval_every": 3,
                          "train.eval_every_epochs": 0.25, "checkpoint.every": 10}), run)
    assert [r["step"] for r in read_metrics(run) if r["split"] == "val"] == [4, 8, 10]


def test_a_fine_tune_in_another_thread_stops_saved_when_its_stop_event_is_set(sst_run, data,
                                                                             tmp_path):
    """From a thread other than the main one a fine-tune takes no signal; its ``stop`` event
    stops it at the next step boundary with a checkpoint, and a re-run finishes it."""
    from lmscale.finetuning.loop import finetune
    from lmscale.training.metrics import read_metrics
    from tests.conftest import stopped_in_a_thread
    run = str(tmp_path / "ft")
    config = lambda steps: ft_config(sst_run, data["sst_train"], data["sst_val"], **{
        "train.steps": steps, "train.log_every": 1, "train.eval_every": 0,
        "checkpoint.every": 1000})
    result = stopped_in_a_thread(lambda stop: finetune(config(400), run, stop=stop), run)
    assert result["stopped"] and result["stopped_by_signal"] is None and result["step"] < 400
    done = finetune(config(result["step"] + 1), run)
    assert not done["stopped"] and not done["already_trained"]
    steps = [r["step"] for r in read_metrics(run) if r["split"] == "train"]
    assert steps == list(range(1, result["step"] + 2))  # resumed where the stop saved
