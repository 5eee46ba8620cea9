"""Resuming and reading a workdir whose records went wrong, and the lines that say so: a
damaged config.json (the checkpoint's record holds the run's config), an unreadable
checkpoint's cause (not tensorstore's spec), a config.json that does not describe the
checkpoint (inference tools: no training flags), the best weights replaced in an order that a
stop cannot break, SentencePiece settings a given model file makes unused, a per-device batch
resumed on another device count, and a workdir that is not one folder for all processes."""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest

from lmscale.training.checkpoints import (CheckpointMismatchError, Checkpointer,
                                          UnreadableCheckpointError)
from lmscale.training.model_signature import check_same_model
from lmscale.training.loop import train
from lmscale.training.restore import load_trained
from tests.conftest import tiny_config, write_corpus
from tests.training.conftest import BASE, copy_run


@pytest.mark.parametrize("damage", ["torn", "not an object"])
def test_a_damaged_config_json_is_set_aside_and_the_run_resumes(base_run, tmp_path, capfd, damage):
    """The error said "let a training run in that workdir write it again", and the training
    run stopped with the same error (it read the old config.json first)."""
    corpus, workdir = copy_run(base_run, tmp_path)
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        text = f.read()
    broken = text[:300] if damage == "torn" else "[1, 2]"
    with open(path, "w") as f:
        f.write(broken)
    train(tiny_config(corpus, **{**BASE, "train.steps": 6}), workdir)  # resumes at 4
    with open(path) as f:
        assert json.load(f)["derived"]["steps"] == 6
    kept = [n for n in os.listdir(os.path.join(workdir, "history")) if "unreadable" in n]
    assert len(kept) == 1
    with open(os.path.join(workdir, "history", kept[0])) as f:
        assert f.read() == broken  # nothing lost
    assert "was not a readable config record" in capfd.readouterr().err
    assert load_trained(workdir).step == 6


def test_a_damaged_config_json_before_any_checkpoint_is_set_aside_not_overwritten(tmp_path,
                                                                                  capfd):
    """A run killed before its first checkpoint, its config.json torn: the new start keeps the
    torn file in history/ (a name of its own each time, nothing overwritten) and writes it
    again from its own config."""
    corpus = write_corpus(tmp_path / "corpus")
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    path = os.path.join(workdir, "config.json")
    for torn in ("{torn", "[1]"):
        with open(path, "w") as f:
            f.write(torn)
        train(tiny_config(corpus, **{**BASE, "train.steps": 2}), workdir)
        shutil.rmtree(os.path.join(workdir, "checkpoints"))  # as if killed before its save
        assert "was not a readable config record; it is kept as " in capfd.readouterr().err
        with open(path) as f:
            assert json.load(f)["derived"]["steps"] == 2
    history = os.path.join(workdir, "history")
    assert sorted(os.listdir(history)) == ["config.0.unreadable-2.json",
                                           "config.0.unreadable.json"]
    with open(os.path.join(history, "config.0.unreadable-2.json")) as f:
        assert f.read() == "[1]"


def test_a_word_level_resume_with_another_vocabulary_setting_is_refused(tmp_path):
    """data.word_min_count and data.word_vocab_size define a word run's vocabulary: another
    value on resume is refused by name, before the data is prepared again."""
    corpus = write_corpus(tmp_path / "corpus", files=2, lines=100)
    workdir = str(tmp_path / "run")
    words = {**BASE, "data.tokenizer": "word"}
    train(tiny_config(corpus, **words), workdir)
    for key, value in (("data.word_min_count", 2), ("data.word_vocab_size", 5)):
        with pytest.raises(CheckpointMismatchError, match=f"was trained with {key}=(1|0); "
                                                          f"resuming it with {key}={value} is "
                                                          f"refused"):
            train(tiny_config(corpus, **{**words, "train.steps": 6, key: value}), workdir)
    assert train(tiny_config(corpus, **{**words, "train.steps": 6}), workdir)["step"] == 6


