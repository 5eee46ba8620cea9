"""The transfer pipeline: featurize labeled splits with a trained LM, classify, find the
neuron, compare with an n-gram baseline, plot, and write every number to results.json.

Several label columns (``label_column="anger,joy,..."``) make it multi-label: one L1
logistic regression per label with a tuned threshold (transfer/multilabel.py), scored like
``lmscale.finetune``; the neuron search and plots are for binary tasks only."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Sequence

import numpy as np
from sklearn.preprocessing import StandardScaler

from lmscale.atomic import write_json
from lmscale.cli import OutputError, refuse_links_out, writable_folder
from lmscale.folder_lock import writing_into
from lmscale.compiled_programs import release_near_map_limit
from lmscale.messages import check_call_arguments, errors_for_caller
from lmscale.training.restore import (TrainedLM, lm_record, load_trained, weights_fingerprint,
                                      with_compute)
from lmscale.training.run_paths import best_folder
from lmscale.transfer import plots
from lmscale.transfer.baseline import ngram_features
from lmscale.data.errors import DataError
from lmscale.transfer.classify import (C_GRID, SEARCH_ROWS, fit_l1, inverse_strengths,
                                      neuron_summary, save_transfer_classifier, search_subsample,
                                      top_k_sweep)
from lmscale.transfer.featurize import (UNUSED_CACHE_NOTE_BYTES, cached_featurize, feature_state,
                                       layer_and_unit, preprocess_texts, unit_trace,
                                       unused_cache)
from lmscale.transfer.labeled import (Labeled, check_held_out, check_labels, constant_labels,
                                      index_classes, label_columns, load_labeled, require_binary)
from lmscale.transfer.multilabel import fit_l1_multilabel


@errors_for_caller()  # from a notebook: its arguments, not the flags (--text_column)
def run_transfer(workdir: str, train: str, val: str, test: str | None = None, *,
                 text_column: str = "sentence", label_column: str = "label",
                 output: str | None = None, state: str | None = None, pooling: str = "last",
                 all_layers: bool = False, baseline: str = "words", batch_size: int = 64,
                 Cs: Sequence[float] = C_GRID, examples: int = 6, seed: int = 0,
                 progress: bool = False, lm: TrainedLM | None = None, compute: str = "float32",
                 features_dir: str | None = None, stages: bool = False,
                 search_rows: int = SEARCH_ROWS, standardize: bool = True,
                 threshold_metric: str = "f1", step: int | None = None,
                 best: bool = False) -> dict[str, Any]:
    """Runs the whole transfer; returns the results dict also written to OUTPUT/results.json.

    ``output`` defaults to WORKDIR/transfer. Features are cached in ``features_dir``, by default
    WORKDIR/features, or OUTPUT/features when the workdir cannot be written (read-only, shared);
    ``features_dir=""`` caches nothing.
    ``compute``: the LM's matmul dtype while featurizing (``restore.with_compute``).
    ``Cs``: the inverse L1 strengths tried (numbers or their strings, all > 0).
    ``search_rows``: with more training texts, each C search (all features, neuron, top k,
    baseline) fits on a stratified subsample of that many and refits the chosen C on all of
    them (``classify.fit_l1``; multi-label: a random subsample, each label's C refitted); 0:
    every text. ``standardize``: each unit scaled to mean 0 and variance 1 on train before
    the fits (False: raw features, as OpenAI's utils.py fits them). ``threshold_metric``
    (multi-label): what the val thresholds maximize (``metrics.tune_thresholds``). ``step``
    / ``best``: which of the run's weights (``load_trained``; default its latest checkpoint).
    A model whose import recorded its sentiment unit (OpenAI's 2388) gets it reported beside
    the unit this fit finds (``recorded_unit``: its rank, sign and accuracy alone).
    """
    check_call_arguments(workdir)  # None was a TypeError from posixpath naming no argument
    release_near_map_limit()
    train, val, test = (s if s is None else os.fspath(s) for s in (train, val, test))  # Paths too
    workdir, in_best = best_folder(workdir)  # RUN/best: RUN's best weights, outputs in RUN
    best = best or in_best
    check_held_out(train, val, test, ("--train", "--val", "--test"),  # "train" from Python
                   "C is chosen (the largest wins)")
    Cs = inverse_strengths(Cs)
    if search_rows < 0:
        raise DataError(f"search_rows must be >= 0 (0: all training texts), got {search_rows}")
    multilabel = len(label_columns(label_column)) > 1
    check_threshold_metric(threshold_metric, multilabel)
    # read and checked first: bad input fails before any work
    splits, class_names = _read_splits({"train": train, "val": val, "test": test}, text_column,
                                       label_column, multilabel, search_rows)
    # The folders written are checked before the LM is loaded and any text featurized.
    given_output = output
    output = output or os.path.join(workdir, "transfer")
    if given_output or os.path.isdir(workdir):  # else load_trained says what is wrong
        writable_folder(output, "pass --output=FOLDER to write the results elsewhere"
                        if not given_output else "pass another --output folder", own=True)
        cache = _features_dir(workdir, output, features_dir)
    else:
        cache = os.path.join(workdir, "features") if features_dir is None else features_dir or None
    lm = (with_compute(lm, compute) if lm is not None
          else load_trained(workdir, step, best=best, compute=compute))
    state = feature_state(lm, state)
    os.makedirs(output, exist_ok=True)

    model = lm.model()
    total_layers = len(getattr(model, "layers", ())) or model.num_layers
    if all_layers and model.num_layers < total_layers:
        print(f"note: all_layers concatenates the last {model.num_layers} of {total_layers} "
              f"layers (those as wide as the last, {model.feature_width} units); the wider "
              f"ones of this tied model are left out", file=sys.stderr, flush=True)
    options = dict(state=state, pooling=pooling, all_layers=all_layers, batch_size=batch_size,
                   progress=progress)
    # ``stages``: a line as each stage starts (a log without a terminal, under nohup or SLURM,
    # stayed silent through a 100k-text fit); progress bars stay for terminals.
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if stages else (lambda line: None)
    feats: dict[str, np.ndarray] = {}
    t0, used = time.perf_counter(), set()
    for name, data in splits.items():
        say(f"featurizing {name}: {len(data.texts)} texts")
        feats[name] = cached_featurize(lm, data.texts, cache, report=say if stages else None,
                                       used=used, **options)
        check_finite_features(feats[name], data, lm.compute)
    feat_s = time.perf_counter() - t0
    if cache:
        _unused_cache_note(cache, used)
    n_train = len(splits["train"].texts)
    sampled = (f"; C searched on a {'random' if multilabel else 'stratified'} subsample of "
               f"{search_rows} texts, the chosen C refitted on all {n_train}"
               if 0 < search_rows < n_train else "")
    say(f"fitting L1 logistic regressions (C in {list(Cs)}) on {n_train} "
        f"texts x {feats['train'].shape[1]} features ({feat_s:.1f} s featurizing){sampled}")
    y = {name: data.labels for name, data in splits.items()}
    x_test, y_test = feats.get("test"), y.get("test")

    # Standardized with train statistics: C then means the same for every unit, |weight|
    # ranks units by their effect, and liblinear converges several times faster. Without,
    # sklearn's no-op scaler (mean_ and scale_ None: saved as 0 and 1).
    scaler = StandardScaler(with_mean=standardize, with_std=standardize).fit(feats["train"])
    raw_feats = feats
    feats = {name: scaler.transform(f).astype(np.float32) for name, f in feats.items()}
    x_test = feats.get("test")
    info = {"lm_workdir": os.path.abspath(workdir), "lm_step": lm.step,
            **({"class_names": class_names} if class_names else {}),
            **({"lm_best": True} if lm.best else {}), "lm_weights": weights_fingerprint(lm),
            "state": state, "pooling": pooling, "all_layers": all_layers, "compute": lm.compute}
    if multilabel:
        return _multilabel(lm, workdir, splits, feats, y, scaler, info, output, baseline, Cs,
                           seed, feat_s, search_rows, threshold_metric)
    fit = fit_l1(feats["train"], y["train"], feats["val"], y["val"], x_test, y_test, Cs=Cs,
                 seed=seed, search_rows=search_rows)
    say("the neuron alone, then the top k units")
    neuron = neuron_summary(fit, feats["train"], y["train"], feats["val"], y["val"], x_test, y_test,
                            Cs=Cs, seed=seed, search_rows=search_rows)
    sweep = top_k_sweep(fit, feats["train"], y["train"], feats["val"], y["val"], x_test, y_test,
                        Cs=Cs, seed=seed, search_rows=search_rows)
    known, recorded = lm.derived.get("pretrained", {}).get("sentiment_unit"), None
    if known is not None and int(known) == neuron["index"]:
        recorded = neuron
    elif known is not None and int(known) < feats["train"].shape[1]:
        say(f"the imported model's recorded sentiment unit {known} alone")
        recorded = neuron_summary(fit, feats["train"], y["train"], feats["val"], y["val"], x_test,
                                  y_test, Cs=Cs, seed=seed, search_rows=search_rows,
                                  unit=int(known))
    results: dict[str, Any] = {
        "lm": lm_record(lm, workdir),
        "data": {name: {"source": d.source, "texts": len(d), "positive_fraction": float(np.mean(d.labels))}
                 for name, d in splits.items()},
        "columns": {"text": text_column, "label": label_column},
        **({"classes": class_names} if class_names else {}),  # class 1: the second (sorted, or the ClassLabel's)
        "features": {"state": state, "pooling": pooling, "all_layers": all_layers,
                     "compute": lm.compute, "dimensions": int(feats["train"].shape[1]),
                     "standardized": standardize},
        "all_features": fit.summary(),
        "neuron": neuron,
        "top_k": sweep,
        **({} if recorded is None else {"recorded_unit": recorded}),
    }
    if baseline != "none":
        say(f"the {baseline} n-gram baseline")
        results["baseline"] = _ngram_baseline(baseline, splits, Cs, seed, search_rows)
    results["featurization"] = _featurization(splits, feat_s)
    with writing_into(output, "transfer"):  # its files from one run: another may end with it
        _forget_results(output)
        results["plots"] = _plots(lm, splits, raw_feats, fit, neuron["index"], neuron["sign"],
                                  output, examples, state)
        # The fitted classifier, as plain arrays + JSON, for lmscale.classify / load_classifier.
        save_transfer_classifier(output, fit.model.coef_, fit.model.intercept_, scaler,
                                 fit.model.classes_, {**info, "C": fit.C})
        _write_results(output, results)
    return results


def _read_splits(specs: dict[str, str | None], text_column: str, label_column: str,
                 multilabel: bool, search_rows: int
                 ) -> tuple[dict[str, Labeled], list[str] | None]:
    """The labeled splits named in ``specs`` (train, val, test: a file or TFDS name, or None)
    and their class names (None: integer labels), refused in one line where the task cannot
    be learned or scored: more than two classes, one class in train, a label of a multi-label
    task constant in train (a note), a search subsample too small for both classes."""
    splits: dict[str, Labeled] = {}
    for name, spec in specs.items():
        if spec:
            splits[name] = load_labeled(spec, text_column=text_column, label_column=label_column,
                                        column_hint="set --text_column / --label_column")
    class_names = index_classes(splits)  # by name: ids in sorted order; a TFDS ClassLabel: its names
    if class_names is not None and len(class_names) != 2:
        raise DataError(f"{specs['train']}: label column {label_column!r} names "
                        f"{len(class_names)} classes ({', '.join(class_names[:10])}); the "
                        f"transfer's classifier is binary: two classes (lmscale.finetune takes "
                        f"more)")
    for name, spec in specs.items():
        if spec:
            if multilabel:
                check_labels(splits[name].labels, True, len(splits[name].label_names), spec,
                             splits[name].label_names)
            elif name == "train":  # the classifier learns both classes from train
                require_binary(splits[name], label_column)
            else:  # val and test are only scored: one class is enough (accuracy is defined)
                check_labels(splits[name].labels, False, 2, spec, splits[name].label_names,
                             "binary classification", several_columns_hint="a binary task "
                             "takes one label column")
    if multilabel:  # a label that never varies in train: nothing is learned for it
        constant_labels(splits["train"])
    else:  # a subsample too small for both classes: said now, not after featurizing
        search_subsample(splits["train"].labels, search_rows)
    return splits, class_names


def _ngram_baseline(kind: str, splits: dict[str, Labeled], Cs: Sequence[float], seed: int,
                    search_rows: int) -> dict[str, Any]:
    """The binary task's L1 fit on ``kind`` n-gram counts of the same texts (results.json's
    "baseline": what the LM's features are compared with)."""
    names = [n for n in ("train", "val", "test") if n in splits]
    mats = ngram_features(kind, *(splits[n].texts for n in names))
    x = dict(zip(names, mats[:-1]))
    y = {n: splits[n].labels for n in names}
    fit = fit_l1(x["train"], y["train"], x["val"], y["val"], x.get("test"), y.get("test"),
                 Cs=Cs, seed=seed, search_rows=search_rows)
    return {"features": f"{kind} n-grams", "vocabulary": mats[-1], **fit.summary()}


def check_finite_features(feats: np.ndarray, data: Labeled, compute: str) -> None:
    """DataError unless every feature [N, F] of ``data``'s texts is finite: NaN reached the
    fits as a scikit-learn traceback advising to impute missing values."""
    bad = np.flatnonzero(~np.all(np.isfinite(feats), axis=1))
    if len(bad):
        first = data.texts[bad[0]]
        cause = ("float16's range overflowed in the model's matmuls (--compute=bfloat16 or "
                 "float32 reads the same weights)" if compute == "float16" else
                 "the LM's weights or states overflowed (a diverged or damaged checkpoint?)")
        raise DataError(f"{data.source}: the features of {len(bad)} of {len(feats)} texts are "
                        f"not finite (NaN or inf; the first, text {bad[0]}: "
                        f"{first[:40]!r}{'...' if len(first) > 40 else ''}): {cause}")


def check_threshold_metric(metric: str, multilabel: bool) -> None:
    """``threshold_metric`` can tune this task's thresholds (``threshold_metric_problem``)."""
    from lmscale.transfer.metrics import threshold_metric_problem
    problem = threshold_metric_problem(metric, multilabel, "threshold_metric")
    if problem:
        raise DataError(problem)


def _multilabel(lm: TrainedLM, workdir: str, splits: dict[str, Labeled],
                feats: dict[str, np.ndarray], y: dict[str, np.ndarray], scaler: Any,
                info: dict[str, Any], output: str, baseline: str, Cs: Sequence[float], seed: int,
                feat_s: float, search_rows: int, threshold_metric: str) -> dict[str, Any]:
    """The multi-label transfer: per-label L1 models and thresholds, the n-gram baseline."""
    from lmscale.transfer.metrics import format_table
    names = splits["train"].label_names
    fit = fit_l1_multilabel(feats["train"], y["train"], feats["val"], y["val"], feats.get("test"),
                            y.get("test"), class_names=names, Cs=Cs, seed=seed,
                            search_rows=search_rows, threshold_metric=threshold_metric)
    results: dict[str, Any] = {
        "multilabel": True, "labels": names,
        "lm": lm_record(lm, workdir),
        "data": {n: {"source": d.source, "texts": len(d),
                     "positive_fraction": dict(zip(names, np.mean(d.labels, 0).tolist()))}
                 for n, d in splits.items()},
        "features": {**{k: info[k] for k in ("state", "pooling", "all_layers", "compute")},
                     "dimensions": int(feats["train"].shape[1]), "standardized": bool(scaler.with_std)},
        "all_features": fit.summary(),
    }
    print(format_table({n: m for n, m in fit.metrics.items() if n != "train"}))
    if baseline != "none":
        present = [n for n in ("train", "val", "test") if n in splits]
        mats = ngram_features(baseline, *[splits[n].texts for n in present])
        bx = dict(zip(present, mats[:-1]))
        base = fit_l1_multilabel(bx["train"], y["train"], bx["val"], y["val"], bx.get("test"),
                                 y.get("test"), class_names=names, Cs=Cs, seed=seed,
                                 search_rows=search_rows, threshold_metric=threshold_metric)
        results["baseline"] = {"features": f"{baseline} n-grams", "vocabulary": mats[-1],
                               **base.summary()}
    results["featurization"] = _featurization(splits, feat_s)
    with writing_into(output, "transfer"):
        _forget_results(output)
        save_transfer_classifier(output, fit.coef, fit.intercept, scaler, names,
                                 {**info, "multilabel": True,
                                  "thresholds": fit.thresholds.tolist(),
                                  "threshold_metric": threshold_metric, "C_per_label": fit.Cs})
        _write_results(output, results)
    return results


def _forget_results(output: str) -> None:
    """Removes an earlier run's results.json before this run writes anything else: a failure
    part way (a full disk) left it describing another classifier than the one saved."""
    if os.path.exists(os.path.join(output, "results.json")):
        os.remove(os.path.join(output, "results.json"))


def _features_dir(workdir: str, output: str, features_dir: str | None) -> str | None:
    """The feature cache's folder (see ``run_transfer``), checked writable; None: no cache."""
    if features_dir == "":
        return None
    if features_dir is not None:
        return writable_folder(features_dir, "pass another --features_dir, or "
                                             "--features_dir= to cache no features", own=True)
    default = os.path.join(workdir, "features")
    refuse_links_out(default, recursive=False)  # (not "cannot be written" below)
    try:
        return writable_folder(default, "")
    except OutputError:
        fallback = os.path.join(output, "features")
        print(f"note: {workdir} cannot be written: the features are cached in {fallback} "
              f"(--features_dir chooses the folder)", file=sys.stderr, flush=True)
        return writable_folder(fallback, "pass --features_dir=FOLDER, or --features_dir= to "
                                         "cache no features", own=True)


def _unused_cache_note(cache: str, used: set[str]) -> None:
    """Says how much of the feature cache this transfer did not use, past a GiB: nothing
    prunes it, and a sweep over checkpoints of a 4096-unit LM adds ~0.2 GB a point."""
    files, size = unused_cache(cache, used)
    if size >= UNUSED_CACHE_NOTE_BYTES:
        print(f"note: {cache} also holds {size / 2**30:.1f} GiB of cached features this transfer "
              f"did not use ({files} file{'s' if files != 1 else ''}: of other weights, texts or "
              f"options); delete them, or the folder, to free the space (a later transfer "
              f"featurizes again what it needs)", file=sys.stderr, flush=True)


def _featurization(splits: dict[str, Labeled], seconds: float) -> dict[str, Any]:
    chars = sum(len(t.encode("utf-8")) for d in splits.values() for t in d.texts)
    return {"seconds": seconds, "texts": sum(len(d) for d in splits.values()), "chars": chars,
            "note": "includes compilation; 0 s if cached"}


def _write_results(output: str, results: dict[str, Any]) -> None:
    write_json(os.path.join(output, "results.json"), results, indent=2)


def _plots(lm: TrainedLM, splits: dict[str, Labeled], feats: dict[str, np.ndarray], fit: Any,
           unit: int, sign: int, output: str, examples: int, state: str) -> dict[str, str]:
    """The histogram, weights and heatmap plots (their paths, and the split whose texts they
    show); ``sign``: the unit's own (``neuron_summary``), which colours the heatmap."""
    shown = "test" if "test" in splits else "val"
    paths = {"histogram": os.path.join(output, "neuron_histogram.png"),
             "weights": os.path.join(output, "weights.png"),
             "heatmap": os.path.join(output, "neuron_heatmap.png"),
             "heatmap_html": os.path.join(output, "neuron_heatmap.html")}
    plots.neuron_histogram(feats[shown][:, unit], splits[shown].labels, paths["histogram"],
                           unit=unit, split=shown)
    plots.weights_plot(fit.coef, paths["weights"])
    data = splits[shown]
    picks = _examples(data, examples)
    texts = [data.texts[i] for i in picks]
    hidden = lm.model().feature_width
    layer, unit_in_layer = layer_and_unit(unit, hidden, feats["train"].shape[1] > hidden)
    # texts of a split featurized above (or cached), whose notes said the cuts: not one per text
    traces = [unit_trace(lm, t, unit_in_layer, state=state, layer=layer, notes=False)
              for t in texts]
    texts = preprocess_texts(lm, texts)  # the traces follow the text as the LM read it
    sign = 1 if sign >= 0 else -1
    plots.heatmap_png(texts, traces, paths["heatmap"], unit=unit, sign=sign)
    plots.heatmap_html(texts, traces, paths["heatmap_html"], unit=unit, sign=sign)
    return {**paths, "split": shown}  # the histogram's and the heatmap's texts


def _examples(data: Labeled, n: int) -> list[int]:
    """Up to n short texts, alternating classes, for the heatmap."""
    order = np.argsort([len(t) for t in data.texts], kind="stable")
    # short texts of each class, or that class's shortest when it has none in 40..160 (a
    # class without one was left out of the heatmap)
    by_class = {}
    for c in (0, 1):
        mine = [i for i in order if data.labels[i] == c]
        by_class[c] = [i for i in mine if 40 <= len(data.texts[i]) <= 160] or mine
    picks = []
    for k in range(n):
        pool = by_class[k % 2]
        if k // 2 < len(pool):
            picks.append(int(pool[k // 2 * 7 % len(pool)]))
    return picks or [int(order[0])]


