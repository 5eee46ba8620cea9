"""transfer/plots: the heatmap of text its font cannot draw (CJK, emoji)."""

from __future__ import annotations

import warnings

import matplotlib.image
import matplotlib.pyplot
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


def test_every_weight_of_a_4096_unit_fit_is_drawn(tmp_path):
    """Width-1 bars of 4096 units were under a pixel wide: antialiasing erased most of them,
    leaving the top-|weight| labels over empty space."""
    coef = np.zeros(4096)
    units = np.arange(40) * 100 + 37
    coef[units] = np.where(np.arange(40) % 2, 1.0, -1.0) * np.linspace(0.5, 2.0, 40)
    plots.weights_plot(coef, str(tmp_path / "w.png"))
    image = matplotlib.image.imread(tmp_path / "w.png")[..., :3]
    blue = (image[..., 2] > 0.6) & (image[..., 0] < 0.3)  # tab:blue, fully drawn
    columns = np.flatnonzero(blue.sum(axis=0) > 5)
    runs = 1 + int(np.sum(np.diff(columns) > 1)) if len(columns) else 0
    assert runs >= 35, runs


def test_a_unit_of_unknown_direction_is_not_said_to_point_towards_positive(tmp_path):
    plots.heatmap_html(["hi"], [np.array([0.0, 1.0])], str(tmp_path / "h.html"), unit=1, sign=None)
    page = (tmp_path / "h.html").read_text()
    assert "green = higher, red = lower" in page and "positive" not in page
    plots.heatmap_html(["hi"], [np.array([0.0, 1.0])], str(tmp_path / "h.html"), unit=1, sign=-1)
    assert "towards positive" in (tmp_path / "h.html").read_text()


def test_the_heatmap_shows_both_classes_when_one_has_no_text_of_40_to_160_chars():
    from lmscale.transfer.labeled import Labeled
    from lmscale.transfer.run import _examples
    data = Labeled(["a wonderful, moving and funny film about friends", "x" * 400],
                   np.array([1, 0]), "t", ["label"])
    assert sorted(_examples(data, 6)) == [0, 1]


def test_the_heatmap_has_a_color_bar_reading_the_values_its_cells_are_colored_by():
    """The PNG said only the median: a reader could not tell what value a color stood for.
    Its bar spans the cells' color range, and a value's color on it is the cell's color,
    also when a negative unit flips the map."""
    text = "good, bad"
    trace = np.linspace(-2.0, 3.0, len(text))
    for sign in (1, -1):
        fig = plots.heatmap_figure([text], [trace], unit=5, sign=sign)
        try:
            grid, bar = fig.axes
            center = float(np.median(trace))
            half = float(np.max(np.abs(trace - center)))
            np.testing.assert_allclose(sorted(bar.get_xlim()), [center - half, center + half])
            [solids] = [c for c in bar.collections if c.norm.vmin is not None]
            cells = [p.get_facecolor() for p in grid.patches]
            assert len(cells) == len(text)
            for value, cell in zip(trace, cells):
                # one of the map's 256 entries apart at most (each rounds its lookup)
                np.testing.assert_allclose(solids.to_rgba(value), cell, atol=0.015)
        finally:
            matplotlib.pyplot.close(fig)


def test_importing_the_plots_leaves_a_notebooks_matplotlib_backend_and_figures_alone(tmp_path):
    """``matplotlib.use("Agg")`` at import switched a Jupyter kernel's inline backend to Agg
    after ``run_transfer`` (or ``import lmscale.transfer.run``): the user's own plots in later
    cells stopped showing. Drawn without pyplot, nothing joins the user's pyplot figures."""
    import subprocess
    import sys
    code = (
        "import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt\n"
        "import numpy as np; plt.figure()\n"
        "from lmscale.transfer import plots\n"
        f"plots.neuron_histogram(np.arange(6.0), np.array([0, 1] * 3), {str(tmp_path / 'h.png')!r}, unit=1)\n"
        f"plots.heatmap_png(['ab'], [np.zeros(2)], {str(tmp_path / 'm.png')!r}, unit=1)\n"
        "plots.heatmap_figure(['ab'], [np.zeros(2)], unit=1)\n"
        "print(matplotlib.get_backend(), plt.get_fignums())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["svg", "[1]"]
    assert matplotlib.image.imread(tmp_path / "h.png").ndim == 3


def test_a_trace_of_another_length_than_its_texts_bytes_is_refused_by_name(tmp_path):
    """A hand-made trace shorter than its text was an IndexError from NumPy's indexing."""
    import pytest
    with pytest.raises(ValueError, match=r"one value per UTF-8 byte of its text: 3 for 'abc', "
                                         r"got shape \(2,\)"):
        plots.heatmap_png(["abc"], [np.zeros(2)], str(tmp_path / "h.png"), unit=1)
    plots.heatmap_png(["abc"], [np.zeros(3)], str(tmp_path / "h.png"), unit=1)


def test_color_range_centers_on_the_median():
    """The color map's center is the median of the values (a few large ones do not move it),
    its half-width the largest distance from it."""
    assert plots._color_range([np.array([0.0, 0.0, 10.0]), np.array([0.0])]) == (0.0, 10.0)


def test_the_weights_plot_labels_the_largest_magnitudes(tmp_path, monkeypatch):
    """The labeled units are the largest |weights|, a negative one included (a mutant that
    ranked the signed weights labeled the small positive ones instead)."""
    labels: list[list[str]] = []
    save = plots._save

    def saved(fig, path, **kwargs):  # the real save, after reading the figure's labels
        labels.append(sorted(t.get_text() for t in fig.axes[0].texts))
        save(fig, path, **kwargs)

    monkeypatch.setattr(plots, "_save", saved)
    coef = np.array([0.1, -3.0, 0.0, 0.2, 2.0, 0.05, -0.01])
    plots.weights_plot(coef, str(tmp_path / "w.png"), top=3)
    assert labels == [["1", "3", "4"]]
    assert matplotlib.image.imread(tmp_path / "w.png").shape[2] in (3, 4)


def test_the_heatmap_of_a_transformer_repeats_no_length_note_per_example(tmp_path, capsys):
    """Its example texts come from a split whose featurizing said the cuts once: each text
    read again for its trace printed two more notes, "1 of 1 texts ...", per example."""
    from lmscale.transfer.classify import fit_l1
    from lmscale.transfer.featurize import featurize
    from lmscale.transfer.labeled import Labeled
    from lmscale.transfer.run import _plots
    from tests.transfer.conftest import random_transformer_lm
    lm = random_transformer_lm(max_len=32)
    lm.config.train.seq_len = 16  # positions 16..31 untrained: a note of their own
    texts = [f"example number {i} of a text longer than the model's positions" * (1 + i % 2)
             for i in range(8)]
    data = Labeled(texts, np.array([0, 1] * 4), "val", ["label"])
    feats = featurize(lm, texts)
    capsys.readouterr()
    fit = fit_l1(feats, data.labels, feats, data.labels, Cs=[1.0])
    _plots(lm, {"train": data, "val": data}, {"train": feats, "val": feats}, fit, 0, 1,
           str(tmp_path), 4, "hidden")
    err = capsys.readouterr().err
    assert "of 1 texts" not in err, err
    assert (tmp_path / "neuron_heatmap.png").exists()
