"""OpenAI's 15 .npy files: lmscale vs a NumPy reference of encoder.py, round trips, bad input."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from lmscale.data.tokenizer import ByteTokenizer
from lmscale.pretrained import ConvertError, openai_preprocess, preprocessor_for
from lmscale.pretrained.openai import (SENTIMENT_UNIT, is_release, load_openai, openai_arrays,
                                       save_openai)
from tests.pretrained.helpers import random_weights, run_lmscale
from tests.pretrained import reference as ref

E, H = 8, 16
TEXTS = ["", "a", "Great product, fast shipping!",
         "  Two\nlines &amp; an entity &lt;3, \u00fcnicode \u2014 and a tab\t ",
         "This is the best purchase I've made all year. " * 4]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("openai") / "model")
    ref.write_openai_files(folder, E, H, seed=0)
    return folder


def test_matches_openai_equations(files):
    weights = load_openai(files)
    assert (weights.kind, weights.layers, weights.embed, weights.hidden) == ("mlstm", 1, E, H)
    assert weights.weight_norm and weights.tokenizer == ByteTokenizer.openai()
    assert weights.preprocess == "openai" and "sentiment_unit" not in weights.source  # not 4096 units
    model = weights.to_model()
    params = ref.read_openai_files(files)
    preprocess = preprocessor_for({"preprocess": weights.preprocess})
    data = [preprocess(text) for text in TEXTS]
    assert data == [ref.openai_text_bytes(text) for text in TEXTS]
    assert len({len(d) for d in data}) == len(TEXTS) and max(len(d) for d in data) > 150
    for text, (logits, cells) in zip(TEXTS, run_lmscale(model, data)):
        cells = cells[-1]
        ref_logits, ref_cells = ref.openai_forward(params, list(ref.openai_text_bytes(text)))
        np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(cells, ref_cells, atol=1e-5, rtol=1e-5)
        # the original's feature: the final cell state after the closing framing space
        np.testing.assert_allclose(cells[-1], ref_cells[-1], atol=1e-5, rtol=1e-5)


def test_preprocess_framing():
    assert openai_preprocess("a &amp; b\nc ") == b"\n a & b c "
    assert openai_preprocess("") == b"\n  "
    assert openai_preprocess(b"\xff ok") == b"\n \xff ok "  # invalid UTF-8 passes through
    assert preprocessor_for({})("x") == "x"


def test_files_round_trip_bit_for_bit(files, tmp_path):
    out = str(tmp_path / "export")
    save_openai(load_openai(files), out)
    assert sorted(os.listdir(out)) == sorted(f"{i}.npy" for i in range(15))
    for i in range(15):
        a, b = np.load(os.path.join(files, f"{i}.npy")), np.load(os.path.join(out, f"{i}.npy"))
        assert a.shape == b.shape and a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("weight_norm", [True, False])
def test_lmscale_export_import(tmp_path, weight_norm):
    weights = random_weights(weight_norm=weight_norm, seed=3)
    save_openai(weights, str(tmp_path / "x"))
    back = load_openai(str(tmp_path / "x"))
    if weight_norm:  # identical weights
        assert set(back.params) == set(weights.params)
        for key, value in weights.params.items():
            np.testing.assert_array_equal(back.params[key], value, err_msg=key)
    else:  # plain matrices become g = ||w||, v = w: the same function
        data = [openai_preprocess("round trip")]
        for a, b in zip(run_lmscale(weights.to_model(), data)[0],
                        run_lmscale(back.to_model(), data)[0]):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)


def test_export_drops_padding_id_of_257_vocab(tmp_path):
    weights = random_weights(tokenizer=ByteTokenizer.sentiment_discovery(), seed=4)
    arrays = openai_arrays(weights)
    assert arrays[0].shape == (256, E) and arrays[13].shape == (H, 256)
    data = b"\n hello "
    [(logits, cells)] = run_lmscale(weights.to_model(), [data], ByteTokenizer.sentiment_discovery())
    cells = cells[-1]
    ref_logits, ref_cells = ref.openai_forward(
        [arrays[0], arrays[1], np.concatenate(arrays[2:6], axis=1)] + arrays[6:], list(data))
    np.testing.assert_allclose(cells, ref_cells, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(logits[:, 1:], ref_logits, atol=1e-5, rtol=1e-5)


def test_export_refuses_other_models():
    for kind, layers in (("mlstm", 2), ("lstm", 1)):
        with pytest.raises(ConvertError, match="single-layer mLSTM"):
            openai_arrays(random_weights(kind, layers=layers))


def _copy(files: str, dst: str) -> str:
    os.makedirs(dst)
    for i in range(15):
        np.save(os.path.join(dst, f"{i}.npy"), np.load(os.path.join(files, f"{i}.npy")))
    return dst


class _Marker:
    """Unpickling this would create a file: proof that a loader executed code from the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_bad_input(files, tmp_path):
    bad = _copy(files, str(tmp_path / "bad"))
    os.remove(os.path.join(bad, "7.npy"))
    with pytest.raises(ConvertError, match=r"7\.npy is missing; expected wmh.*\[16, 16\]"):
        load_openai(bad)
    np.save(os.path.join(bad, "7.npy"), np.zeros((H, H), np.float32))
    np.save(os.path.join(bad, "11.npy"), np.zeros((H + 1,), np.float32))
    with pytest.raises(ConvertError, match=r"11\.npy has shape \(17,\); expected gmx.*\[16\]"):
        load_openai(bad)
    np.save(os.path.join(bad, "11.npy"), np.zeros((H,), np.float32))
    np.save(os.path.join(bad, "4.npy"), np.zeros((H, 3), np.float32))
    with pytest.raises(ConvertError, match=r"concatenate to shape \(16, 51\); expected wh"):
        load_openai(bad)
    np.save(os.path.join(bad, "4.npy"), np.zeros((H, H), np.float32))
    np.save(os.path.join(bad, "0.npy"), np.zeros((257, E), np.float32))
    with pytest.raises(ConvertError, match=r"0\.npy has shape \(257, 8\); expected the byte embedding"):
        load_openai(bad)
    np.save(os.path.join(bad, "0.npy"), np.zeros((256, E), np.int64))
    with pytest.raises(ConvertError, match=r"0\.npy has dtype int64; expected embedding"):
        load_openai(bad)
    np.save(os.path.join(bad, "0.npy"), np.zeros((256, E), np.float32))
    load_openai(bad)  # repaired

    marker = str(tmp_path / "executed")
    np.save(os.path.join(bad, "6.npy"), np.array([_Marker(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ConvertError, match=r"6\.npy holds pickled Python objects.*expected wmx"):
        load_openai(bad)
    with open(os.path.join(bad, "6.npy"), "wb") as f:  # a bare pickle named .npy
        pickle.dump(_Marker(marker), f)
    with pytest.raises(ConvertError, match=r"6\.npy holds pickled Python objects"):
        load_openai(bad)
    assert not os.path.exists(marker)
    with pytest.raises(ConvertError, match="is not a directory"):
        load_openai(str(tmp_path / "nowhere"))


def test_non_finite_values_are_one_line_error_naming_file_and_array(files, tmp_path):
    bad = _copy(files, str(tmp_path / "bad"))
    bias = np.load(os.path.join(bad, "8.npy"))
    bias[5], bias[9] = np.nan, np.inf
    np.save(os.path.join(bad, "8.npy"), bias)
    with pytest.raises(ConvertError, match=r"8\.npy holds 2 non-finite values \(NaN/inf in float32, "
                       r"the first nan at index \[5\]\); expected b, the gate bias"):
        load_openai(bad)
    np.save(os.path.join(bad, "8.npy"), np.load(os.path.join(files, "8.npy")))
    big = np.load(os.path.join(bad, "13.npy")).astype(np.float64)
    big[1, 2] = 1e39  # finite in float64, inf once stored as float32
    np.save(os.path.join(bad, "13.npy"), big)
    with pytest.raises(ConvertError, match=r"13\.npy holds 1 non-finite values .*the first inf at "
                       r"index \[1, 2\]\); expected out_w"):
        load_openai(bad)


def test_sentiment_unit_only_for_openais_own_model(files, tmp_path):
    """2388 is a unit of OpenAI's 4096-unit release; a smaller model or an lmscale export
    (lmscale.json) records none."""
    assert SENTIMENT_UNIT == 2388
    assert "sentiment_unit" not in load_openai(files).source
    release = tmp_path / "release"
    release.mkdir()
    assert is_release(str(release), 64, 4096)
    assert not is_release(str(release), 8, 4096) and not is_release(str(release), 64, 16)
    (release / "lmscale.json").write_text('{"preprocess": "none"}')
    assert not is_release(str(release), 64, 4096)
    weights = random_weights(seed=5)
    save_openai(weights, str(tmp_path / "export"))
    assert "sentiment_unit" not in load_openai(str(tmp_path / "export")).source


def test_repo_layout_and_no_overwrite(files, tmp_path):
    clone = tmp_path / "clone"
    _copy(files, str(clone / "model"))
    assert load_openai(str(clone)).hidden == H  # a clone of OpenAI's repo: DIR/model/*.npy
    with pytest.raises(ConvertError, match="not an empty folder"):
        save_openai(load_openai(files), files)
