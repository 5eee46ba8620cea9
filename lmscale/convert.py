"""Convert pretrained mLSTM weights between OpenAI's, sentiment-discovery's and lmscale's layouts.

    # import: an ordinary lmscale workdir (config.json + checkpoint) that every tool accepts
    python -m lmscale.convert --from=openai --src=DIR --to=WORKDIR
    python -m lmscale.convert --from=sentiment-discovery --src=FILE.pt --to=WORKDIR
    # export an lmscale run
    python -m lmscale.convert --from=lmscale --src=WORKDIR --to=DIR --layout=openai
    python -m lmscale.convert --from=lmscale --src=WORKDIR --to=FILE.pt --layout=sentiment-discovery

Any source goes to any layout (e.g. OpenAI's .npy files straight to a .pt). Prints a JSON
summary. Nothing is overwritten: --to must be new (or an empty folder).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from absl import app, flags

from lmscale.cli import parse_flags, run_cli

SOURCES = ("openai", "sentiment-discovery", "lmscale")
LAYOUTS = ("lmscale", "openai", "sentiment-discovery")
LAYOUT_OUTPUTS = {"lmscale": "workdir (or an empty folder)", "openai": "folder (or an empty one)",
                  "sentiment-discovery": ".pt file"}

_FROM = flags.DEFINE_enum("from", None, SOURCES, "Layout of --src.")
_SRC = flags.DEFINE_string("src", None, "OpenAI's folder of 0.npy..14.npy, a sentiment-discovery "
                           ".pt file, or an lmscale workdir.")
_TO = flags.DEFINE_string("to", None, "Output: a new workdir (lmscale), folder (openai) or .pt file.")
_LAYOUT = flags.DEFINE_enum("layout", "lmscale", LAYOUTS, "Layout to write.")
_WEIGHT_NORM = flags.DEFINE_enum("weight_norm", "auto", ("auto", "true", "false"),
                                 "Recurrent matrices as g/v (true) or plain (false); auto keeps the "
                                 "source's form (OpenAI's layout always has g).")
_TWO_BIASES = flags.DEFINE_enum("two_biases", "auto", ("auto", "true", "false"),
                                "The gate bias as two trained vectors, PyTorch's b_ih and b_hh "
                                "(true: model.two_biases), or one (false: their sum); auto keeps the "
                                "source's (a .pt: two; OpenAI's files: one).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "train.batch_size of a written workdir (the rows of its "
                              "saved RNN carry); 0 = the config default.", lower_bound=0)
_STEP = flags.DEFINE_integer("step", -1, "Checkpoint step of an lmscale --src; -1 = the latest.")
_PREPROCESS = flags.DEFINE_enum("preprocess", "auto", ("auto", "none", "openai"),
                                "Text preprocessing the model expects; auto: the source's (OpenAI's "
                                "files: openai unless their lmscale.json names another; a .pt: none).")
_PT_VOCAB = flags.DEFINE_enum("pt_vocab", "auto", ("auto", "257", "256"),
                              "Rows of a written .pt's embedding and decoder (--layout="
                              "sentiment-discovery): 257 (id = byte + 1, padding id 0: "
                              "sentiment-discovery's releases) or 256 (id = byte: its older ones, "
                              "and a model whose RNNModel was built with ntoken=256); auto: a "
                              ".pt source's own count, else 257.")
flags.mark_flags_as_required(["from", "src", "to"])
flags.register_validator("step", lambda n: n >= -1,
                         message="expected a checkpoint step, or -1 (the latest)")


def convert(source: str, src: str, dst: str, layout: str, weight_norm: str = "auto",
            batch_size: int = 0, step: int | None = None, preprocess: str = "auto",
            two_biases: str = "auto", pt_vocab: int | None = None) -> dict[str, Any]:
    """Reads ``src`` in layout ``source`` and writes ``dst`` in ``layout``; returns a summary.
    ``preprocess`` ("auto": the source's) replaces the preprocessing the model is recorded
    to expect; ``weight_norm`` and ``two_biases`` ("auto", "true", "false") the form of the
    recurrent matrices and of the gate bias (the same function either way); ``pt_vocab`` the
    rows of a written .pt (257: id = byte + 1; 256: id = byte; None: a .pt source's own
    count, else 257)."""
    from lmscale.data.tokenizer import ByteTokenizer
    from lmscale.pretrained import openai, sentiment_discovery, workdir
    from lmscale.pretrained.errors import ConvertError

    wn = {"auto": None, "true": True, "false": False}[weight_norm]
    biases = {"auto": None, "true": True, "false": False}[two_biases]
    if layout == "openai" and wn is False:
        raise ConvertError("OpenAI's layout always stores weight-norm gains; use --weight_norm=auto or true")
    if layout == "openai" and biases:
        raise ConvertError("OpenAI's layout has one gate bias b; use --two_biases=auto or false "
                           "(two are written as their sum)")
    if layout != "sentiment-discovery" and dst.lower().endswith(".pt"):
        raise ConvertError(f"--to={dst}: --layout={layout} writes a "
                           f"{LAYOUT_OUTPUTS[layout].split()[0]}, not a .pt file; give a folder "
                           f"name, or --layout=sentiment-discovery to write a .pt file")
    from lmscale.atomic import publish, remove_abandoned, remove_path, temporary_name
    remove_abandoned(dst, "a convert")  # a killed convert's partial output (was left at DST)
    if os.path.exists(dst) and (layout == "sentiment-discovery" or not os.path.isdir(dst)
                                or os.listdir(dst)):
        raise ConvertError(f"{dst} already exists; expected a new {LAYOUT_OUTPUTS[layout]}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ConvertError(f"--batch_size must be an integer >= 0 (0 = the config default), "
                           f"got {batch_size!r}")
    if step is not None and source != "lmscale":
        raise ConvertError(f"--step picks a checkpoint of an lmscale workdir (--from=lmscale); "
                           f"--from={source} has one set of weights: drop --step")
    if pt_vocab not in (None, 256, 257):
        raise ConvertError(f"--pt_vocab must be 257 or 256, got {pt_vocab!r}")
    if pt_vocab is not None and layout != "sentiment-discovery":
        raise ConvertError(f"--pt_vocab sets the rows of a written .pt (--layout="
                           f"sentiment-discovery); --layout={layout} has its own: drop it")
    if batch_size and layout != "lmscale":
        raise ConvertError(f"--batch_size sets train.batch_size of a written workdir "
                           f"(--layout=lmscale); --layout={layout} records none: drop it")
    _check_destination(dst, layout)
    if source == "openai":
        weights = openai.load_openai(src)
    elif source == "sentiment-discovery":
        weights = sentiment_discovery.load_pt(src)
    else:
        weights = workdir.read_workdir(src, step)
    notes = _floored_notes(source, weights)  # of the weights as read, before any conversion
    if wn is not None:
        weights = weights.with_weight_norm(wn)
    if biases is not None:
        weights = weights.with_two_biases(biases)
    if preprocess != "auto":
        from lmscale.pretrained.preprocess import get_preprocessor
        get_preprocessor(preprocess)
        weights = dataclasses.replace(weights, preprocess=preprocess)
    if layout == "sentiment-discovery":
        sentiment_discovery.require_torch(dst)  # missing torch named with DST, not a temporary
    tmp = temporary_name(dst)  # written whole, then renamed: a kill leaves no partial DST
    try:
        if layout == "lmscale":
            workdir.write_workdir(weights, tmp, batch_size=batch_size or None)
        elif layout == "openai":
            if weights.tokenizer == ByteTokenizer.sentiment_discovery():
                notes.append("padding id 0 dropped: OpenAI's softmax covers the 256 bytes only")
            openai.save_openai(weights, tmp)
            if weights.preprocess != "openai":
                notes.append(f"{openai.SIDECAR} records preprocess {weights.preprocess!r} for "
                             f"lmscale's import; OpenAI's own code frames every text its way")
        else:
            if pt_vocab is None:  # a 256-row .pt (id = byte) goes back as it came
                pt_vocab = 256 if (source == "sentiment-discovery"
                                   and weights.tokenizer == ByteTokenizer.openai()) else 257
            if weights.tokenizer == ByteTokenizer.openai() and pt_vocab == 257:
                notes.append(f"padding id 0 added (ids = byte + 1) with decoder bias "
                             f"{sentiment_discovery.PAD_LOGIT:g}; --pt_vocab=256 keeps id = byte")
            elif weights.tokenizer == ByteTokenizer.sentiment_discovery() and pt_vocab == 256:
                notes.append("padding id 0 dropped (--pt_vocab=256: id = byte)")
            if weights.preprocess != "none":
                notes.append(f"the model expects preprocess {weights.preprocess!r}, which a .pt "
                             f"cannot record: import it with --preprocess={weights.preprocess}")
            sentiment_discovery.save_pt(weights, tmp, rows=pt_vocab)
        publish(tmp, dst)
    finally:  # a failed write (a full disk) leaves nothing behind; published, it is gone
        remove_path(tmp)
    out = os.path.abspath(dst)
    notes.extend(weights.source.get("notes", []))
    if weights.source.get("ignored_keys"):
        notes.append(f"ignored non-LM keys: {weights.source['ignored_keys']}")
    written = weights.tokenizer  # the ids of DST: OpenAI's layout and a 256-row .pt, id = byte
    if layout == "openai" or (layout == "sentiment-discovery" and pt_vocab == 256):
        written = ByteTokenizer.openai()
    elif layout == "sentiment-discovery":
        written = ByteTokenizer.sentiment_discovery()
    read = {"step": weights.source["step"]} if "step" in weights.source else {}  # the latest of a
    return {"from": source, "src": src, **read, "layout": layout, "to": out,  # run still training
            "kind": weights.kind,
            "layers": weights.layers, "hidden": weights.hidden, "embed": weights.embed,
            "vocab_size": written.vocab_size,
            "weight_norm": weights.weight_norm or layout == "openai",
            "two_biases": weights.two_biases and layout != "openai",
            "tokenizer": written.to_dict(), "preprocess": weights.preprocess,
            "notes": notes}


def _check_destination(dst: str, layout: str) -> None:
    """ConvertError, before any work, unless ``dst`` can be made: its nearest existing parent
    must be a folder that takes files."""
    from lmscale.cli import OutputError, nearest_existing, writable_folder
    from lmscale.pretrained.errors import ConvertError
    expected = f"expected a new {LAYOUT_OUTPUTS[layout]} path"
    parent = nearest_existing(os.path.dirname(os.path.abspath(dst)))
    if not os.path.isdir(parent):
        raise ConvertError(f"{dst}: {parent} is a file, not a folder; {expected}")
    try:
        writable_folder(parent, expected)
    except OutputError as e:
        raise ConvertError(str(e)) from None
    except OSError as e:
        raise ConvertError(f"cannot write in {parent} ({e.strerror or e}); {expected}") from None


def _floored_notes(source: str, weights: Any) -> list[str]:
    """Notes naming the weight-norm columns of ``weights`` whose norm is below 1e-6 (set by
    the floor of ||v||^2 at 1e-12, not by g / ||v||), in the source's own names."""
    from lmscale.pretrained import openai, sentiment_discovery
    from lmscale.pretrained.weights import floored_note
    if source == "openai":
        return openai.floored_notes(weights)
    if source == "sentiment-discovery":
        return sentiment_discovery.floored_notes(weights)
    return [floored_note(f"{path}/v column{'s' if len(cols) > 1 else ''}", cols,
                                 "as in training")
            for path, cols in weights.floored_columns().items()]


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _TO.value:
        raise app.UsageError("--to is empty: give the output workdir, folder or .pt file")
    summary = run_cli(lambda: convert(_FROM.value, _SRC.value, _TO.value, _LAYOUT.value,
                                      _WEIGHT_NORM.value, _BATCH.value,
                                      None if _STEP.value < 0 else _STEP.value, _PREPROCESS.value,
                                      _TWO_BIASES.value,
                                      None if _PT_VOCAB.value == "auto" else int(_PT_VOCAB.value)))
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
