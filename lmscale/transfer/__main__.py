r"""Sentiment transfer: classify labeled text with a trained LM's features; find the neuron.

    SST=$(python -m lmscale.datasets fetch sst_binary | head -1)
    python -m lmscale.transfer --workdir=runs/sst_lm --train=$SST/train.csv --val=$SST/val.csv \
        --test=$SST/test.csv --text_column=sentence --label_column=label

Writes OUTPUT/results.json (accuracies as fractions; ``all_features``, ``neuron``,
``top_k``, ``baseline``), neuron_histogram.png, weights.png, neuron_heatmap.png/.html.
Several label columns (``--label_column=anger,joy,...``) make it multi-label: per-label
models and F1-tuned thresholds, macro/micro F1 and Jaccard as ``lmscale.finetune`` reports.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from lmscale.cli import define_weights_flags, parse_flags, reader_may_leave, run_cli
from lmscale.messages import draws_bar

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained (or imported) LM's run directory.")
_TRAIN = flags.DEFINE_string("train", None, "Labeled training texts: .csv/.jsonl or tfds:NAME/SPLIT.")
_VAL = flags.DEFINE_string("val", None, "Labeled validation texts (chooses C).")
_TEST = flags.DEFINE_string("test", None, "Labeled test texts (optional).")
_TEXT = flags.DEFINE_string("text_column", "sentence", "Column/field holding the text.")
_LABEL = flags.DEFINE_string("label_column", "label", "Column/field holding the 0/1 label; several "
                             "comma-separated 0/1 columns make it multi-label (one model per label).")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder; default WORKDIR/transfer.")
_FEATURES_DIR = flags.DEFINE_string(
    "features_dir", None, "Folder caching the LM's features of the texts (a re-run with other "
    "classifier settings skips the LM); default WORKDIR/features, or OUTPUT/features when the "
    "workdir cannot be written (read-only, shared); an empty value caches nothing.")
_STATE = flags.DEFINE_string("state", None, "Which of the model's states to take; default: its "
                             "own (cell for mLSTM/LSTM, hidden for the transformer; a kind of "
                             "one's own: its feature_states).")
_POOLING = flags.DEFINE_enum("pooling", "last", ["last", "mean", "max", "min"],
                             "Pooling over the text: the state after the last character, or mean/max/min.")
_ALL_LAYERS = flags.DEFINE_bool("all_layers", False, "Concatenate the states of all layers (a "
                                 "tied model's: those as wide as its last, said in a note).")
_BASELINE = flags.DEFINE_enum("baseline", "words", ["words", "chars", "none"],
                              "n-gram baseline computed on the same splits.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Rows of texts featurized in parallel (a recurrent "
                              "LM reads several texts in turn in each row).", lower_bound=1)
_COMPUTE = flags.DEFINE_enum("compute", "float32", ["float32", "bfloat16", "float16"],
                             "The LM's matmul dtype while featurizing (float32 accumulation and "
                             "states); bfloat16 is ~3x faster on CPUs with AMX and on GPUs.")
_C = flags.DEFINE_list("C", None, "Inverse L1 strengths to fit, comma-separated (the best on val is "
                       "kept); default 2^-8, 2^-7, ..., 2^1.")
_SEARCH_ROWS = flags.DEFINE_integer(
    "search_rows", None, "With more training texts than this, each C search fits on a "
    "stratified subsample of this many and only the chosen C on all of them (a 100k-text fit "
    "takes minutes per C); at or below it, every text. 0: always every text. Default: "
    "lmscale.transfer.classify.SEARCH_ROWS (20000).", lower_bound=0)
_STANDARDIZE = flags.DEFINE_bool(
    "standardize", True, "Scale each unit to mean 0, variance 1 on train before the L1 fits "
    "(C then weighs every unit alike); false fits raw features, as OpenAI's utils.py (with "
    "its grid, --C=0.00390625,0.0078125,0.015625,0.03125,0.0625,0.125,0.25,0.5,1).")
_THRESHOLD_METRIC = flags.DEFINE_enum(
    "threshold_metric", "f1", ["f1", "jaccard", "micro_f1"],
    "Multi-label: the val thresholds maximize each label's F1, or go on to the best per-text "
    "Jaccard (SemEval-2018 E-c's score) or micro F1 of all labels together.")
_WEIGHTS = define_weights_flags()  # --step, --best
flags.mark_flags_as_required(["workdir", "train", "val"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from lmscale.distributed import refuse_several_processes
    refuse_several_processes("lmscale.transfer", dict(os.environ))  # each task did the whole job
    import jax

    from lmscale.training.precision import FEATURIZE_ADVICE, print_compute_hint
    from lmscale.transfer.run import run_transfer

    run_cli(lambda: print_compute_hint(_COMPUTE.value, jax.devices()[0], FEATURIZE_ADVICE))

    r = run_cli(lambda: run_transfer(
        train=_TRAIN.value, val=_VAL.value, test=_TEST.value, text_column=_TEXT.value,
        label_column=_LABEL.value, output=_OUTPUT.value, state=_STATE.value,
        pooling=_POOLING.value, all_layers=_ALL_LAYERS.value, baseline=_BASELINE.value,
        batch_size=_BATCH.value, progress=draws_bar(sys.stderr), compute=_COMPUTE.value,
        features_dir=_FEATURES_DIR.value, stages=True, standardize=_STANDARDIZE.value,
        threshold_metric=_THRESHOLD_METRIC.value,
        **_WEIGHTS(_WORKDIR.value),  # workdir (RUN/best: RUN), step, best
        **({} if _SEARCH_ROWS.value is None else {"search_rows": _SEARCH_ROWS.value}),
        **({} if _C.value is None else {"Cs": _C.value})))
    with reader_may_leave():  # `| head -1`: no traceback
        _print_results(r)


def _print_results(r: dict) -> None:
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"
    if r.get("multilabel"):
        for who, part in ((f"all {r['features']['dimensions']} features", r["all_features"]),
                          *(((f"baseline {r['baseline']['features']}", r["baseline"]),)
                            if "baseline" in r else ())):
            for name in ("val", "test"):
                if part.get(name):
                    print(f"{who}, {name}: macro F1 {part[name]['macro_f1']:.4f}, "
                          f"Jaccard {part[name]['jaccard']:.4f}")
        return
    a, n = r["all_features"], r["neuron"]
    searched = ("" if a.get("search_rows", 0) >= a.get("train_rows", 0) else
                f"; C searched on {a['search_rows']} of {a['train_rows']} training texts")
    print(f"all {r['features']['dimensions']} features: test {pct(a['test_accuracy'])} "
          f"(val {pct(a['val_accuracy'])}, C={a['C']:g}, {a['nonzero_weights']} non-zero "
          f"weights{searched})")
    how = ("" if n.get("selected_by", "weight") == "weight" else
           ", the unit most correlated with the label: the L1 fit kept no unit")
    print(f"neuron {n['index']} (sign {n['sign']:+d}{how}) alone: test {pct(n['test_accuracy'])} "
          f"(val {pct(n['val_accuracy'])})")
    if "recorded_unit" in r:
        u = r["recorded_unit"]
        print(f"the import's recorded sentiment unit {u['index']} (rank {u['rank'] + 1} by "
              f"|weight|, sign {u['sign']:+d}) alone: test {pct(u['test_accuracy'])} "
              f"(val {pct(u['val_accuracy'])})")
    if "baseline" in r:
        b = r["baseline"]
        print(f"baseline {b['features']}: test {pct(b['test_accuracy'])} (val {pct(b['val_accuracy'])})")
    print(f"results and plots in {r['plots']['histogram'].rsplit('/', 1)[0]}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
