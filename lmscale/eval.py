"""Bits per character of a trained run on a prepared split or on any text files.

With no settings given it evaluates exactly as the run's own validation did (its eval batch,
sequence length, document resets and eval_steps), so both report the same BPC.

    python -m lmscale.eval --workdir=runs/quickstart             # the run's own validation split
    python -m lmscale.eval --workdir=runs/quickstart --data=runs/quickstart/data --split=test
    python -m lmscale.eval --workdir=runs/quickstart --data=some/file.txt
    python -m lmscale.eval --workdir=runs/awd --split=test --best   # checkpoint.keep_best's weights
"""

from __future__ import annotations

import json
import math
import os

from absl import app, flags

from lmscale.cli import (define_weights_flags, parse_flags, reader_may_leave, refuse_closed_stdout,
                         run_cli)

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.")
_DATA = flags.DEFINE_string("data", None, "A prepared dataset folder, or text paths/globs; "
                            "default: the run's own training dataset (its --split).")
_SPLIT = flags.DEFINE_string("split", "val", "Split of a prepared dataset.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Rows evaluated in parallel (reduced for short "
                               "text); 0 = the run's train.eval_batch_size.", lower_bound=0)
_SEQ = flags.DEFINE_integer("seq_len", 0, "Tokens per step; 0 = the run's train.seq_len.",
                            lower_bound=0)
_STEPS = flags.DEFINE_integer("max_steps", -1, "Batches to evaluate; 0 = the whole split "
                              "(every token but each row's first, which has no context, and "
                              "the last tokens-mod-rows), -1 = the run's train.eval_steps.")
_WEIGHTS = define_weights_flags()  # --step, --best
_COLUMN = flags.DEFINE_string("text_column", None, "CSV column holding the text; default: the "
                              "run's data.text_column.")
_FIELD = flags.DEFINE_string("text_field", None, "JSONL field holding the text; default: the "
                             "run's data.text_field.")
_COMPUTE = flags.DEFINE_enum("compute", None, ["float32", "bfloat16", "float16"],
                             "Dtype of the matmuls; default: the run's precision.compute, so its "
                             "validation gives the BPC its training logged.")
flags.mark_flags_as_required(["workdir"])
flags.register_validator("max_steps", lambda n: n >= -1, message="expected a count of batches, 0 "
                         "(the whole split) or -1 (the run's train.eval_steps)")
flags.register_validator("step", lambda n: n >= -1,
                         message="expected a checkpoint step, or -1 (the latest)")


def _check_data_flags() -> None:
    """Refuses --split, --text_column and --text_field where --data gives them no effect."""
    from lmscale.config import ConfigError
    from lmscale.data.dataset import is_dataset
    from lmscale.data.prepare import check_text_options
    from lmscale.data.sources import expand_inputs
    data = _DATA.value
    if not data or is_dataset(data):
        for flag in ("text_column", "text_field"):
            if flags.FLAGS[flag].value:
                where = f"--data={data}" if data else "the run's own dataset"
                raise ConfigError(f"--{flag} is for text files given as --data; {where} is a "
                                  f"prepared dataset, its text already tokenized: drop --{flag}")
        return
    if flags.FLAGS["split"].present:
        # a prepared dataset whose metadata.json is damaged is said so (read as text files,
        # it was told to drop --split)
        expand_inputs(data, notes=False)
        raise ConfigError(f"--split is for a prepared dataset; --data={data} is text files, "
                          f"evaluated whole: drop --split")
    if _COLUMN.value or _FIELD.value:
        check_text_options(expand_inputs(data, notes=False), _COLUMN.value, _FIELD.value)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from lmscale.distributed import refuse_several_processes
    refuse_several_processes("lmscale.eval", dict(os.environ))  # each task did the whole job
    from lmscale.training.host_devices import split_host_like_run
    from lmscale.training.evaluate_trained import evaluate_data, run_dataset
    from lmscale.training.restore import load_trained, with_compute
    run_cli(lambda: refuse_closed_stdout("the result (one JSON line) goes there",
                                         "redirect it to a file (> result.json)"))
    run_cli(_check_data_flags)
    run_cli(lambda: split_host_like_run(_WORKDIR.value))  # the devices the run trained on

    def run() -> dict:
        lm = load_trained(**_WEIGHTS(_WORKDIR.value))
        lm = with_compute(lm, _COMPUTE.value or lm.config.precision.compute)
        data = _DATA.value or run_dataset(lm)
        result = evaluate_data(lm, data, split=_SPLIT.value, batch_size=_BATCH.value or None,
                               seq_len=_SEQ.value or None,
                               max_steps=None if _STEPS.value < 0 else _STEPS.value, text_column=_COLUMN.value,
                               text_field=_FIELD.value)
        from lmscale.data.dataset import is_dataset
        split = _SPLIT.value if is_dataset(data) else "all"  # text files: all of their text
        if not math.isfinite(result["loss"]):  # was printed as NaN (not JSON), exit status 0
            from lmscale.data.errors import DataError
            why = (": the model's forward overflowed (in float16 compute its range is small: "
                   "--compute=bfloat16 or float32 reads the same weights)"
                   if lm.compute == "float16" else "")
            raise DataError(f"the loss of {data} is not finite (NaN or inf){why}")
        return {"workdir": lm.workdir, "step": lm.step, "best": lm.best,
                "data": data, "split": split, "compute": lm.compute, **result}

    result = run_cli(run)
    with reader_may_leave():
        print(json.dumps(result))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
