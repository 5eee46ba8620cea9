"""Helpers for data tests: generated corpora and an independent reading of a prepared dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tests import conftest as _conftest

SHARED_DATA = _conftest.SHARED_DATA  # one definition of the folder (LMSCALE_TEST_SHARED_DATA)


def make_docs(count: int, seed: int = 0, min_len: int = 1, max_len: int = 60) -> list[bytes]:
    """Random documents of printable text, some with non-ASCII characters and newlines."""
    rng = np.random.default_rng(seed)
    alphabet = list("abcdefghij klmnopqrstuvwxyz,.;") + ["é", "ü", "→", "\n"]
    docs = []
    for _ in range(count):
        n = int(rng.integers(min_len, max_len + 1))
        docs.append("".join(rng.choice(alphabet, n)).encode("utf-8"))
    return docs


def write_txt_files(folder: Path, docs: list[bytes]) -> list[Path]:
    """One .txt file per document, named so that sorted order is document order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, d in enumerate(docs):
        p = folder / f"doc{i:04d}.txt"
        p.write_bytes(d)
        paths.append(p)
    return paths


def stream_entries(path: str | os.PathLike) -> list[dict]:
    """All shard entries of a prepared dataset, in stream order (by their "index")."""
    with open(os.path.join(path, "metadata.json")) as f:
        meta = json.load(f)
    entries = [dict(e, split=name) for name, s in meta["splits"].items() for e in s["shards"]]
    return sorted(entries, key=lambda e: e["index"])


def read_stream(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(all tokens in stream order, global document starts), read straight from the files."""
    with open(os.path.join(path, "metadata.json")) as f:
        dtype = np.dtype(json.load(f)["dtype"]).newbyteorder("<")
    tokens, starts, offset = [], [], 0
    for e in stream_entries(path):
        t = np.fromfile(os.path.join(path, e["file"]), dtype=dtype)
        tokens.append(t)
        starts.append(np.load(os.path.join(path, e["docs"])) + offset)
        offset += len(t)
    return np.concatenate(tokens), np.concatenate(starts)


def expected_starts(docs: list[bytes]) -> np.ndarray:
    """Global start offsets of the non-empty documents of ``docs`` concatenated."""
    lengths = np.array([len(d) for d in docs if d], dtype=np.int64)
    return np.concatenate([[0], np.cumsum(lengths)[:-1]])


def leftovers(output: Path) -> list[str]:
    """Anything named like ``output`` or its temporary/trash folders in its parent."""
    return sorted(p.name for p in output.parent.iterdir() if p.name.startswith(output.name))


SYLLABLES = ["ka", "to", "ri", "men", "sa", "lo", "ve", "qu", "ix", "dra", "naïve", "café", "—", "東京",
             "🙂", "ü", "ß", "42", "7"]
SEPARATORS = [" ", " ", " ", " ", "  ", "   ", "\t", "\n", "\n\n", ", ", ". "]


def make_text(words: int, seed: int = 0) -> str:
    """Generated text of made-up words (non-ASCII among them) and whitespace runs."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(words):
        out.append("".join(rng.choice(SYLLABLES, int(rng.integers(1, 4)))))
        out.append(str(rng.choice(SEPARATORS)))
    return "".join(out)