def test_a_damaged_config_json_of_a_finished_run_is_written_again(base_run, tmp_path):
    """A run already trained writes no new config.json: the checkpoint's record does."""
    corpus, workdir = copy_run(base_run, tmp_path)
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        good = json.load(f)
    with open(path, "w") as f:
        f.write("{")
    train(tiny_config(corpus, **BASE), workdir)  # nothing left to train
    with open(path) as f:
        again = json.load(f)
    assert {k: v for k, v in again.items() if k != "derived"} == \
        {k: v for k, v in good.items() if k != "derived"}
    assert load_trained(workdir).step == 4


def test_inference_reads_a_damaged_config_json_from_the_checkpoints_record(base_run, tmp_path,
                                                                            capfd):
    """eval/generate/transfer refused a damaged config.json until a training run rewrote it:
    they read the checkpoint's own record of the config (saying so) and leave the file."""
    _, workdir = copy_run(base_run, tmp_path)
    path = os.path.join(workdir, "config.json")
    with open(path, "w") as f:
        f.write("{")
    lm = load_trained(workdir)
    assert lm.step == 4 and lm.config.model.hidden == 32 and lm.derived["steps"] == 4
    assert "using the config recorded in checkpoint" in capfd.readouterr().err
    with open(path) as f:
        assert f.read() == "{"  # left for the next training run to set aside


def test_an_unreadable_checkpoint_names_its_cause_not_tensorstores_spec(base_run, tmp_path):
    """The line read "Encountered error while reading array index: (slice(0, 257, 1), ...).
    See full TensorStore details: <bound method pybind11_detail_function_record_v1_...spec of
    TensorStore({ 'base': ..." (cut at 300 characters)."""
    _, workdir = copy_run(base_run, tmp_path)
    data = os.path.join(workdir, "checkpoints", "4", "state", "ocdbt.process_0", "d")
    for name in os.listdir(data):  # every data file truncated: the parameters' too
        with open(os.path.join(data, name), "r+b") as f:
            f.truncate(8)
    with pytest.raises(UnreadableCheckpointError) as error:
        load_trained(workdir)
    message = str(error.value)
    assert "pybind11" not in message and "TensorStore details" not in message, message
    assert "checkpoints/4 is unreadable: " in message and "\n" not in message
    assert "Error reading" in message, message


def test_inference_on_a_config_json_of_another_model_gives_no_training_advice(base_run, tmp_path):
    """eval/generate/transfer advised --config.resume=false, a flag of training."""
    _, workdir = copy_run(base_run, tmp_path)
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        record = json.load(f)
    record["model"]["hidden"] = 48
    with open(path, "w") as f:
        json.dump(record, f)
    with pytest.raises(CheckpointMismatchError) as error:
        load_trained(workdir)
    message = str(error.value)
    assert "--config.resume" not in message and "--workdir" not in message, message
    assert f"{path} does not describe checkpoint" in message
    assert "model.hidden is 48 in config.json and 32 in the checkpoint" in message
    assert "restore config.json" in message
    assert os.path.join("checkpoints", "4", "meta", "metadata") in message


def test_the_best_weights_are_replaced_so_that_a_stop_leaves_best_json_naming_some_on_disk(
        tmp_path, monkeypatch):
    """best/<old> was deleted (orbax max_to_keep=1) before best.json named the new step: a
    stop between the two left best.json naming deleted weights ("Checkpoint at
    .../best/2/params not found"). Here the state on disk is looked at where a stop could
    come: just before best.json is written."""
    import jax
    import jax.numpy as jnp

    from lmscale.training import best as best_module
    from lmscale.training.best import BestKeeper, read_best, restore_best_params
    from lmscale.training.mesh import make_mesh, replicated

    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    real_write = best_module.write_json
    seen = []

    def look_then_write(path, record, **kwargs):  # where a kill would leave the workdir
        on_disk = sorted(int(n) for n in os.listdir(os.path.join(workdir, "best")) if n.isdigit())
        named = read_best(workdir)
        seen.append((named and named["step"], on_disk))
        real_write(path, record, **kwargs)

    monkeypatch.setattr(best_module, "write_json", look_then_write)
    keeper = BestKeeper(workdir, True)
    params = {"w": jnp.ones((3,))}
    assert keeper.offer(2, 1.0, params, False)
    assert keeper.offer(4, 0.5, {"w": jnp.full((3,), 2.0)}, False)
    keeper.close()
    for named, on_disk in seen:
        assert named is None or named in on_disk, seen
    assert sorted(int(n) for n in os.listdir(os.path.join(workdir, "best")) if n.isdigit()) == [4]
    mesh = make_mesh()
    restored, step = restore_best_params(workdir, params, replicated(mesh))
    assert step == 4 and float(jax.device_get(restored["w"])[0]) == 2.0


