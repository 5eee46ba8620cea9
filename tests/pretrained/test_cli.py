"""``python -m lmscale.convert`` end to end: import, load_trained, lmscale.eval, export, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lmscale.data.tokenizer import ByteTokenizer
from lmscale.pretrained import preprocessor_for
from lmscale.pretrained.openai import load_openai
from lmscale.pretrained.sentiment_discovery import save_pt
from lmscale.pretrained.workdir import read_workdir
from lmscale.training.restore import load_trained
from tests.conftest import REPO
from tests.pretrained import reference as ref
from tests.pretrained.helpers import random_weights, run_lmscale

E, H = 8, 16


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[str, str]:
    """(OpenAI files folder, workdir converted from it by the CLI)."""
    root = tmp_path_factory.mktemp("cli")
    files, workdir = str(root / "openai"), str(root / "run")
    ref.write_openai_files(files, E, H, seed=11)
    proc = run("lmscale.convert", "--from=openai", f"--src={files}", f"--to={workdir}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["to"] == workdir and summary["hidden"] == H and summary["preprocess"] == "openai"
    return files, workdir


def test_converted_workdir_loads_and_matches_openai(converted):
    files, workdir = converted
    lm = load_trained(workdir)
    assert lm.step == 0 and lm.tokenizer == ByteTokenizer.openai()
    assert (lm.config.model.kind, lm.config.model.hidden, lm.config.model.embed) == ("mlstm", H, E)
    assert lm.config.model.weight_norm and lm.config.data.tokenizer == "openai"
    assert "sentiment_unit" not in lm.derived["pretrained"]  # 2388 is a unit of a 4096-unit model
    preprocess = preprocessor_for(lm.derived)
    texts = ["Loved it!", "Arrived broken &amp; late.\nNever again."]
    params = ref.read_openai_files(files)
    for text, (logits, cells) in zip(texts, run_lmscale(lm.model(), [preprocess(t) for t in texts])):
        ref_logits, ref_cells = ref.openai_forward(params, list(ref.openai_text_bytes(text)))
        np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(cells[-1], ref_cells, atol=1e-5, rtol=1e-5)


def test_eval_scores_text_like_the_original(converted, tmp_path):
    files, workdir = converted
    text = b"The quick brown fox jumps over the lazy dog. " * 3
    (tmp_path / "t.txt").write_bytes(text)
    proc = run("lmscale.eval", f"--workdir={workdir}", f"--data={tmp_path / 't.txt'}",
               "--batch_size=1", f"--seq_len={len(text) - 1}")  # one sequence: the whole text
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    logp = ref.log_softmax(ref.openai_forward(ref.read_openai_files(files), list(text))[0])
    nats = -np.mean([logp[t, text[t + 1]] for t in range(len(text) - 1)])
    assert result["bpc"] == pytest.approx(nats / np.log(2), abs=1e-5)


def test_export_to_openai_gives_the_original_files(converted, tmp_path):
    files, workdir = converted
    from lmscale.convert import convert  # the CLI's function, in-process (saves a JAX start-up)
    out = str(tmp_path / "exported")
    summary = convert("lmscale", workdir, out, "openai")
    assert summary["to"] == out and summary["notes"] == []
    for i in range(15):
        np.testing.assert_array_equal(np.load(os.path.join(out, f"{i}.npy")),
                                      np.load(os.path.join(files, f"{i}.npy")))


def test_preprocessing_survives_an_export_and_import(converted, tmp_path):
    """A model recorded to expect no preprocessing (here set by --preprocess=none on import)
    exported to OpenAI's layout gets lmscale.json naming it, and imports back as it was."""
    files, _ = converted
    from lmscale.convert import convert
    plain = str(tmp_path / "plain")
    assert convert("openai", files, plain, "lmscale", preprocess="none")["preprocess"] == "none"
    out = str(tmp_path / "exported")
    summary = convert("lmscale", plain, out, "openai")
    assert summary["notes"] == ["lmscale.json records preprocess 'none' for lmscale's import; "
                                "OpenAI's own code frames every text its way"]
    assert sorted(os.listdir(out)) == sorted([f"{i}.npy" for i in range(15)] + ["lmscale.json"])
    back = str(tmp_path / "back")
    assert convert("openai", out, back, "lmscale")["preprocess"] == "none"
    import lmscale
    assert lmscale.load_lm(back).derived["preprocess"] == "none"
    for i in range(15):
        np.testing.assert_array_equal(np.load(os.path.join(out, f"{i}.npy")),
                                      np.load(os.path.join(files, f"{i}.npy")))
    (tmp_path / "odd").mkdir()
    for i in range(15):
        os.link(os.path.join(files, f"{i}.npy"), tmp_path / "odd" / f"{i}.npy")
    (tmp_path / "odd" / "lmscale.json").write_text('{"preprocess": "lowercase"}')
    from lmscale.pretrained.errors import ConvertError
    with pytest.raises(ConvertError, match="unknown text preprocessing 'lowercase'"):
        load_openai(str(tmp_path / "odd"))


