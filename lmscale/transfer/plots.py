"""Pictures of the sentiment neuron: class histograms, classifier weights, character heatmaps.

matplotlib Figures drawn without pyplot (no backend chosen: works on servers and in CI, and a
notebook's own backend, e.g. the inline one, is left as it is); PNG files, and the heatmap also
as a standalone HTML page (inline styles, no scripts).
"""

from __future__ import annotations

import html
import os
import sys
import warnings
from typing import Sequence

import matplotlib
import matplotlib.cm
import matplotlib.colors
import matplotlib.patches
import numpy as np
from matplotlib.figure import Figure

from lmscale.atomic import atomic_write, save_figure as _save


def _figure(figsize: tuple[float, float]) -> tuple[Figure, object]:
    """A Figure and its one Axes, not registered with pyplot: importing this module used to
    call ``matplotlib.use("Agg")``, which switched a notebook's backend (its inline plots
    stopped showing after ``run_transfer``)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def neuron_histogram(values: np.ndarray, labels: np.ndarray, path: str, *, unit: int,
                     class_names: Sequence[str] = ("negative", "positive"), split: str = ""
                     ) -> None:
    """Overlaid histograms of one unit's feature value per class (``split``: whose texts,
    said in the title)."""
    fig, ax = _figure((7, 4))
    # Edges in float64: a float32 unit whose values span fewer than 40 float32 steps (a
    # nearly constant unit) has no 40 distinct float32 edges, and NumPy refuses them
    # (ValueError: Too many bins for data range), ending the transfer after its fits.
    bins = np.histogram_bin_edges(np.asarray(values, np.float64), bins=40)
    for cls, name, color in zip((0, 1), class_names, ("tab:red", "tab:green")):
        ax.hist(values[labels == cls], bins=bins, alpha=0.55, color=color,
                label=f"{name} ({int(np.sum(labels == cls))})")
    ax.set_xlabel(f"unit {unit} value")
    ax.set_ylabel("texts")
    ax.set_title(f"Unit {unit} by class" + (f" ({split} texts)" if split else ""))
    ax.legend()
    fig.tight_layout()
    try:
        _save(fig, path, dpi=110)
    finally:
        fig.clear()  # not in pyplot: freed with the Figure


def weights_plot(coef: np.ndarray, path: str, *, top: int = 5) -> None:
    """The logistic-regression weight of every unit, the largest |weights| labeled."""
    fig, ax = _figure((9, 3.5))
    units = np.arange(len(coef))
    nz = np.flatnonzero(coef)
    # Lines, not width-1 bars: with thousands of units a bar is under a pixel wide and
    # antialiasing erased most of them (a 4096-unit fit showed labels over empty space).
    ax.vlines(units[nz], 0, coef[nz], color="tab:blue", linewidth=1.2)
    ax.plot(units[nz], coef[nz], "o", color="tab:blue", markersize=2.5)
    ax.set_xlim(-0.5 - 0.01 * len(coef), len(coef) - 0.5 + 0.01 * len(coef))
    ax.margins(y=0.15)  # room for the labels of the largest bars inside the frame
    for u in np.argsort(-np.abs(coef))[:top]:
        if coef[u] != 0:
            ax.annotate(str(int(u)), (u, coef[u]), textcoords="offset points",
                        xytext=(0, 4 if coef[u] > 0 else -12), ha="center", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("unit")
    ax.set_ylabel("weight")
    ax.set_title(f"L1 logistic regression weights ({int(np.count_nonzero(coef))} of {len(coef)} non-zero)")
    fig.tight_layout()
    try:
        _save(fig, path, dpi=110)
    finally:
        fig.clear()  # not in pyplot: freed with the Figure


def _legend(sign: int | None) -> str:
    """What the colours mean: a direction only where the unit's sign is known."""
    if sign is None:  # a unit no transfer read: higher / lower, not a class
        return "green = higher, red = lower"
    return "green = towards positive, red = towards negative"


def _colors(values: np.ndarray, center: float, scale: float, sign: int | None) -> np.ndarray:
    """RGBA [T, 4] on a red - yellow - green map around ``center``; ``sign`` -1 flips it, so
    that green always means the direction the classifier reads as positive."""
    cmap = matplotlib.colormaps["RdYlGn"]
    sign = 1 if sign is None else sign
    return cmap(np.clip(0.5 + 0.5 * sign * (values - center) / max(scale, 1e-8), 0.0, 1.0))


def _color_range(traces: Sequence[np.ndarray]) -> tuple[float, float]:
    """(center, half-width): the median of all values and the largest distance from it."""
    values = np.concatenate([np.asarray(t, np.float64) for t in traces if len(t)] or [np.zeros(1)])
    values = values[np.isfinite(values)] if np.isfinite(values).any() else np.zeros(1)
    center = float(np.median(values))
    return center, float(np.max(np.abs(values - center)))


