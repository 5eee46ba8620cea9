"""The document shuffle's time and peak memory on a 128 MB token file, for each given version
of ``lmscale/data/shuffle.py`` (each in its own process; outputs checked identical):

    git show ef4dc4c:lmscale/data/shuffle.py > /tmp/shuffle_old.py
    python benchmarks/shuffle_memory.py /tmp/shuffle_old.py lmscale/data/shuffle.py

64M uint16 tokens in documents of ~400 tokens, buckets of 2^24 tokens (4 buckets, so the
scatter runs): seconds, MB/s and the process's peak RSS (which includes the ~130 MB of the
generated arrays).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

TOTAL = 64 * 2**20


def one(version: str, folder: str) -> None:
    spec = importlib.util.spec_from_file_location("shuffle_version", version)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    tokens, docs = os.path.join(folder, "tokens.raw"), os.path.join(folder, "docs.raw")
    rng.integers(0, 65535, TOTAL, dtype="<u2").tofile(tokens)
    starts = np.sort(rng.choice(TOTAL, TOTAL // 400, replace=False))
    starts[0] = 0
    starts.astype("<i8").tofile(docs)
    start = time.perf_counter()
    module.shuffle_documents(tokens, docs, TOTAL, 2, 0, bucket_tokens=2**24)
    seconds = time.perf_counter() - start
    with open(tokens, "rb") as f:
        digest = hashlib.md5(f.read()).hexdigest()
    print(f"{version}: {seconds:.2f} s, {2 * TOTAL / seconds / 1e6:.0f} MB/s, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB, output {digest}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        with tempfile.TemporaryDirectory() as folder:
            one(sys.argv[2], folder)
        return
    if not sys.argv[1:] or any(not os.path.isfile(v) for v in sys.argv[1:]):
        sys.exit(__doc__)
    for version in sys.argv[1:]:
        subprocess.run([sys.executable, __file__, "--one", version], check=True)


if __name__ == "__main__":
    main()
