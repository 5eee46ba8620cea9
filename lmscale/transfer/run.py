"""The transfer pipeline: featurize labeled splits with a trained LM, classify, find the
neuron, compare with an n-gram baseline, plot, and write every number to results.json."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

import numpy as np
from sklearn.preprocessing import StandardScaler

from lmscale.training.restore import TrainedLM, load_trained
from lmscale.transfer import plots
from lmscale.transfer.baseline import ngram_features
from lmscale.transfer.classify import C_GRID, fit_l1, neuron_summary, top_k_sweep
from lmscale.transfer.featurize import (cached_featurize, feature_state, preprocess_texts,
                                       unit_trace)
from lmscale.transfer.labeled import Labeled, load_labeled, require_binary


def run_transfer(workdir: str, train: str, val: str, test: str | None = None, *,
                 text_column: str = "sentence", label_column: str = "label",
                 output: str | None = None, state: str | None = None, pooling: str = "last",
                 all_layers: bool = False, baseline: str = "words", batch_size: int = 64,
                 Cs: Sequence[float] = C_GRID, examples: int = 6, seed: int = 0,
                 progress: bool = False, lm: TrainedLM | None = None) -> dict[str, Any]:
    """Runs the whole transfer; returns the results dict also written to OUTPUT/results.json.

    ``output`` defaults to WORKDIR/transfer. Features are cached in WORKDIR/features.
    """
    splits: dict[str, Labeled] = {}  # read and checked first: bad input fails before any work
    for name, spec in (("train", train), ("val", val), ("test", test)):
        if spec:
            splits[name] = load_labeled(spec, text_column=text_column, label_column=label_column)
            require_binary(splits[name], label_column)
    lm = lm or load_trained(workdir)
    state = feature_state(lm, state)
    output = output or os.path.join(workdir, "transfer")
    os.makedirs(output, exist_ok=True)

    options = dict(state=state, pooling=pooling, all_layers=all_layers, batch_size=batch_size,
                   progress=progress)
    feats: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    for name, data in splits.items():
        feats[name] = cached_featurize(lm, data.texts, os.path.join(workdir, "features"), **options)
    feat_s = time.perf_counter() - t0
    y = {name: data.labels for name, data in splits.items()}
    x_test, y_test = feats.get("test"), y.get("test")

    # Standardized with train statistics: C then means the same for every unit, |weight|
    # ranks units by their effect, and liblinear converges several times faster.
    scaler = StandardScaler().fit(feats["train"])
    raw_feats = feats
    feats = {name: scaler.transform(f).astype(np.float32) for name, f in feats.items()}
    x_test = feats.get("test")
    fit = fit_l1(feats["train"], y["train"], feats["val"], y["val"], x_test, y_test, Cs=Cs, seed=seed)
    # The fitted classifier, as plain arrays + JSON, for lmscale.classify / load_classifier.
    from lmscale.finetuning.classifier import save_transfer_classifier
    save_transfer_classifier(output, fit.model, scaler, {
        "lm_workdir": os.path.abspath(workdir), "lm_step": lm.step, "state": state,
        "pooling": pooling, "all_layers": all_layers, "C": fit.C})
    neuron = neuron_summary(fit, feats["train"], y["train"], feats["val"], y["val"], x_test, y_test,
                            Cs=Cs, seed=seed)
    sweep = top_k_sweep(fit, feats["train"], y["train"], feats["val"], y["val"], x_test, y_test,
                        Cs=Cs, seed=seed)
    results: dict[str, Any] = {
        "lm": {"workdir": os.path.abspath(workdir), "step": lm.step,
               "model": lm.config.model.to_dict()},
        "data": {name: {"source": d.source, "texts": len(d), "positive_fraction": float(np.mean(d.labels))}
                 for name, d in splits.items()},
        "features": {"state": state, "pooling": pooling, "all_layers": all_layers,
                     "dimensions": int(feats["train"].shape[1]), "standardized": True},
        "all_features": fit.summary(),
        "neuron": neuron,
        "top_k": sweep,
    }
    if baseline != "none":
        texts = [splits[n].texts for n in ("train", "val", "test") if n in splits]
        mats = ngram_features(baseline, *texts)
        bx = dict(zip([n for n in ("train", "val", "test") if n in splits], mats[:-1]))
        base = fit_l1(bx["train"], y["train"], bx["val"], y["val"], bx.get("test"), y_test,
                      Cs=Cs, seed=seed)
        results["baseline"] = {"features": f"{baseline} n-grams", "vocabulary": mats[-1],
                               **base.summary()}
    chars = sum(len(t.encode("utf-8")) for d in splits.values() for t in d.texts)
    results["featurization"] = {"seconds": feat_s, "texts": sum(len(d) for d in splits.values()),
                                "chars": chars, "note": "includes compilation; 0 s if cached"}
    results["plots"] = _plots(lm, splits, raw_feats, fit, neuron["index"], output, examples, state)
    with open(os.path.join(output, "results.json.tmp"), "w") as f:
        json.dump(results, f, indent=2)
    os.replace(os.path.join(output, "results.json.tmp"), os.path.join(output, "results.json"))
    return results


def _plots(lm: TrainedLM, splits: dict[str, Labeled], feats: dict[str, np.ndarray], fit: Any,
           unit: int, output: str, examples: int, state: str) -> dict[str, str]:
    shown = "test" if "test" in splits else "val"
    paths = {"histogram": os.path.join(output, "neuron_histogram.png"),
             "weights": os.path.join(output, "weights.png"),
             "heatmap": os.path.join(output, "neuron_heatmap.png"),
             "heatmap_html": os.path.join(output, "neuron_heatmap.html")}
    plots.neuron_histogram(feats[shown][:, unit], splits[shown].labels, paths["histogram"], unit=unit)
    plots.weights_plot(fit.coef, paths["weights"])
    data = splits[shown]
    picks = _examples(data, examples)
    texts = [data.texts[i] for i in picks]
    hidden = lm.model().feature_width
    # All-layer features are the layers' states side by side: unit u is layer u // hidden.
    all_layers = feats["train"].shape[1] > hidden
    layer, unit_in_layer = divmod(unit, hidden) if all_layers else (-1, unit)
    traces = [unit_trace(lm, t, unit_in_layer, state=state, layer=layer) for t in texts]
    texts = preprocess_texts(lm, texts)  # the traces follow the text as the LM read it
    sign = 1 if fit.coef[unit] >= 0 else -1
    plots.heatmap_png(texts, traces, paths["heatmap"], unit=unit, sign=sign)
    plots.heatmap_html(texts, traces, paths["heatmap_html"], unit=unit, sign=sign)
    return paths


def _examples(data: Labeled, n: int) -> list[int]:
    """Up to n short texts, alternating classes, for the heatmap."""
    order = np.argsort([len(t) for t in data.texts], kind="stable")
    short = [i for i in order if 40 <= len(data.texts[i]) <= 160] or list(order)
    by_class = {c: [i for i in short if data.labels[i] == c] for c in (0, 1)}
    picks = []
    for k in range(n):
        pool = by_class[k % 2]
        if k // 2 < len(pool):
            picks.append(int(pool[k // 2 * 7 % len(pool)]))
    return picks or [int(order[0])]