def test_a_stop_after_saving_the_best_weights_is_tidied_at_the_next_start(tmp_path):
    """best/ holding a step best.json does not name (saved, then stopped): the next start
    keeps the one best.json names."""
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from lmscale.training.best import BestKeeper, read_best

    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    keeper = BestKeeper(workdir, True)
    keeper.offer(2, 1.0, {"w": jnp.ones((3,))}, False)
    keeper.manager.save(4, args=ocp.args.Composite(params=ocp.args.StandardSave(
        {"w": jnp.zeros((3,))})), force=True)  # the stop: saved, best.json not written
    keeper.manager.wait_until_finished()
    keeper.close()
    assert read_best(workdir)["step"] == 2
    again = BestKeeper(workdir, True)
    again.close()
    assert sorted(int(n) for n in os.listdir(os.path.join(workdir, "best")) if n.isdigit()) == [2]


def test_best_json_naming_weights_a_stop_deleted_is_one_line(tmp_path):
    """What an older lmscale left: "Checkpoint at .../best/2/params not found." and no way out."""
    import jax.numpy as jnp

    from lmscale.training.best import BestKeeper, restore_best_params
    from lmscale.training.mesh import make_mesh, replicated

    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    keeper = BestKeeper(workdir, True)
    keeper.offer(4, 1.0, {"w": jnp.ones((3,))}, False)
    keeper.close()
    with open(os.path.join(workdir, "best.json"), "w") as f:
        json.dump({"step": 2, "loss": 2.0, "averaged": False}, f)
    with pytest.raises(FileNotFoundError, match=r"names the weights of step 2, which .*best "
                                                r"does not hold \(it holds \[4\]"):
        restore_best_params(workdir, {"w": jnp.ones((3,))}, replicated(make_mesh()))
    assert BestKeeper(workdir, True).loss == float("inf")  # the next validation records anew


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A SentencePiece model file (300 pieces) trained on the tiny corpus."""
    from lmscale.data.dataset import TokenDataset
    from lmscale.data.prepare import prepare_dataset
    from lmscale.data.spm import SentencePieceTraining
    root = tmp_path_factory.mktemp("sp")
    corpus = write_corpus(root / "corpus")
    path = prepare_dataset(sorted(glob.glob(corpus)), str(root / "prepared"), split=(1, 0, 0),
                           tokenizer=SentencePieceTraining(vocab_size=300), progress=False)
    TokenDataset.open(path).tokenizer.save(str(root))
    return corpus, str(root / "tokenizer.model")


def test_sentencepiece_settings_unused_with_a_model_file_do_not_refuse_a_resume(sp_model, tmp_path):
    """With data.sp_model given, data.vocab_size / sp_model_type are not used (the file is the
    vocabulary); a resume changing them was refused ("trained with data.vocab_size=8000")."""
    corpus, model = sp_model
    workdir = str(tmp_path / "run")
    sp = {**BASE, "train.steps": 2, "data.tokenizer": "sentencepiece", "data.sp_model": model}
    train(tiny_config(corpus, **sp), workdir)
    train(tiny_config(corpus, **{**sp, "train.steps": 4, "data.vocab_size": 1000,
                                 "data.sp_model_type": "unigram",
                                 "data.sp_sample_bytes": 12345}), workdir)
    assert sorted(Checkpointer(workdir, read_only=True).steps()) == [2, 4]


def test_a_sentencepiece_model_file_is_compared_by_its_bytes(sp_model, tmp_path):
    """The same file elsewhere resumes; another file under the old name is refused."""
    from lmscale.training.resume import check_resumable
    corpus, model = sp_model
    workdir = str(tmp_path / "run")
    sp = {**BASE, "train.steps": 2, "data.tokenizer": "sentencepiece", "data.sp_model": model}
    train(tiny_config(corpus, **sp), workdir)
    reader = Checkpointer(workdir, read_only=True)
    saved = reader.read_meta()
    reader.close()
    moved = str(tmp_path / "elsewhere.model")
    shutil.copyfile(model, moved)
    check_resumable(saved, tiny_config(corpus, **{**sp, "data.sp_model": moved}), "W")
    with open(moved, "ab") as f:
        f.write(b"\0")  # other bytes
    with pytest.raises(CheckpointMismatchError, match="trained with data.sp_model="):
        check_resumable(saved, tiny_config(corpus, **{**sp, "data.sp_model": moved}), "W")
    without = {k: v for k, v in sp.items() if k != "data.sp_model"}
    with pytest.raises(CheckpointMismatchError, match="trained with data.sp_model="):
        check_resumable(saved, tiny_config(corpus, **without), "W")


def test_a_per_device_batch_resumed_on_another_device_count_names_the_device_count(base_run):
    """The line said "holds a checkpoint of a different model: train.batch_size is 8 there and
    4 here; use ... the same model config" (audit, multi-host defect 4)."""
    from lmscale.config import with_global_batch
    from lmscale.training.resume import check_resumable
    corpus, _ = base_run
    per_device = {**BASE, "train.per_device_batch_size": 2}
    before = with_global_batch(tiny_config(corpus, **per_device), 4)
    saved = {"config": before.to_dict(), "signature": {"train.batch_size": 8},
             "derived": {"devices": 4}}
    with pytest.raises(CheckpointMismatchError) as error:
        check_resumable(saved, with_global_batch(tiny_config(corpus, **per_device), 2), "W")
    message = str(error.value)
    assert "different model" not in message
    assert "global batch of 8 (2 per device x 4 devices)" in message, message
    assert "this run's is 4 (2 per device x 2 devices)" in message, message
    assert "run it on 4 devices again, or set train.batch_size=8 with " \
           "train.per_device_batch_size=0" in message, message
    check_resumable(saved, with_global_batch(tiny_config(corpus, **per_device), 4), "W")
    # The signature check that follows words it so too.
    with pytest.raises(CheckpointMismatchError) as error:
        check_same_model({"train.batch_size": 8}, {"train.batch_size": 4}, "W")
    assert "different model" not in str(error.value)
    assert "set train.batch_size=8" in str(error.value)