def heatmap_figure(texts: Sequence[str | bytes], traces: Sequence[np.ndarray], *,
                   unit: int, sign: int | None = 1, width: int = 80, read: str = ""):
    """The heatmap as a matplotlib Figure (shown inline in a notebook; ``heatmap_png`` saves
    it): each text's characters on a grid, colored by the unit's value after that character,
    with a color bar that gives the values the colors stand for.

    ``traces[i]`` has one value per UTF-8 byte of ``texts[i]`` (a str, or the UTF-8 bytes the
    model read, decoded here; invalid bytes show as U+FFFD); a character takes the value
    after its last byte. ``read``: how the traces were read, said in the title.
    """
    rows: list[tuple[str, np.ndarray]] = []
    for text, trace in zip(texts, traces):
        chars, vals = _per_char(text, trace)
        for s in range(0, max(len(chars), 1), width):
            rows.append((chars[s:s + width], vals[s:s + width]))
        rows.append(("", np.zeros(0)))
    center, scale = _color_range(traces)
    fig_h = 0.28 * len(rows) + 1.1
    fig, ax = _figure((width * 0.11 + 0.4, fig_h))
    ax.set_xlim(0, width)
    ax.set_ylim(len(rows), 0)
    ax.axis("off")
    for r, (chars, vals) in enumerate(rows):
        for c, (ch, color) in enumerate(zip(chars, _colors(vals, center, scale, sign))):
            ax.add_patch(matplotlib.patches.Rectangle((c, r), 1, 1, color=color, linewidth=0))
            ax.text(c + 0.5, r + 0.55, ch if ch.isprintable() else " ", ha="center",
                    va="center", fontsize=7, family="monospace")
    ax.set_title(f"unit {unit} after each character{read} (median {center:.2f}): "
                 f"{_legend(sign)}", fontsize=9)
    # The same map _colors draws from: value center +- scale across it, flipped for sign -1.
    half = max(scale, 1e-8)
    bar = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(center - half, center + half),
                                matplotlib.colormaps["RdYlGn_r" if sign == -1 else "RdYlGn"])
    cbar = fig.colorbar(bar, ax=ax, orientation="horizontal", fraction=0.9 / fig_h, pad=0.02,
                        aspect=40, shrink=0.6)
    cbar.set_label(f"unit {unit} value", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    return fig


def heatmap_png(texts: Sequence[str | bytes], traces: Sequence[np.ndarray], path: str, *,
                unit: int, sign: int | None = 1, width: int = 80, read: str = "") -> None:
    """``heatmap_figure`` saved as a PNG at ``path``; characters the font lacks are said."""
    with warnings.catch_warnings(record=True) as caught:  # drawn here: a warning per glyph
        warnings.simplefilter("always")
        fig = heatmap_figure(texts, traces, unit=unit, sign=sign, width=width, read=read)
        try:
            fig.tight_layout()
            _save(fig, path, dpi=120)
        finally:
            fig.clear()  # not in pyplot: freed with the Figure
    missing = [w for w in caught if "missing from font" in str(w.message)]
    for w in caught:
        if w not in missing:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if missing:
        glyphs = len({str(w.message) for w in missing})  # each drawn twice (layout, save)
        print(f"note: {path}: the font lacks {glyphs} of the characters (CJK, emoji...), "
              f"drawn as boxes; {os.path.splitext(os.path.basename(path))[0]}.html shows them",
              file=sys.stderr, flush=True)


def heatmap_html(texts: Sequence[str | bytes], traces: Sequence[np.ndarray], path: str, *,
                 unit: int, sign: int | None = 1, read: str = "") -> None:
    """The same heatmap as a standalone HTML page (hover a character for its value); ``read``
    as ``heatmap_png``'s, in its heading."""
    center, scale = _color_range(traces)
    parts = [f"<!doctype html><meta charset='utf-8'><title>unit {unit}</title>",
             "<body style='font-family:monospace;max-width:60em'>",
             f"<h3>unit {unit} after each character{html.escape(read)} (median {center:.2f}): "
             f"{_legend(sign)}</h3>"]
    for text, trace in zip(texts, traces):
        chars, vals = _per_char(text, trace)
        spans = []
        for ch, v, rgba in zip(chars, vals, _colors(vals, center, scale, sign)):
            r, g, b = (int(255 * x) for x in rgba[:3])
            spans.append(f"<span title='{v:.3f}' style='background:rgb({r},{g},{b})'>"
                         f"{html.escape(ch)}</span>")
        parts.append("<p>" + "".join(spans) + "</p>")
    parts.append("</body>")
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))


def _per_char(text: str | bytes, trace: np.ndarray) -> tuple[str, np.ndarray]:
    """Characters of ``text`` and, for each, the trace value after its last UTF-8 byte.

    ``text`` may be the UTF-8 bytes a model read (an imported OpenAI model's preprocessing
    gives bytes): decoded, each byte that is not valid UTF-8 shows as U+FFFD, one per byte, so
    the characters stay aligned with the trace."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="surrogateescape")
    sizes = [len(ch.encode("utf-8", errors="surrogateescape")) for ch in text]
    shown = "".join("\ufffd" if "\udc80" <= ch <= "\udcff" else ch for ch in text)
    trace = np.asarray(trace)
    if trace.shape != (sum(sizes),):  # a hand-made trace was an IndexError past its end
        raise ValueError(f"a trace must hold one value per UTF-8 byte of its text: "
                         f"{sum(sizes)} for {shown[:40]!r}, got shape {trace.shape} "
                         f"(lmscale.transfer's unit traces have it)")
    ends = np.cumsum(sizes, dtype=np.int64) - 1
    return shown, trace[ends] if len(text) else np.zeros(0)
