r"""Generate text with a trained LM, optionally holding one unit (the sentiment neuron) fixed.

    python -m lmscale.generate --workdir=runs/sst_lm --prompt="This movie" --length=200 \
        --temperature=0.8 --top_p=0.95 [--neuron=IDX --neuron_value=1.0]

Prints the samples and writes them, with a heatmap of the unit over each sample
(PNG and HTML), to --output (default WORKDIR/generate). A generation that takes more than a
second shows a progress bar on a terminal's stderr; Ctrl-C stops it within a quarter second,
writing nothing.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from lmscale.atomic import write_json
from lmscale.cli import (define_weights_flags, parse_flags, reader_may_leave, run_cli,
                         writable_folder)
from lmscale.messages import draws_bar

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained (or imported) LM's run directory.")
_PROMPT = flags.DEFINE_string("prompt", "\n", "Text to continue.")
_LENGTH = flags.DEFINE_integer("length", 200, "Tokens to generate (bytes for a byte-level model); "
                               "not given, a transformer generates at most half the length "
                               "it was trained at (max_len, or train.seq_len when shorter).")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature; 0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely only; 0 = off.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass; 1 = off.")
_SAMPLES = flags.DEFINE_integer("samples", 1, "Independent samples.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed, 0 <= seed < 2**32 (the key's 32 bits; "
                             "others are refused).")
_NEURON = flags.DEFINE_integer("neuron", None, "Unit of the last layer to hold fixed (from "
                               "the start, and after every token, prompt included).")
_VALUE = flags.DEFINE_float("neuron_value", 0.0, "Value the unit is held at.")
_POLARITY = flags.DEFINE_bool("neuron_polarity", False, "Multiply --neuron_value by the sign "
                              "lmscale.transfer found for the unit (its own direction), so that "
                              "a positive value means its positive class, as sentiment-discovery's "
                              "generate.py multiplies --overwrite by the classifier's sign.")
_STATE = flags.DEFINE_string("neuron_state", None, "State the unit lives in, one the model "
                             "holds; default: its first (cell for mLSTM/LSTM/QRNN; a QRNN holds "
                             "a unit only in its cell state; a kind of one's own: its own names).")
_HEATMAP_UNIT = flags.DEFINE_integer("heatmap_unit", None, "Unit shown in the heatmap "
                                     "(default: --neuron, else the transfer's neuron if known).")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder; default WORKDIR/generate (a "
                              "read-only workdir: give a folder elsewhere).")
_COMPUTE = flags.DEFINE_enum("compute", "float32", ["float32", "bfloat16", "float16"],
                             "The LM's matmul dtype (float32 accumulation and states); bfloat16 "
                             "is faster on CPUs with AMX and on GPUs.")
_WEIGHTS = define_weights_flags()  # --step, --best
flags.mark_flags_as_required(["workdir"])
# Characters of each sample the heatmap shows: a PNG draws a patch and a glyph per character
# (300,000 tokens x 2 samples ran for 11 minutes and 13 GB without finishing it).
HEATMAP_CHARS = 5000


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from lmscale.distributed import refuse_several_processes
    refuse_several_processes("lmscale.generate", dict(os.environ))  # each task did the whole job
    from lmscale.generation import generate
    from lmscale.training.restore import lm_record, load_trained, weights_fingerprint
    from lmscale.transfer.found_neuron import polarity_sign, transfer_neuron
    from lmscale.transfer import plots
    from lmscale.transfer.featurize import preprocess_texts, unit_trace

    def run() -> dict:
        from lmscale.data.errors import DataError
        from lmscale.pretrained.errors import unconverted_hint
        hint = unconverted_hint(_WORKDIR.value)
        if hint:  # OpenAI's files or a .pt given as the run: the convert command to run first
            raise DataError(hint)
        _check_neuron_flags()
        weights = _WEIGHTS(_WORKDIR.value)  # RUN/best: RUN's best weights, outputs in RUN
        workdir = weights.pop("workdir")
        out = _OUTPUT.value or os.path.join(workdir, "generate")
        if _OUTPUT.value or os.path.isdir(workdir):  # else load_trained says what is wrong
            # Before loading and sampling: a read-only workdir fails at once, with the way out.
            writable_folder(out, "pass --output=FOLDER to write the samples elsewhere"
                            if not _OUTPUT.value else "pass another --output folder", own=True)
        lm = load_trained(workdir, compute=_COMPUTE.value, **weights)
        model = lm.model()
        width = model.feature_width
        if _HEATMAP_UNIT.value is not None and not 0 <= _HEATMAP_UNIT.value < width:
            raise DataError(f"--heatmap_unit={_HEATMAP_UNIT.value} is outside the last layer's "
                            f"{width} units (0..{width - 1})")  # was said after sampling
        states = model.feature_states  # the heatmap's (a held unit's: generate checks)
        if _NEURON.value is None and _STATE.value and _STATE.value not in states:
            raise DataError(f"--neuron_state must be one of {list(states)} for a "
                            f"{lm.config.model.kind} model, got {_STATE.value!r}")
        length = _LENGTH.value
        from lmscale.models.registry import trained_length  # positions past it never trained
        max_len = trained_length(lm.config) or model.max_len
        if not flags.FLAGS["length"].present and max_len is not None and length > max_len // 2:
            length = max_len // 2  # the default, for a transformer: room for the prompt too
        found = transfer_neuron(workdir, width, lm.step, weights_fingerprint(lm))
        neuron_state = _STATE.value or None
        if (neuron_state is None and found is not None and found[1]
                and (_NEURON.value, -1) == (found[0], found[2])):
            neuron_state = found[1]  # the transfer's neuron, held in the state it was read from
        value = _VALUE.value
        if _POLARITY.value:  # the transfer's own sign of this unit (h = o tanh(c): the same in
            # either state)
            value *= polarity_sign(found, _NEURON.value, workdir, "--neuron_polarity")
        read: dict = {}  # what the model read of the prompt (a transformer: its last tokens)
        texts = generate(lm, _PROMPT.value, length, temperature=_TEMPERATURE.value,
                         top_k=_TOP_K.value, top_p=_TOP_P.value, samples=_SAMPLES.value,
                         seed=_SEED.value, neuron=_NEURON.value, neuron_value=value,
                         neuron_state=neuron_state, progress=draws_bar(sys.stderr), read=read)
        os.makedirs(out, exist_ok=True)
        record = {"lm": lm_record(lm, workdir),  # which weights wrote them
                  "prompt": _PROMPT.value, **read, "length": length, "seed": _SEED.value,
                  "neuron": _NEURON.value, "neuron_value": value,
                  "neuron_polarity": _POLARITY.value,
                  # the state the unit was held in: given, the transfer's, else generate's
                  # default (the model's first feature state, the cell state of an mLSTM)
                  "neuron_state": (neuron_state or states[0])
                  if _NEURON.value is not None else None,
                  "temperature": _TEMPERATURE.value, "top_k": _TOP_K.value, "top_p": _TOP_P.value,
                  "compute": lm.compute, "samples": texts}
        unit = _HEATMAP_UNIT.value if _HEATMAP_UNIT.value is not None else _NEURON.value
        # sign None: a unit whose direction no transfer found (the heatmap says higher/lower,
        # not "towards positive", for it)
        state, layer, sign = neuron_state, -1, None
        if unit is None and found is not None:  # the transfer's neuron, read as it was found
            unit, state, layer, sign = found
        elif found is not None and (unit, -1, state or found[1]) == (found[0], found[2], found[1]):
            state, sign = found[1], found[3]  # the transfer's unit and state: its sign
        if unit is not None:
            mapped = [t[:HEATMAP_CHARS] for t in texts]  # the unit's trace is causal: a prefix's
            if mapped != texts:
                print(f"note: the heatmap shows the first {HEATMAP_CHARS} characters of each "
                      f"sample", file=sys.stderr, flush=True)
            traces = [unit_trace(lm, t, unit, state=state, layer=layer) for t in mapped]
            shown = preprocess_texts(lm, mapped)  # the traces follow the text as the LM read it
        # the LM reading each sample back with nothing held (a held unit was set at every
        # step of the sampling, and looked, traced here, as if the hold had failed)
        read = " as the LM reads the sample back, unheld" if _NEURON.value is not None else ""
        from lmscale.folder_lock import writing_into
        with writing_into(out, "generate"):  # samples.json and the heatmap of one run
            write_json(os.path.join(out, "samples.json"), record, indent=2)  # all or nothing
            for name in ("heatmap.png", "heatmap.html"):  # an earlier call's, of other samples
                if os.path.exists(os.path.join(out, name)):
                    os.remove(os.path.join(out, name))
            if unit is not None:
                plots.heatmap_png(shown, traces, os.path.join(out, "heatmap.png"), unit=unit,
                                  sign=sign, read=read)
                plots.heatmap_html(shown, traces, os.path.join(out, "heatmap.html"), unit=unit,
                                   sign=sign, read=read)
        return {"texts": texts, "output": out}

    result = run_cli(run)
    with reader_may_leave():
        for text in result["texts"]:
            print(text)
            print("-" * 40)
        print(f"written to {result['output']}")


def _check_neuron_flags() -> None:
    """Refuses --neuron_value without --neuron, and --neuron_state without --neuron or
    --heatmap_unit: they were ignored (samples identical, samples.json recording the value)."""
    from lmscale.data.errors import DataError
    if _NEURON.value is None and flags.FLAGS["neuron_value"].present:
        raise DataError("--neuron_value holds the unit --neuron names: give --neuron too")
    if _NEURON.value is None and _POLARITY.value:
        raise DataError("--neuron_polarity signs the value --neuron is held at: give --neuron too")
    if _NEURON.value is None and _HEATMAP_UNIT.value is None and _STATE.value is not None:
        raise DataError("--neuron_state is the state of --neuron (or of --heatmap_unit): give "
                        "one of them too")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
