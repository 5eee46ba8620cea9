"""transfer/plots: the heatmap of text its font cannot draw (CJK, emoji)."""

from __future__ import annotations

import warnings

import matplotlib.image
import numpy as np

from lmscale.transfer import plots


def test_a_heatmap_of_cjk_and_emoji_says_so_once_instead_of_a_warning_per_glyph(tmp_path,
                                                                              capsys):
    text = "一丁七万丈😀 ok"
    trace = np.linspace(-1.0, 1.0, len(text.encode()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a glyph warning would fail here (68 lines before)
        plots.heatmap_png([text], [trace], str(tmp_path / "h.png"), unit=3)
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and "lacks 6 of the characters" in err and "h.html" in err
    assert matplotlib.image.imread(tmp_path / "h.png").ndim == 3
    plots.heatmap_png(["plain text"], [np.zeros(10)], str(tmp_path / "p.png"), unit=3)
    assert "note" not in capsys.readouterr().err


def test_a_histogram_of_a_nearly_constant_float32_unit(tmp_path):
    """A unit whose float32 values span fewer than 40 float32 steps (the OpenAI-model transfer
    test's neuron under jax 0.12): NumPy had no 40 distinct float32 edges, a ValueError after
    the transfer's fits."""
    one = np.float32(1.0)
    values = np.array([one, one, np.nextafter(one, np.float32(2)), one], np.float32)
    plots.neuron_histogram(values, np.array([0, 1, 0, 1]), str(tmp_path / "h.png"), unit=7)
    assert (tmp_path / "h.png").stat().st_size > 0
