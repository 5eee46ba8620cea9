"""The neuron of WORKDIR/transfer/results.json as generation and the API hold it."""

from __future__ import annotations

import json
import os

from lmscale.transfer.found_neuron import transfer_neuron


def test_transfer_neuron_reads_its_sign_and_all_layers_index(tmp_path):
    """An all-layers index split into (layer, unit) by the layer width, and the classifier's
    sign (-1 kept, 0 -> 1)."""
    os.makedirs(tmp_path / "transfer")

    def found(index: int, sign: int, all_layers: bool):
        with open(tmp_path / "transfer" / "results.json", "w") as f:
            json.dump({"lm": {"step": 7}, "neuron": {"index": index, "sign": sign},
                       "features": {"state": "cell", "all_layers": all_layers}}, f)
        return transfer_neuron(str(tmp_path), width=4, step=7)

    assert found(9, -1, True) == (1, "cell", 2, -1)
    assert found(3, 1, False) == (3, "cell", -1, 1)
    assert found(3, 0, False)[3] == 1
