"""The neuron ``lmscale.transfer`` found for an LM (WORKDIR/transfer/results.json), as
generation reads it: which unit, in which state and layer, and its sign.

Generation holds a unit at a value; ``neuron_polarity`` multiplies that value by the sign the
transfer's classifier gave the unit (sentiment-discovery's generate.py signs its --overwrite
value so), so that +value pushes towards the positive class whatever the unit's sign.
"""

from __future__ import annotations

import json
import os
import sys

from lmscale.data.errors import DataError

# (unit in its layer, the state it was read from, layer (-1: the last), sign +1/-1)
FoundNeuron = tuple[int, "str | None", int, int]


def transfer_neuron(workdir: str, width: int, step: int, weights: str | None = None
                    ) -> FoundNeuron | None:
    """The neuron ``lmscale.transfer`` found in WORKDIR/transfer: the state it read, and with
    --all_layers the layer of the index in the layers' states side by side (``width`` units
    each); None without a transfer, with one of other weights than those at ``step`` (with
    fingerprint ``weights``, where both are known: the LM retrained since; said in a note), or
    with a multi-label one (no neuron), or with a results.json that cannot be read (a note:
    generation goes on without it)."""
    path = os.path.join(workdir, "transfer", "results.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError) as e:  # torn, emptied, not UTF-8: a JSONDecodeError traceback
        results = e
    if not isinstance(results, dict):
        why = (f"{type(results).__name__}: {results}" if isinstance(results, Exception)
               else "not the results of lmscale.transfer")
        print(f"note: {path} cannot be read ({why}): its neuron is not used (re-run "
              f"lmscale.transfer for this LM's)", file=sys.stderr, flush=True)
        return None
    lm = results.get("lm") or {}
    of_step, of_weights = lm.get("step"), lm.get("weights")
    if (of_step is not None and of_step != step) or (weights and of_weights and of_weights != weights):
        print(f"note: {path} is of the LM at step {of_step}"
              + (f", not this one's {step}" if of_step != step else ", other weights than these")
              + ": its neuron is not used (re-run lmscale.transfer for this LM's)",
              file=sys.stderr, flush=True)
        return None
    neuron, features = results.get("neuron"), results.get("features", {})
    if not neuron:  # a multi-label transfer finds no neuron
        return None
    from lmscale.transfer.featurize import layer_and_unit
    layer, unit = layer_and_unit(int(neuron["index"]), width, bool(features.get("all_layers")))
    return unit, features.get("state"), layer, int(neuron["sign"]) or 1


def polarity_sign(found: FoundNeuron | None, neuron: int, workdir: str,
                  flag: str = "neuron_polarity") -> int:
    """The sign the transfer found for unit ``neuron`` of the last layer; DataError naming
    what it found instead (another unit, or none)."""
    if found is None or (neuron, -1) != (found[0], found[2]):
        what = "no neuron of this LM"
        if found is not None:
            layer = "the last layer" if found[2] == -1 else f"layer {found[2]}"
            what = f"unit {found[0]} of {layer} ({found[1]} state)"
        raise DataError(f"{flag} takes the sign lmscale.transfer found for "
                        f"{'--' if flag.startswith('--') else ''}neuron={neuron}, and "
                        f"{workdir}/transfer found {what}: run lmscale.transfer, or give the "
                        f"signed neuron value")
    return found[3]
