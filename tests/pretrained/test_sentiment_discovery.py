"""sentiment-discovery state dicts: lmscale vs a NumPy reference of its cells, round trips, bad input.

The mapping is tested on plain nested dicts of NumPy arrays (no torch needed); the .pt file
tests run where torch is installed (``pip install -e ".[torch]"``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os

import numpy as np
import pytest

from lmscale.data.tokenizer import ByteTokenizer
from lmscale.pretrained import ConvertError, weights_from_model
from lmscale.pretrained.openai import load_openai
from lmscale.pretrained.sentiment_discovery import (PAD_LOGIT, flatten, from_state_dict, load_pt,
                                                    save_pt, to_state_dict)
from tests.pretrained import reference as ref
from tests.pretrained.helpers import random_weights, run_lmscale

E, H = 8, 16
SD = ByteTokenizer.sentiment_discovery()
TEXTS = [b"x", b"\n a short review ", b"Works as advertised; would buy again. " * 5,
         "\u00fcnicode \u2014 bytes".encode()]
HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.mark.parametrize("kind,layers,weight_norm", [("mlstm", 2, True), ("mlstm", 1, False),
                                                     ("lstm", 2, True)])
def test_matches_sentiment_discovery_equations(kind, layers, weight_norm):
    sd = ref.make_sd_state_dict(257, E, H, layers, kind=kind, weight_norm=weight_norm, seed=1)
    weights = from_state_dict(sd, "synthetic.pt")
    assert (weights.kind, weights.layers, weights.weight_norm) == (kind, layers, weight_norm)
    assert weights.tokenizer == SD and weights.vocab_size == 257
    outputs = run_lmscale(weights.to_model(), TEXTS, SD)
    for text, (logits, cells) in zip(TEXTS, outputs):
        ref_logits, ref_cells = ref.sd_forward(sd, [b + 1 for b in text])  # id = byte + 1
        np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
        for l in range(layers):
            np.testing.assert_allclose(cells[l], ref_cells[l], atol=1e-5, rtol=1e-5)


def test_weight_norm_conversions_keep_the_function():
    sd = ref.make_sd_state_dict(257, E, H, 1, weight_norm=False, seed=2)
    plain = from_state_dict(sd, "plain.pt")
    normed = from_state_dict(sd, "plain.pt", weight_norm=True)
    back = normed.with_weight_norm(False)
    assert not plain.weight_norm and normed.weight_norm and not back.weight_norm
    for a, b, c in zip(*(run_lmscale(w.to_model(), TEXTS[:2], SD) for w in (plain, normed, back))):
        for x, y, z in zip(a, b, c):
            np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-6)
            np.testing.assert_allclose(x, z, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(from_state_dict(sd, "x", weight_norm=True).matrix(0, "w_x"),
                               sd["encoder"]["rnn"]["rnns.0.w_ih"].T, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind,weight_norm,two_biases", [("mlstm", True, True), ("mlstm", False, False),
                                                         ("lstm", True, True), ("lstm", False, False)])
def test_lmscale_export_import_identical(kind, weight_norm, two_biases):
    weights = random_weights(kind, tokenizer=SD, layers=2, weight_norm=weight_norm,
                             two_biases=two_biases, seed=5)
    back = from_state_dict(to_state_dict(weights), "exported.pt", two_biases=two_biases)
    assert set(back.params) == set(weights.params) and back.kind == kind
    for key, value in weights.params.items():
        np.testing.assert_array_equal(back.params[key], value, err_msg=key)


@pytest.mark.parametrize("two_biases,zero_b_hh", [(None, False), (False, True)])
def test_state_dict_round_trip(two_biases, zero_b_hh):
    """b_ih and b_hh come back as they were: kept apart (the default), or, folded into one
    bias, when b_hh was zero."""
    sd = ref.make_sd_state_dict(257, E, H, 2, weight_norm=True, seed=3, zero_b_hh=zero_b_hh)
    weights = from_state_dict(sd, "a.pt", two_biases=two_biases)
    assert weights.two_biases == (two_biases is None)
    again, original = flatten(to_state_dict(weights)), flatten(sd)
    assert set(again) == set(original)
    for key, value in original.items():
        assert again[key].shape == value.shape, key
        np.testing.assert_array_equal(again[key], value, err_msg=key)


def test_the_two_biases_are_imported_apart_or_summed():
    """Kept apart, b_ih -> bias and b_hh -> bias_h, as sentiment-discovery trains them (and
    the workdir's config says model.two_biases); summed with two_biases=False; the same
    function either way."""
    sd = ref.make_sd_state_dict(257, E, H, 1, seed=4)
    rnn = sd["encoder"]["rnn"]
    apart, summed = from_state_dict(sd, "b.pt"), from_state_dict(sd, "b.pt", two_biases=False)
    np.testing.assert_array_equal(apart.params["layers/0/bias"], rnn["rnns.0.b_ih"])
    np.testing.assert_array_equal(apart.params["layers/0/bias_h"], rnn["rnns.0.b_hh"])
    assert apart.model_config().two_biases and not summed.model_config().two_biases
    assert "layers/0/bias_h" not in summed.params
    np.testing.assert_allclose(summed.params["layers/0/bias"],
                               rnn["rnns.0.b_ih"] + rnn["rnns.0.b_hh"], rtol=0, atol=1e-7)
    for a, b in zip(run_lmscale(apart.to_model(), TEXTS, SD), run_lmscale(summed.to_model(), TEXTS, SD)):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    again = apart.with_two_biases(False).with_two_biases(True)  # one -> two: a zero bias_h
    assert not again.params["layers/0/bias_h"].any()
    np.testing.assert_array_equal(again.gate_bias(0), apart.gate_bias(0))


def test_openai_to_sentiment_discovery(tmp_path):
    """The issue's recipe: transpose, gate blocks [0, 1, 3, 2], b_hh = 0, rows shifted by one."""
    files = str(tmp_path / "openai")
    ref.write_openai_files(files, E, H, seed=6)
    sd = to_state_dict(load_openai(files))
    emb, dec_w, dec_b = (sd["encoder"]["encoder"]["weight"], sd["decoder"]["weight"],
                         sd["decoder"]["bias"])
    assert emb.shape == (257, E) and dec_w.shape == (257, H) and dec_b.shape == (257,)
    assert not emb[0].any() and not dec_w[0].any() and dec_b[0] == PAD_LOGIT
    assert not sd["encoder"]["rnn"]["rnns.0.b_hh"].any()
    params = ref.read_openai_files(files)
    for text in TEXTS:
        logits, cells = ref.openai_forward(params, list(text))
        sd_logits, sd_cells = ref.sd_forward(sd, [b + 1 for b in text])
        np.testing.assert_allclose(sd_cells[0], cells, atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(sd_logits[:, 1:], logits, atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(ref.log_softmax(sd_logits)[:, 1:], ref.log_softmax(logits),
                                   atol=1e-6, rtol=1e-6)


def test_weights_from_model_and_256_vocab_checkpoints():
    weights = random_weights(tokenizer=SD, seed=7)
    live = weights_from_model(weights.to_model(), SD)
    for key, value in weights.params.items():
        np.testing.assert_array_equal(live.params[key], value, err_msg=key)
    old = ref.make_sd_state_dict(256, E, H, 1, seed=8)  # older releases: id = byte
    assert from_state_dict(old, "old.pt").tokenizer == ByteTokenizer.openai()


def test_bad_state_dicts():
    good = lambda: ref.make_sd_state_dict(257, E, H, 1, seed=9)
    transformer = {"decoder.embed_tokens.weight": np.zeros((257, E), np.float32),
                   "decoder.layers.0.self_attn.in_proj_weight": np.zeros((3 * E, E), np.float32)}
    with pytest.raises(ConvertError, match=r"^t\.pt is a transformer checkpoint .*not supported yet"):
        from_state_dict(transformer, "t.pt")
    sd = good()
    del sd["decoder"]
    with pytest.raises(ConvertError, match=r"^c\.pt has no decoder\.weight; expected a sentiment-discovery"):
        from_state_dict(sd, "c.pt")
    sd = good()
    sd["encoder"]["rnn"]["rnns.0.w_mhh_v"] = np.zeros((H, H + 1), np.float32)
    with pytest.raises(ConvertError, match=r"^s\.pt: rnns\.0\.w_mhh_v has shape \(16, 17\); expected \[16, 16\]"):
        from_state_dict(sd, "s.pt")
    sd = good()
    del sd["encoder"]["rnn"]["rnns.0.w_hh_g"]
    with pytest.raises(ConvertError, match=r"^m\.pt has rnns\.0\.w_hh_v but no rnns\.0\.w_hh_g"):
        from_state_dict(sd, "m.pt")
    sd = good()
    sd["encoder"]["rnn"]["rnns.0.w_ho"] = np.zeros((H, H), np.float32)
    with pytest.raises(ConvertError, match="output projection"):
        from_state_dict(sd, "p.pt")
    sd = good()
    sd["encoder"]["encoder"]["weight"] = np.zeros((32000, E), np.float32)
    with pytest.raises(ConvertError, match=r"encoder\.encoder\.weight has shape \(32000, 8\); expected \[257, E\]"):
        from_state_dict(sd, "v.pt")
    with pytest.raises(ConvertError, match="holds a list"):
        from_state_dict([], "l.pt")  # type: ignore[arg-type]
    sd = good()  # a diverged run's weights: refused, not imported to print NaN in eval
    sd["encoder"]["rnn"]["rnns.0.w_mhh_v"][2, 3] = np.nan
    with pytest.raises(ConvertError, match=r"^n\.pt: encoder\.rnn\.rnns\.0\.w_mhh_v holds 1 "
                       r"non-finite values \(NaN/inf in float32, the first nan at index \[2, 3\]\)"):
        from_state_dict(sd, "n.pt")
    sd = good()
    sd["decoder"]["bias"][7] = -np.inf
    with pytest.raises(ConvertError, match=r"^i\.pt: decoder\.bias holds 1 non-finite values .*-inf at index \[7\]"):
        from_state_dict(sd, "i.pt")


# ----------------------------------------------------------------- .pt files (torch)

class _Marker:
    """Unpickling this would create a file: proof that a loader executed code from the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.skipif(HAS_TORCH, reason="torch is installed")
def test_pt_without_torch_says_how_to_install(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"PK\x03\x04\x00\x00 not read")  # a zip archive's first bytes, as a .pt's
    with pytest.raises(ConvertError, match=r"m\.pt: PyTorch files need torch.*lmscale\[torch\]"):
        load_pt(str(path))


def test_missing_pt_file(tmp_path):
    with pytest.raises(ConvertError, match=r"nope\.pt is missing; expected a sentiment-discovery"):
        load_pt(str(tmp_path / "nope.pt"))


def test_pt_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    sd = ref.make_sd_state_dict(257, E, H, 2, seed=10)
    to_torch = lambda t: ({k: to_torch(v) for k, v in t.items()} if isinstance(t, dict)
                          else torch.from_numpy(t).half())  # the released checkpoints are FP16
    path = str(tmp_path / "lm.pt")
    torch.save(to_torch(sd), path)
    weights = load_pt(path)
    rnn = sd["encoder"]["rnn"]
    half = lambda a: a.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(weights.params["layers/1/w_h/v"], half(rnn["rnns.1.w_hh_v"]).T)
    out = str(tmp_path / "again.pt")
    save_pt(weights, out)
    back = load_pt(out)
    for key, value in weights.params.items():
        np.testing.assert_array_equal(back.params[key], value, err_msg=key)
    with pytest.raises(ConvertError, match="already exists"):
        save_pt(weights, out)


def test_pt_with_python_objects_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    marker = str(tmp_path / "executed")
    path = str(tmp_path / "classifier.pt")  # like finetune_classifier.py: {'sd': ..., 'args': ...}
    torch.save({"sd": {}, "args": argparse.Namespace(lr=1.0), "x": _Marker(marker)}, path)
    with pytest.raises(ConvertError, match=r"classifier\.pt holds Python objects other than tensors"):
        load_pt(path)
    assert not os.path.exists(marker)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ConvertError, match=r"garbage\.pt is not a readable PyTorch file"):
        load_pt(str(garbage))


@pytest.mark.parametrize("content,says", [(b"", "the file is empty"),
                                          (b"hello, not a checkpoint\n", "it is a text file"),
                                          (b"\x93NUMPY\x01\x00v\x00{'descr'", r"it is a NumPy \.npy array")])
def test_a_file_that_is_not_a_pt_says_what_it_is(tmp_path, content, says):
    """torch said "EOFError: ", "KeyError: 101", "Unsupported operand 147" (and without torch,
    to install it): said before torch is needed."""
    path = tmp_path / "m.pt"
    path.write_bytes(content)
    with pytest.raises(ConvertError, match=rf"m\.pt is not a PyTorch file: {says}"):
        load_pt(str(path))


@pytest.mark.parametrize("rows", [256, 257])
def test_a_pt_of_either_row_count_round_trips_with_pt_vocab(rows):
    """A 256-row .pt (id = byte: older releases, ntoken=256) came back with 257 rows, which
    sentiment-discovery's RNNModel(ntoken=256) refuses; rows=256 writes id = byte, from either
    tokenizer (a 257-id model's padding row dropped)."""
    sd = ref.make_sd_state_dict(rows, E, H, 1, weight_norm=True, seed=8)
    weights = from_state_dict(sd, "r.pt")
    again, original = flatten(to_state_dict(weights, rows=rows)), flatten(sd)
    assert set(again) == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)
    other = flatten(to_state_dict(weights, rows=513 - rows))  # the other count: shifted by one
    first = 1 if rows == 256 else 0  # the row of byte 0 in the written dict
    assert other["encoder.encoder.weight"].shape == (513 - rows, E)
    np.testing.assert_array_equal(other["encoder.encoder.weight"][first],
                                  original["encoder.encoder.weight"][1 - first])
    np.testing.assert_array_equal(other["decoder.bias"][first:], original["decoder.bias"][1 - first:])
    with pytest.raises(ConvertError, match="257 or 256 rows, not 300"):
        to_state_dict(weights, rows=300)


def test_a_torch_whose_safe_load_runs_code_is_refused(tmp_path, monkeypatch):
    """torch before 2.10 runs code from a crafted .pt even with weights_only=True (CVE-2025-32434,
    CVE-2026-24747): the README's "never unpickled" held only with a new enough torch."""
    import sys
    import types
    marker = tmp_path / "executed"
    old = types.ModuleType("torch")
    old.__version__ = "2.5.1+cpu"
    old.load = lambda *a, **k: marker.write_text("ran")  # what a crafted file would get to do
    monkeypatch.setitem(sys.modules, "torch", old)
    path = tmp_path / "m.pt"
    path.write_bytes(b"PK\x03\x04\x00\x00 a zip archive's first bytes, as a .pt's")
    with pytest.raises(ConvertError, match=r"m\.pt: torch 2\.5\.1\+cpu is too old to read a "
                                           r"\.pt file safely .* pip install 'torch>=2\.10'"):
        load_pt(str(path))
    assert not marker.exists()


def test_torch_2_10_and_later_are_used(tmp_path, monkeypatch):
    """The version is compared as numbers: 2.9 is refused; 2.10 (not "2.10" < "2.9"), the first
    safe one, and later ones read the file."""
    import sys
    import types
    path = tmp_path / "m.pt"
    path.write_bytes(b"PK\x03\x04\x00\x00 a zip archive's first bytes, as a .pt's")
    for version, used in (("2.9.1", False), ("2.10.0", True), ("2.11.0+cu128", True),
                          ("3.0", True)):
        calls = []
        torch = types.ModuleType("torch")
        torch.__version__ = version

        def load(*a, calls=calls, **k):
            calls.append(k)
            raise RuntimeError("loader reached")
        torch.load = load
        monkeypatch.setitem(sys.modules, "torch", torch)
        with pytest.raises(ConvertError) as e:
            load_pt(str(path))
        assert ("too old" not in str(e.value)) == used, (version, str(e.value))
        assert calls == ([{"map_location": "cpu", "weights_only": True}] if used else [])
