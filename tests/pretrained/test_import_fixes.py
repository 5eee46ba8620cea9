"""Import defects of the pretrained-weights audit: zero weight-norm columns, incomplete
sentiment-discovery state dicts, non-.npy files, whitespace prompts and error messages that
named the wrong cause."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lmscale.pretrained import ConvertError
from lmscale.pretrained.openai import load_openai, read_npy
from lmscale.pretrained.preprocess import prompt_for
from lmscale.pretrained.sentiment_discovery import from_state_dict, load_pt
from tests.conftest import REPO
from tests.pretrained import reference as ref
from tests.pretrained.helpers import run_lmscale

E, H = 8, 16


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("openai") / "model")
    ref.write_openai_files(folder, E, H, seed=0)
    return folder


def _copy_with(files: str, dst: str, changes: dict[int, np.ndarray]) -> str:
    shutil.copytree(files, dst)
    for i, arr in changes.items():
        np.save(os.path.join(dst, f"{i}.npy"), arr)
    return dst


def run_convert(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "lmscale.convert", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- 1: zero weight-norm columns

def test_zero_columns_give_openais_finite_model_and_are_noted(files, tmp_path):
    """A zero column in wmx (6.npy), in wx (1.npy, OpenAI's block 2 = o, lmscale's block 3)
    and in wh block 2 (3.npy): the model is finite and equals OpenAI's l2_normalize reference,
    and each is noted with OpenAI's file and column."""
    from lmscale.pretrained.openai import floored_notes
    wmx, wx, wh1 = (np.load(os.path.join(files, f"{i}.npy")) for i in (6, 1, 3))
    wmx[:, 3] = 0
    wx[:, 2 * H + 5] = 0
    wh1[:, 7] = 0
    folder = _copy_with(files, str(tmp_path / "zero"), {6: wmx, 1: wx, 3: wh1})
    weights = load_openai(folder)
    assert weights.floored_columns() == {"layers/0/w_x": [3 * H + 5], "layers/0/w_h": [H + 7],
                                         "layers/0/w_mx": [3]}
    notes = floored_notes(weights)
    assert [n.split(":")[0] for n in notes] == ["1.npy (wx) column 37", "3.npy (wh block 2 of 4) column 7",
                                                "6.npy (wmx) column 3"]
    assert all("l2_normalize" in n for n in notes)
    params = ref.read_openai_files(folder)
    text = "A zero column &amp; a finite model."
    [(logits, cells)] = run_lmscale(weights.to_model(), [ref.openai_text_bytes(text)])
    assert np.isfinite(logits).all() and np.isfinite(cells).all()
    ref_logits, ref_cells = ref.openai_forward(params, list(ref.openai_text_bytes(text)))
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(cells[-1], ref_cells, atol=1e-5, rtol=1e-5)
    plain = weights.with_weight_norm(False)  # --weight_norm=false: the same finite matrices
    assert all(np.isfinite(v).all() for v in plain.params.values())
    assert not plain.params["layers/0/w_mx/kernel"][:, 3].any()


def test_convert_notes_a_zero_column(files, tmp_path):
    wmx = np.load(os.path.join(files, "6.npy"))
    wmx[:, 3] = 0
    folder = _copy_with(files, str(tmp_path / "zero"), {6: wmx})
    proc = run_convert("--from=openai", f"--src={folder}", f"--to={tmp_path / 'run'}",
                       "--weight_norm=false")
    assert proc.returncode == 0, proc.stderr
    notes = json.loads(proc.stdout.strip().splitlines()[-1])["notes"]
    assert len(notes) == 1 and notes[0].startswith("6.npy (wmx) column 3: norm below 1e-6")


def test_sentiment_discovery_zero_row_is_noted():
    from lmscale.pretrained.sentiment_discovery import floored_notes as sd_floored_notes
    sd = ref.make_sd_state_dict(257, E, H, 1, seed=2)
    sd["encoder"]["rnn"]["rnns.0.w_mih_v"][4] = 0
    weights = from_state_dict(sd, "zero.pt")
    [note] = sd_floored_notes(weights)
    assert note.startswith("rnns.0.w_mih_v row 4:") and "NaN" in note
    assert np.isfinite(weights.with_weight_norm(False).params["layers/0/w_mx/kernel"]).all()


# ------------------------------------------------------- 3: incomplete sentiment-discovery dicts

@pytest.mark.parametrize("missing", ["b_ih", "b_hh"])
def test_one_missing_bias_is_refused(missing):
    sd = ref.make_sd_state_dict(257, E, H, 2, seed=1)
    del sd["encoder"]["rnn"][f"rnns.1.{missing}"]
    with pytest.raises(ConvertError, match=rf"^m\.pt has rnns\.1\.b_\w+ but no rnns\.1\.{missing}; "):
        from_state_dict(sd, "m.pt")


