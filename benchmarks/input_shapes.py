"""Data preparation at corpus shapes the tests use little: a comma-separated list of N files
(``--input=a.txt,b.txt,...``, ``data.train``) split into its paths, and one very long line cut
into SentencePiece's training sentences (a one-line file, a large CSV field). Seconds, best
of 3; time that grows faster than the input is a cliff (benchmarks/README.md).

    python benchmarks/input_shapes.py [--files=250,500,1000,2000] [--mib=1,2,4,8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Callable


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    from lmscale.data.sources import split_inputs
    from lmscale.data.spm import training_sentences
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="250,500,1000,2000")
    parser.add_argument("--mib", default="1,2,4,8")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for n in map(int, args.files.split(",")):
            paths = [os.path.join(folder, f"review_{i:05d}.txt") for i in range(n)]
            for path in paths:
                if not os.path.exists(path):
                    open(path, "w").close()
            listed = ",".join(paths)
            assert split_inputs(listed) == paths
            seconds = best_of(lambda: split_inputs(listed))
            print(f"split_inputs, {n:5d} files listed: {seconds:7.3f} s", flush=True)
    for mib in map(float, args.mib.split(",")):
        text = "words and 東京 "  # 19 bytes, 13 characters
        line = (text * int(mib * 2**20 / 19 + 1))[:int(mib * 2**20 * 13 / 19)]
        seconds = best_of(lambda: list(training_sentences([line])))
        print(f"training_sentences, one {mib:g} MiB line: {seconds:7.3f} s", flush=True)


if __name__ == "__main__":
    main()