def test_process_1_does_not_call_its_own_lock_file_process_0s():
    """Process 1's line read "process(es) [1] do not see process 0's /p1/run/.lock": its own
    workdir's lock file, named as process 0's."""
    from lmscale.training.workdir_lock import not_shared_error
    on_1 = str(not_shared_error("/p1/run", [1], 1))
    assert "process 0's /p1/run/.lock" not in on_1, on_1
    assert "process(es) [1] do not see process 0's lock file (this process, 1, looked for it " \
           "as /p1/run/.lock, in the --workdir it was given)" in on_1, on_1
    assert "give every process the same --workdir" in on_1
    on_0 = str(not_shared_error("/p0/run", [1], 0))
    assert "process(es) [1] do not see process 0's /p0/run/.lock" in on_0, on_0


def test_the_same_sentencepiece_file_moved_resumes_end_to_end_and_unused_settings_are_noted(
        sp_model, tmp_path, capsys):
    """The data request recorded the model's path as well as its hash: the same file moved
    was refused by the data check after the resume check let it through. And the settings
    that train a model (vocab_size, ...) given with sp_model are said to be unused."""
    corpus, model = sp_model
    workdir = str(tmp_path / "run")
    sp = {**BASE, "train.steps": 2, "data.tokenizer": "sentencepiece", "data.sp_model": model}
    train(tiny_config(corpus, **sp), workdir)
    moved = str(tmp_path / "elsewhere.model")
    shutil.copyfile(model, moved)
    capsys.readouterr()
    train(tiny_config(corpus, **{**sp, "train.steps": 4, "data.sp_model": moved,
                                 "data.vocab_size": 1000}), workdir)
    assert sorted(Checkpointer(workdir, read_only=True).steps()) == [2, 4]
    assert "data.vocab_size=1000 not used: data.sp_model=" in capsys.readouterr().err