def test_biases_missing_from_some_layers_are_refused():
    sd = ref.make_sd_state_dict(257, E, H, 2, seed=1)
    del sd["encoder"]["rnn"]["rnns.1.b_ih"], sd["encoder"]["rnn"]["rnns.1.b_hh"]
    with pytest.raises(ConvertError, match=r"no rnns\.N\.b_ih/b_hh for layers \[1\]"):
        from_state_dict(sd, "m.pt")


def test_a_bias_free_model_imports_with_a_note():
    """A cell built with bias=False (sentiment-discovery's RNNBackend allows it; RNNModel
    never does) has neither bias: imported with zero bias, and said so."""
    sd = ref.make_sd_state_dict(257, E, H, 2, seed=1)
    for l in range(2):
        del sd["encoder"]["rnn"][f"rnns.{l}.b_ih"], sd["encoder"]["rnn"][f"rnns.{l}.b_hh"]
    weights = from_state_dict(sd, "m.pt")
    assert not weights.params["layers/0/bias"].any()
    [note] = weights.source["notes"]
    assert "zero bias" in note and "bias=False" in note


@pytest.mark.parametrize("parts", [("g", "v"), ("v",), ("g",)])
def test_a_matrix_both_plain_and_weight_normed_is_refused(parts):
    sd = ref.make_sd_state_dict(257, E, H, 1, weight_norm=False, seed=1)
    rnn = sd["encoder"]["rnn"]
    for p in parts:
        rnn[f"rnns.0.w_ih_{p}"] = rnn["rnns.0.w_ih"][:, :1].copy() if p == "g" else rnn["rnns.0.w_ih"]
    names = "/".join(f"rnns.0.w_ih_{p}" for p in parts)
    with pytest.raises(ConvertError, match=rf"^m\.pt holds both rnns\.0\.w_ih and {names}; "):
        from_state_dict(sd, "m.pt")


# ------------------------------------------------------------------- 5: files that are not .npy

@pytest.mark.parametrize("content,expected", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 268435584\n",
     "a Git LFS pointer"),
    (b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n", "an HTML page"),
    (b"hello\n", "text, starting 'hello': likely a failed download"),
])
def test_a_non_npy_file_says_what_it_is(tmp_path, content, expected):
    path = tmp_path / "7.npy"
    path.write_bytes(content)
    with pytest.raises(ConvertError) as e:
        read_npy(str(path), "wmh")
    message = str(e.value)
    assert message.startswith(f"{path} is not a .npy file ({expected}") and "pickle" not in message
    if "LFS" in expected:
        assert "git lfs pull" in message
    else:
        assert "download" in message


def test_a_real_pickle_is_still_named(tmp_path):
    import pickle
    path = tmp_path / "7.npy"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ConvertError, match="holds pickled Python objects"):
        read_npy(str(path), "wmh")


# ------------------------------------------------------------------ 6: whitespace-only prompts

@pytest.mark.parametrize("prompt", ["\n", " ", "\n\n \t", "&nbsp;"])
def test_whitespace_prompts_start_a_review(prompt):
    """OpenAI's framing of an empty text, without the closing space: "\\n ", not "\\n  "."""
    assert prompt_for({"preprocess": "openai"}, prompt) == b"\n "


def test_other_prompts_keep_their_framing():
    openai = {"preprocess": "openai"}
    assert prompt_for(openai, "This movie is") == b"\n This movie is"
    assert prompt_for(openai, "Great!\n") == b"\n Great! "
    assert prompt_for({"preprocess": "none"}, "\n") == "\n"


# -------------------------------------------------------------------- 9: messages naming the cause

def test_unknown_preprocess_in_lmscale_json_names_the_file(files, tmp_path):
    folder = _copy_with(files, str(tmp_path / "side"), {})
    with open(os.path.join(folder, "lmscale.json"), "w") as f:
        json.dump({"preprocess": "sd"}, f)
    with pytest.raises(ConvertError, match=rf"^{folder}/lmscale\.json names unknown text "
                                           rf"preprocessing 'sd'; expected one of \['none', 'openai'\]"):
        load_openai(folder)


def test_a_decoder_of_another_width_is_blamed():
    sd = ref.make_sd_state_dict(257, E, H, 1, seed=1)
    sd["decoder"]["weight"] = sd["decoder"]["weight"][:, :H - 1].copy()
    with pytest.raises(ConvertError, match=rf"^m\.pt: decoder\.weight has shape \(257, {H - 1}\); "
                                           rf"expected \[257, {H}\] \(H = {H} from rnns\.0\.w_hh"):
        from_state_dict(sd, "m.pt")


