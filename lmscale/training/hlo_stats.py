"""Facts read from a compiled XLA program: its collective operations.

Used by the plan tool and tests to check that a data-parallel step does exactly one
gradient all-reduce, and how many bytes it moves.
"""

from __future__ import annotations

import math
import re

_DTYPE_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s64": 8, "s32": 4, "u32": 4, "s8": 1,
                "u8": 1, "pred": 1, "s16": 2, "u16": 2, "u64": 8}
_OP = re.compile(r"=\s*(?P<shape>.*?)\s+all-reduce(?:-start)?\(")
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]")


def all_reduces(hlo_text: str) -> list[dict[str, int | str]]:
    """Every all-reduce in an HLO module's text: [{"dtype", "elements", "bytes"}], in order.

    Async pairs (all-reduce-start/-done) count once; a tuple-shaped all-reduce (several
    operands combined by XLA) counts once, with its total size.
    """
    ops = []
    for line in hlo_text.splitlines():
        m = _OP.search(line)
        if not m:
            continue
        arrays = [a for a in _ARRAY.finditer(m.group("shape")) if a.group("dtype") in _DTYPE_BYTES]
        elements = sum(math.prod(int(d) for d in a.group("dims").split(",") if d) for a in arrays)
        nbytes = sum(math.prod(int(d) for d in a.group("dims").split(",") if d)
                     * _DTYPE_BYTES[a.group("dtype")] for a in arrays)
        dtypes = sorted({a.group("dtype") for a in arrays})
        ops.append({"dtype": ",".join(dtypes), "elements": elements, "bytes": nbytes})
    return ops
