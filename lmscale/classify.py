r"""Classify new text with a saved classifier (a fine-tuned run or a transfer output).

    python -m lmscale.classify --workdir=runs/sst_ft --input=texts.csv --text_column=text \
        --output=predictions.csv [--labels=label]

Writes one row per input text: the text, p_<class> per class, and the predicted label
(``predicted``, single-label) or a 0/1 ``predicted_<class>`` column per class (multi-label,
with the thresholds tuned on validation). With --labels the input's label column(s) are
copied (``gold``, ``gold_<class>``) and scored (metrics printed and written to
OUTPUT.metrics.json). Input: .csv/.tsv/.jsonl or tfds:NAME/SPLIT; OUTPUT may not be the
input. ``--output=-`` (or /dev/stdout, a pipe) writes the CSV to standard output, what is said
to stderr, and no metrics file.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from lmscale.atomic import write_json
from lmscale.cli import parse_flags, refuse_closed_stdout, run_cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A fine-tuned run, or a transfer output / LM workdir.")
_INPUT = flags.DEFINE_string("input", None,
                             "Texts to classify: .csv/.tsv/.jsonl or tfds:NAME/SPLIT.")
_TEXT = flags.DEFINE_string("text_column", "text", "Column/field holding the text.")
_OUTPUT = flags.DEFINE_string("output", None, "Predictions CSV to write (- : standard output).")
_LABELS = flags.DEFINE_string("labels", None, "Label column(s) of the input to score against "
                              "(comma-separated for multi-label).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Rows read side by side, the texts packed end to "
                               "end in them (more rows: faster, more memory); 0 = a fine-tuned "
                               "run's validation rows (train.eval_batch_size), else 64.",
                              lower_bound=0)
flags.mark_flags_as_required(["workdir", "input", "output"])


def classify() -> dict:
    from lmscale.data.errors import DataError
    from lmscale.finetuning.classifier import load_classifier
    from lmscale.transfer.labeled import check_labels
    from lmscale.transfer.metrics import classification_metrics, format_table
    from lmscale.finetuning.predict import predictions_folder, write_predictions
    from lmscale.finetuning.predict import read_texts
    from lmscale.transfer.labeled import index_classes, load_labeled

    from lmscale.atomic import is_special
    stream = is_special(_OUTPUT.value)  # "-", /dev/stdout, a pipe: written in place, no metrics
    said = sys.stderr if stream else sys.stdout  # file beside it; what is said stays off the CSV
    if _OUTPUT.value == "-":  # `>&-`: was an AttributeError after the work
        refuse_closed_stdout("--output=- writes the predictions there",
                             "pass --output=FILE")
    if os.path.abspath(_OUTPUT.value) == os.path.abspath(_INPUT.value):
        raise DataError(f"--output is the input file {_INPUT.value}: write the predictions to "
                        f"another file (the input would be replaced)")
    if not stream and os.path.isdir(_OUTPUT.value):  # found only after classifying every text
        raise DataError(f"--output={_OUTPUT.value} is a folder: give the predictions CSV's file "
                        f"path (e.g. {os.path.join(_OUTPUT.value, 'predictions.csv')})")
    from lmscale.atomic import NAME_MAX
    from lmscale.cli import writable_folder
    longest = os.path.basename(_OUTPUT.value) + (".metrics.json" if _LABELS.value else "")
    size = len(os.fsencode(longest))
    if not stream and size > NAME_MAX:  # found after classifying
        raise DataError(f"--output={_OUTPUT.value}: the file name {longest} is {size} bytes, "
                        f"over the {NAME_MAX} a file system takes: give a shorter name")
    if not stream:
        writable_folder(predictions_folder(_OUTPUT.value),  # as write_predictions, before work
                        "pass --output=FILE to write the predictions elsewhere")
    clf = load_classifier(_WORKDIR.value, _BATCH.value)  # fails before reading a large input
    if _LABELS.value:
        data = load_labeled(_INPUT.value, text_column=_TEXT.value, label_column=_LABELS.value,
                            label_setting="--labels")
        texts = data.texts
        if not clf.multilabel:  # classes by name ("positive"): the classifier's ids for them
            index_classes({"input": data}, known=clf.class_names)
        if clf.multilabel and data.label_names != clf.class_names:
            raise DataError(f"--labels names {data.label_names}; the classifier's classes are "
                            f"{clf.class_names}")
        check_labels(data.labels, clf.multilabel, len(clf.class_names), data.source, data.label_names,
                     "the classifier", several_columns_hint=f"the classifier is single-label, "
                     f"its classes {', '.join(clf.class_names)}: give --labels its one column")
    else:
        texts = read_texts(_INPUT.value, _TEXT.value)
    step = getattr(clf, "step", None)  # a fine-tune still running: its best so far moves on
    weights = f" with the weights of step {step}" if step is not None else ""
    print(f"classifying {len(texts)} texts ({sum(len(t.encode('utf-8')) for t in texts)} "
          f"bytes of UTF-8){weights}", file=sys.stderr,
          flush=True)  # a log learns the size before the wait (nothing was said until the end)
    probs, pred = clf.predict(texts)
    metrics_path = _OUTPUT.value + ".metrics.json"
    m = (classification_metrics(probs, data.labels, clf.multilabel, clf.class_names,
                                clf.thresholds) if _LABELS.value else {})
    gold = data.labels if _LABELS.value else None
    if stream:
        write_predictions(_OUTPUT.value, texts, probs, pred, clf.class_names, clf.multilabel, gold)
    else:
        from lmscale.folder_lock import writing_into
        with writing_into(predictions_folder(_OUTPUT.value), "classify"):  # a pair of one run
            if os.path.exists(metrics_path):  # an earlier run's: beside other predictions
                os.remove(metrics_path)
            write_predictions(_OUTPUT.value, texts, probs, pred, clf.class_names, clf.multilabel,
                              gold)
            if m:
                write_json(metrics_path, m, indent=2)  # all or nothing
    where = "standard output" if _OUTPUT.value == "-" else _OUTPUT.value
    print(f"{len(texts)} texts classified; predictions in {where}", file=said)
    if m:
        print(format_table({"input": m}), file=said)
    return m


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from lmscale.distributed import refuse_several_processes
    refuse_several_processes("lmscale.classify", dict(os.environ))  # each task did the whole job
    # A fine-tuned run predicts on the devices its validation ran on: its val_predictions.csv
    # again to the last digit (1e-6 apart on a few rows on one device).
    from lmscale.finetuning.classifier import classifier_folder
    from lmscale.training.host_devices import split_host_like_run
    found = run_cli(lambda: classifier_folder(_WORKDIR.value))
    if found is not None and found[0] == "finetuned":
        run_cli(lambda: split_host_like_run(found[1]))
    run_cli(classify)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