def test_an_integer_tensor_is_named_with_its_dtype():
    sd = ref.make_sd_state_dict(257, E, H, 1, seed=1)
    sd["encoder"]["encoder"]["weight"] = np.zeros((257, E), np.int64)
    with pytest.raises(ConvertError, match=r"^m\.pt: encoder\.encoder\.weight has dtype int64; "
                                           r"expected the float weights"):
        from_state_dict(sd, "m.pt")


def test_a_classifier_checkpoint_is_identified():
    """sentiment-discovery's .clf: {"encoder": {"encoder", "rnn"}, "classifier": ...}, no decoder."""
    sd = ref.make_sd_state_dict(257, E, H, 1, seed=1)
    clf = {"encoder": sd["encoder"], "classifier": {"classifier.weight": np.zeros((1, H), np.float32)}}
    with pytest.raises(ConvertError, match=r"^semeval\.clf is a sentiment-discovery classifier "
                                           r"checkpoint .* without the language model's decoder"):
        from_state_dict(clf, "semeval.clf")
    # finetune_classifier.py saves {'sd': {'lm_encoder': ..., 'classifier': ...}, 'args': ...}
    # (the args are refused as Python objects; without them the generic "no decoder" was said)
    saved = {"sd": {"lm_encoder": sd["encoder"], "classifier": clf["classifier"]}}
    with pytest.raises(ConvertError, match=r"^ft\.clf is a sentiment-discovery classifier "):
        from_state_dict(saved, "ft.clf")


def test_a_folder_given_as_pt_is_named_a_folder(files):
    with pytest.raises(ConvertError, match=rf"^{files} is a folder; expected .* saved as a \.pt "
                                           rf"file; it holds 0\.npy, OpenAI's layout: use --from=openai"):
        load_pt(files)


def test_unconverted_weights_name_the_convert_command(files, tmp_path):
    from lmscale.pretrained.errors import unconverted_hint
    hint = unconverted_hint(files)
    assert hint.startswith(f"{files} holds OpenAI's released weights")
    assert f"python -m lmscale.convert --from=openai --src={files} --to=WORKDIR" in hint
    assert unconverted_hint(os.path.dirname(files)) is not None  # a clone: DIR/model/0.npy
    pt = tmp_path / "mlstm.pt"
    pt.write_bytes(b"")
    assert "--from=sentiment-discovery" in unconverted_hint(str(pt))
    assert unconverted_hint(str(tmp_path)) is None  # anything else: load_trained's own error


# ------------------------------------------------------------------------ 4: convert's outputs

def test_bad_outputs_and_batch_size_are_one_line(files, tmp_path):
    (tmp_path / "a_file").write_text("x")
    for args, expected in [
            ((f"--to={tmp_path / 'a_file' / 'sub'}",),
             f"error: {tmp_path / 'a_file' / 'sub'}: {tmp_path / 'a_file'} is a file, not a folder; "
             f"expected a new workdir"),
            ((f"--to={tmp_path / 'run'}", "--batch_size=-3"), "error: flag --batch_size=-3: ")]:
        proc = run_convert("--from=openai", f"--src={files}", *args)
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr[-2000:]
        assert not os.path.exists(tmp_path / "run")


def test_every_tool_given_openais_folder_names_the_convert_command(tmp_path):
    """load_trained (eval, transfer, featurize, the API) says what generate says."""
    from lmscale.training.restore import load_trained
    (tmp_path / "0.npy").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"OpenAI's released weights .* lmscale.convert "
                                                r"--from=openai"):
        load_trained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="is not a training run"):
        load_trained(str(tmp_path / "absent"))
    # A file, and a transfer output: said as such (both were "WORKDIR/config.json does not
    # exist", the transfer output's loader unnamed).
    (tmp_path / "train.csv").write_text("label,sentence\n1,good\n")
    with pytest.raises(FileNotFoundError, match=r"train.csv is a file, not a training run: give "
                                                r"the run's folder"):
        load_trained(str(tmp_path / "train.csv"))
    (tmp_path / "transfer").mkdir()
    (tmp_path / "transfer" / "classifier.json").write_text('{"lm_workdir": "/runs/lm"}')
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"{tmp_path / 'transfer'} is a transfer output (lmscale.transfer's classifier), not a "
            f"language model: load it with lmscale.load_classifier('{tmp_path / 'transfer'}'); "
            f"the LM it read is /runs/lm")):
        load_trained(str(tmp_path / "transfer"))