def test_a_model_without_a_carry_resumed_with_another_batch_is_refused(base_run):
    """A transformer resumed with another global batch (per_device_batch_size on another device
    count) went on silently: the stream's rows are batch-size stretches of the text, so it
    re-read text it had trained on, and the logged epoch went backwards (0.0094 -> 0.0053)."""
    from lmscale.config import with_global_batch
    from lmscale.training.resume import check_resumable
    from tests.conftest import TINY_TRANSFORMER
    corpus, _ = base_run
    per_device = {**BASE, **TINY_TRANSFORMER, "train.per_device_batch_size": 2}
    before = with_global_batch(tiny_config(corpus, **per_device), 4)
    saved = {"config": before.to_dict(), "signature": {}, "derived": {"devices": 4}}
    check_resumable(saved, with_global_batch(tiny_config(corpus, **per_device), 4), "W")
    with pytest.raises(CheckpointMismatchError) as error:
        check_resumable(saved, with_global_batch(tiny_config(corpus, **per_device), 2), "W")
    message = str(error.value)
    assert "global batch of 8 (2 per device x 4 devices); this run's is 4" in message, message
    assert "the data's rows are batch-size stretches of the text" in message


def test_a_checkpoint_from_before_two_biases_names_the_flag_that_resumes_it():
    """configs/mlstm4096.py sets model.two_biases: a run it started before the setting (or a
    converted workdir, one bias) was "a different model" with --config.resume=false to start
    afresh as the way out of a paper-scale run; it names --config.model.two_biases=false."""
    from lmscale.config import config_from_file
    from lmscale.training.model_signature import model_signature
    from tests.conftest import REPO
    config = config_from_file(str(REPO / "configs" / "mlstm4096.py"))
    tokenizer = {"kind": "byte", "ids": "sentiment_discovery"}
    current = model_signature(config, tokenizer, 257)
    old = {k: v for k, v in current.items() if k != "model.two_biases"}
    with pytest.raises(CheckpointMismatchError) as error:
        check_same_model(old, current, "W")
    assert str(error.value) == (
        "W's checkpoint records no model.two_biases (made before that setting, or imported): its "
        "model has the default model.two_biases=false, and this config sets true; resume it with "
        "--config.model.two_biases=false, or use another --workdir")
    check_same_model(old, current | {"model.two_biases": False}, "W")  # the flag resumes it
    with pytest.raises(CheckpointMismatchError, match=r"different model: model.hidden is 4096 "
                                                      r"there and 512 here; .* the same model "
                                                      r"config \(--config.model.hidden=4096\)"):
        check_same_model(current, current | {"model.hidden": 512}, "W")


@pytest.mark.parametrize("now", [2, 8])
@pytest.mark.parametrize("carried", [True, False])
def test_another_batch_either_way_is_refused(now, carried):
    """A larger global batch than the checkpoint's is refused like a smaller one."""
    from lmscale.training.resume import check_same_batch
    saved = {"config": {"train": {"batch_size": 4, "per_device_batch_size": 0}},
             "signature": {"train.batch_size": 4} if carried else {}}
    new = {"train": {"batch_size": now, "per_device_batch_size": 0}}
    with pytest.raises(CheckpointMismatchError, match="global batch of 4"):
        check_same_batch(saved, new, "the run")
    check_same_batch(saved, {"train": {"batch_size": 4, "per_device_batch_size": 0}}, "the run")
