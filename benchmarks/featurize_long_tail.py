"""Featurizing many short texts among a few very long ones: the host's work per packed chunk.

    git show f3109b1^:lmscale/transfer/packing.py > /tmp/packing_old.py
    python benchmarks/featurize_long_tail.py /tmp/packing_old.py lmscale/transfer/packing.py
    LONG=0 python benchmarks/featurize_long_tail.py lmscale/transfer/packing.py   # no long texts

A tiny random mLSTM (tests/transfer/conftest.py's ``random_lm``: the LM's own time is small,
so the host's packing shows) featurizes 100k texts of 50-300 bytes plus LONG (default 5)
texts of 200k bytes (batch_size 64, chunks of 128), once with each given version of
``lmscale/transfer/packing.py`` swapped in: the whole call's wall time and the mean host time
of ``packing.chunk``; the versions' features are checked equal.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lmscale.transfer import featurize as featurize_module  # noqa: E402
from tests.transfer.conftest import random_lm  # noqa: E402


def run(path: str, texts: list[str], lm: object) -> np.ndarray:
    spec = importlib.util.spec_from_file_location(f"packing_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    featurize_module.packing = module
    featurize_module.featurize(lm, texts[:300], batch_size=64, chunk=128)  # compiles
    calls, plain = [], module.chunk

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = plain(*args, **kwargs)
        calls.append(time.perf_counter() - start)
        return out
    module.chunk = timed
    start = time.perf_counter()
    out = featurize_module.featurize(lm, texts, batch_size=64, chunk=128)
    print(f"{path}: featurize {time.perf_counter() - start:.1f} s, {len(calls)} chunks, "
          f"packing.chunk {np.mean(calls) * 1e3:.2f} ms a chunk", flush=True)
    return out


def main() -> None:
    if not sys.argv[1:] or any(a.startswith("-") or not os.path.isfile(a) for a in sys.argv[1:]):
        sys.exit(__doc__)  # --help, or a path that is no file: the usage
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ", np.uint8)
    lengths = list(rng.integers(50, 301, 100_000)) + [200_000] * int(os.environ.get("LONG", 5))
    rng.shuffle(lengths)
    texts = [letters[rng.integers(0, len(letters), n)].tobytes().decode() for n in lengths]
    lm = random_lm()
    outs = [run(path, texts, lm) for path in sys.argv[1:]]
    for other in outs[1:]:
        assert np.array_equal(other, outs[0]), "the versions' features differ"


if __name__ == "__main__":
    main()