def test_a_pt_export_says_how_to_import_its_preprocessing(converted, tmp_path):
    pytest.importorskip("torch")
    from lmscale.convert import convert
    pt = convert("openai", converted[0], str(tmp_path / "m.pt"), "sentiment-discovery")
    assert pt["notes"][-1] == ("the model expects preprocess 'openai', which a .pt cannot "
                               "record: import it with --preprocess=openai")


def test_bad_input_is_one_line_error(converted, tmp_path):
    files, _ = converted
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(15):
        if i != 9:
            (broken / f"{i}.npy").write_bytes((open(os.path.join(files, f"{i}.npy"), "rb").read()))
    proc = run("lmscale.convert", "--from=openai", f"--src={broken}", f"--to={tmp_path / 'w'}")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"error: {broken / '9.npy'} is missing; expected gx, the "
                                   f"weight-norm gains of wx [4H] = [64]")
    assert not (tmp_path / "w").exists()


def test_non_finite_weights_are_one_line_error(converted, tmp_path):
    """An export of an lmscale model whose weights hold NaN is refused before anything is written."""
    _, workdir = converted
    export = str(tmp_path / "export")
    assert run("lmscale.convert", "--from=lmscale", f"--src={workdir}", f"--to={export}",
               "--layout=openai").returncode == 0
    wmh = np.load(os.path.join(export, "7.npy"))
    wmh[2, 3] = np.nan
    np.save(os.path.join(export, "7.npy"), wmh)
    proc = run("lmscale.convert", "--from=openai", f"--src={export}", f"--to={tmp_path / 'w'}")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"error: {os.path.join(export, '7.npy')} holds 1 non-finite "
                                   f"values (NaN/inf in float32, the first nan at index [2, 3]); "
                                   f"expected wmh, the hidden-to-multiplicative matrix [H, H] = "
                                   f"[{H}, {H}]")
    assert not (tmp_path / "w").exists()


def test_sentiment_discovery_pt_through_cli(tmp_path):
    pytest.importorskip("torch")
    weights = random_weights(tokenizer=ByteTokenizer.sentiment_discovery(), layers=2, seed=12)
    pt, workdir = str(tmp_path / "lm.pt"), str(tmp_path / "run")
    save_pt(weights, pt)
    proc = run("lmscale.convert", "--from=sentiment-discovery", f"--src={pt}", f"--to={workdir}",
               "--batch_size=8")
    assert proc.returncode == 0, proc.stderr
    back = read_workdir(workdir)
    assert back.tokenizer == ByteTokenizer.sentiment_discovery() and back.layers == 2
    for key, value in weights.params.items():
        np.testing.assert_array_equal(back.params[key], value, err_msg=key)


def test_import_without_weight_norm(converted, tmp_path):
    files, _ = converted
    from lmscale.convert import convert
    summary = convert("openai", files, str(tmp_path / "again"), "lmscale", weight_norm="false")
    assert summary["weight_norm"] is False
    plain = read_workdir(str(tmp_path / "again"))
    original = load_openai(files)
    np.testing.assert_allclose(plain.matrix(0, "w_h"), original.matrix(0, "w_h"), rtol=1e-6, atol=1e-7)


def test_models_outside_the_layouts_are_refused_in_one_line(tmp_path):
    """A transformer (or QRNN, a tied or subword model) is named as such, not reported as a
    '0-layer transformer' or a missing parameter."""
    from lmscale.convert import convert
    from lmscale.pretrained.errors import ConvertError
    from lmscale.training.loop import train
    from tests.conftest import TINY_TRANSFORMER, tiny_config, write_corpus
    workdir = str(tmp_path / "t")
    train(tiny_config(write_corpus(tmp_path / "corpus"), **TINY_TRANSFORMER,
                      **{"train.steps": 2, "train.eval_every": 0}), workdir)
    for layout in ("openai", "lmscale"):
        with pytest.raises(ConvertError, match="holds a transformer on byte tokens: convert reads "
                                               "and writes byte-level mLSTM and LSTM models"):
            convert("lmscale", workdir, str(tmp_path / f"out_{layout}"), layout)


def test_an_openai_export_of_a_257_id_model_summarizes_the_files_written(tmp_path):
    """The summary of an export to OpenAI's layout gave the source's 257 ids (id = byte + 1,
    padding 0): the files hold 256 rows, id = byte, as an import of them says."""
    from lmscale.pretrained.workdir import write_workdir
    workdir, export = str(tmp_path / "run"), str(tmp_path / "export")
    write_workdir(random_weights(tokenizer=ByteTokenizer.sentiment_discovery(), seed=13), workdir)
    proc = run("lmscale.convert", "--from=lmscale", f"--src={workdir}", f"--to={export}",
               "--layout=openai")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["notes"][0].startswith("padding id 0 dropped")
    back = load_openai(export)
    assert np.load(os.path.join(export, "0.npy")).shape == (256, E) and back.vocab_size == 256
    assert (summary["vocab_size"], summary["tokenizer"]) == (256, back.tokenizer.to_dict())
