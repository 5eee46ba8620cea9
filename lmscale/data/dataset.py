"""Reading a prepared token dataset (see ``lmscale.data.prepare``) through memory maps."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmscale.atomic import within_folder
from lmscale.data.errors import DataError
from lmscale.data.tokenizer import Tokenizer, tokenizer_from_dict

FORMAT = "lmscale-tokens"
VERSION = 1
METADATA = "metadata.json"
SPLITS = ("train", "val", "test")
DTYPES = ("uint8", "uint16", "uint32")  # shard token dtypes (datasets before subwords: uint16)


def _read_metadata(path: str) -> dict[str, Any]:
    meta_path = os.path.join(path, METADATA)
    if not os.path.isdir(path):
        raise DataError(f"not a prepared dataset: no such folder {path}")
    if not os.path.isfile(meta_path):
        raise DataError(f"not a prepared dataset: {meta_path} is missing")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        empty = os.path.getsize(meta_path) == 0
        raise DataError(f"{meta_path}: {'empty' if empty else f'invalid JSON ({e})'}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{meta_path}: format is not {FORMAT!r}")
    version = meta.get("version")
    if version != VERSION:
        newer = isinstance(version, int) and version > VERSION
        raise DataError(f"{meta_path}: version {version!r} is not supported by this lmscale (it reads "
                        f"version {VERSION})" + (": prepared by a newer lmscale; upgrade lmscale, "
                                                 "or prepare the text again with this one"
                                                 if newer else ""))
    if meta.get("dtype") not in DTYPES:
        raise DataError(f"{meta_path}: dtype {meta.get('dtype')!r} is not supported (expected one of {list(DTYPES)})")
    if not isinstance(meta.get("splits"), dict) or not meta["splits"]:
        raise DataError(f"{meta_path}: no splits")
    return meta


def dataset_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a readable prepared dataset (None: it is): for a folder that
    looks like one (token shards) yet is refused, the reason ``is_dataset`` does not say."""
    try:
        _read_metadata(os.fspath(path))
    except DataError as e:
        return str(e)
    except OSError as e:
        return f"{os.path.join(os.fspath(path), METADATA)}: unreadable ({e.strerror or e})"
    return None


def dataset_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The checked metadata.json of the prepared dataset at ``path``; None where ``path`` is
    not one (``is_dataset``), read once."""
    try:
        return _read_metadata(os.fspath(path))
    except (DataError, OSError):
        return None


def is_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder with a readable lmscale-tokens metadata.json."""
    return dataset_metadata(path) is not None


class LazyDocStarts(Sequence[np.ndarray]):
    """The shards' document starts, each read from its .docs.npy when first asked for: only
    ``data.reset_on_documents`` reads them, and in memory they take 8 bytes a document in
    every process (about 1.6 GB for 200 M reviews), memory-mapped one file each."""

    def __init__(self, paths: list[str], counts: list[int]) -> None:
        self.paths, self.counts = paths, counts
        self._loaded: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        index = range(len(self.paths))[index]
        if index not in self._loaded:
            try:
                self._loaded[index] = np.load(self.paths[index], allow_pickle=False)
            except (ValueError, OSError) as e:
                raise unreadable("document-start file", self.paths[index], e) from None
        return self._loaded[index]


class MappedShards(Sequence[np.memmap]):
    """A split's shard files as token memmaps [n_i], each mapped when first read and at most
    ``max_open`` at a time (the least recently read unmapped first): every map holds a file
    descriptor (Python's mmap keeps its own), and a split of 1,000 shards (the paper's
    ``--split=1000,1,1``) mapped whole ran into the common limit of 1,024 open files, failing
    the checkpoint saves. ``lengths``: the tokens of each shard, from the metadata."""

    def __init__(self, paths: list[str], lengths: list[int], dtype: np.dtype,
                 max_open: int | None = None) -> None:
        import threading
        from collections import OrderedDict
        self.paths, self.lengths, self.dtype = paths, lengths, dtype
        self.max_open = max_open or open_files_for_maps(len(paths))
        # Each shard file's identity when the split was opened: a shard mapped later (lazily,
        # or again after its map was evicted) from a dataset prepared again in place
        # (``lmscale.prepare --overwrite``) was another file: read silently, or, shorter,
        # a traceback from mmap ("mmap length is greater than file size").
        self._identity = [_file_identity(p) for p in paths]
        self._mapped: OrderedDict[int, np.memmap] = OrderedDict()
        self._lock = threading.Lock()  # a prefetch thread and the loop may read one split

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.memmap:  # type: ignore[override]
        index = range(len(self.paths))[index]
        with self._lock:
            if index in self._mapped:
                self._mapped.move_to_end(index)
                return self._mapped[index]
            while len(self._mapped) >= self.max_open:
                self._mapped.popitem(last=False)  # its map (and descriptor) goes with its last view
            path = self.paths[index]
            was = self._identity[index]
            now = _file_identity(path) if was is not None else None
            if was is not None and now != was:
                # prepare writes a new dataset's shards while the old ones still exist (new
                # inodes); the mtime is left out: touch, a scratch file system's
                # purge-avoidance sweep or a backup tool leave the tokens alone
                what = "is gone" if now is None else "was replaced or rewritten"
                raise DataError(f"shard file {path} {what}: it changed while this process "
                                f"read its dataset (prepared again in place, e.g. "
                                f"lmscale.prepare --overwrite, or removed?): restore the "
                                f"dataset or prepare into another folder, then re-run")
            try:
                data = np.memmap(path, dtype=self.dtype, mode="r", shape=(self.lengths[index],))
            except (OSError, ValueError) as e:  # ValueError: shorter than its metadata says
                raise unreadable("shard file", path, e) from None
            self._mapped[index] = data
            return data


def _file_identity(path: str) -> tuple[int, int, int] | None:
    """(device, inode, size) of ``path``; None where it cannot be read (said when mapped)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size)


def unreadable(what: str, path: str, error: BaseException) -> DataError:
    """``what`` at ``path`` unreadable, and where the process ran out of file descriptors
    (EMFILE: a low ``ulimit -n`` and many shards, feature blocks or checkpoint files), the
    limit and how to raise it (the error alone named a shard, not the limit)."""
    line = f"{what} {path} is unreadable ({getattr(error, 'strerror', None) or error})"
    if getattr(error, "errno", None) == errno.EMFILE:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        line += (f": this process has as many files open as it may (ulimit -n: {soft}, at most "
                 f"{'unlimited' if hard == resource.RLIM_INFINITY else hard}); raise the limit "
                 f"(ulimit -n 4096) and re-run")
    return DataError(line)


def open_files_for_maps(shards: int, spare: int = 256) -> int:
    """How many of ``shards`` maps to keep open: all of them where the process may open that
    many files besides ``spare`` for everything else (the soft limit raised toward the hard
    one where needed, as a process may), else what the limit leaves (at least 8)."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return shards
    unlimited = resource.RLIM_INFINITY
    want = shards + spare
    if soft != unlimited and soft < want:
        try:
            raised = want if hard == unlimited else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (OSError, ValueError):
            pass
    return shards if soft == unlimited else max(8, min(shards, soft - spare))


def _doc_count(path: str) -> int:
    """The number of document starts in the .docs.npy at ``path``, read from its header
    (DataError unless it is a 1-D int64 array)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(f)
    except (ValueError, OSError) as e:
        raise unreadable("document-start file", path, e) from None
    if len(shape) != 1 or dtype != np.int64:
        raise DataError(f"document-start file {path} is not a 1-D int64 array")
    return int(shape[0])


@dataclass
class SplitData:
    """One split: its shards as token arrays [n_i] (the dataset's dtype; a prepared dataset's
    are memmaps, ``MappedShards``) and document starts (shard-local, int64)."""

    name: str
    shards: Sequence[np.ndarray]
    doc_starts: list[np.ndarray]
    label: str = ""  # what errors call it ("" = "split 'NAME'"; e.g. "the text of FILES")
    vocab_size: int | None = None  # ids of its tokenizer (a batcher checks what it reads)
    shard_lengths: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if len(self.shards) != len(self.doc_starts):
            raise DataError(f"{self.described}: {len(self.shards)} shards but "
                            f"{len(self.doc_starts)} document-start arrays")
        lengths = getattr(self.shards, "lengths", None)  # MappedShards: without mapping them
        self.shard_lengths = np.array(lengths if lengths is not None else
                                      [len(s) for s in self.shards], dtype=np.int64)

    @property
    def described(self) -> str:
        """The split as errors name it."""
        return self.label or f"split {self.name!r}"

    @property
    def num_tokens(self) -> int:
        return int(self.shard_lengths.sum())

    @property
    def num_documents(self) -> int:
        counts = getattr(self.doc_starts, "counts", None)  # LazyDocStarts: from the headers
        return int(sum(counts if counts is not None else (len(d) for d in self.doc_starts)))

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def read(self, shard_index: int, start: int, stop: int) -> np.ndarray:
        """Tokens [stop - start] of one shard, in the dataset's dtype (a copy, not a view of the map)."""
        n = int(self.shard_lengths[shard_index])
        if not 0 <= start <= stop <= n:
            raise DataError(f"{self.described}: range [{start}, {stop}) is outside shard "
                            f"{shard_index} of {n} tokens")
        return np.array(self.shards[shard_index][start:stop])

    def id_counts(self, vocab_size: int, max_tokens: int = 1 << 20, max_shards: int = 16
                  ) -> np.ndarray:
        """How often each id occurs in a sample of the split: int64 [vocab_size]. The
        sample: the first ``max_tokens / n`` tokens of n <= ``max_shards`` shards spread over
        the split (all of a small split), so a large corpus costs one quick read."""
        counts = np.zeros(int(vocab_size), np.int64)
        chosen = np.unique(np.linspace(0, self.num_shards - 1, min(self.num_shards, max_shards)
                                       ).round().astype(int)) if self.num_shards else []
        for i in chosen:
            tokens = self.read(int(i), 0, min(int(self.shard_lengths[i]), max_tokens // len(chosen)))
            counts += np.bincount(tokens.astype(np.int64), minlength=counts.shape[0])[:counts.shape[0]]
        return counts


def dataset_fingerprint(path: str | os.PathLike, edge_bytes: int = 4096) -> str:
    """A short hash of a prepared dataset's contents as far as cheaply readable: its
    metadata.json and the first and last ``edge_bytes`` of every shard file (a dataset
    prepared again in place, from other text, differs in them)."""
    import hashlib
    digest = hashlib.sha256()
    path = os.fspath(path)
    with open(os.path.join(path, METADATA), "rb") as f:
        digest.update(f.read())
    meta = _read_metadata(path)
    for split in meta.get("splits", {}).values():
        for entry in split.get("shards", []):
            with open(os.path.join(path, entry["file"]), "rb") as f:
                digest.update(f.read(edge_bytes))
                size = f.seek(0, os.SEEK_END)
                f.seek(max(size - edge_bytes, 0))
                digest.update(f.read(edge_bytes))
    return digest.hexdigest()[:16]


def has_fingerprint(path: str | os.PathLike, recorded: str) -> bool:
    """Whether ``path`` is a prepared dataset whose ``dataset_fingerprint`` is ``recorded``
    (False for one with a shard file gone: not the data recorded)."""
    try:
        return is_dataset(path) and dataset_fingerprint(path) == recorded
    except OSError:
        return False


class TokenDataset:
    """A prepared dataset folder: metadata, tokenizer and splits."""

    def __init__(self, path: str, metadata: dict[str, Any]) -> None:
        self.path = path
        self.metadata = metadata
        self.dtype = np.dtype(metadata["dtype"]).newbyteorder("<")
        self.tokenizer: Tokenizer = tokenizer_from_dict(metadata.get("tokenizer"), base_dir=path)
        if np.dtype(self.tokenizer.token_dtype).itemsize > self.dtype.itemsize:
            raise DataError(f"{path}: dtype {metadata['dtype']} cannot hold the {self.tokenizer.vocab_size} "
                            f"ids of its tokenizer")
        self.split_names: list[str] = [s for s in SPLITS if s in metadata["splits"]] + sorted(
            s for s in metadata["splits"] if s not in SPLITS)
        self._splits: dict[str, SplitData] = {}
        for name in self.split_names:
            self._splits[name] = self._open_split(name)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "TokenDataset":
        """Opens and checks ``path`` (every shard file must exist with the recorded size)."""
        path = os.fspath(path)
        return cls(path, _read_metadata(path))

    def _open_split(self, name: str) -> SplitData:
        entries = self.metadata["splits"][name].get("shards")
        if not isinstance(entries, list) or not entries:
            raise DataError(f"{self.path}: split {name!r} lists no shards")
        bin_paths, lengths, doc_paths, doc_counts = [], [], [], []
        for i, entry in enumerate(entries):
            try:
                file, doc_file, tokens = entry["file"], entry["docs"], int(entry["tokens"])
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{self.path}: shard {i} of split {name!r} has a bad entry {entry!r}") from None
            for named in (file, doc_file):  # a shared dataset's metadata.json: no file outside
                if not within_folder(named):
                    raise DataError(f"{self.path}: shard {i} of split {name!r} names {named!r}, "
                                    f"not a file inside the dataset's folder")
            bin_path = os.path.join(self.path, file)
            if not os.path.isfile(bin_path):
                raise DataError(f"{self.path}: shard file {file} is missing")
            size = os.path.getsize(bin_path)
            width = self.dtype.itemsize
            if size != width * tokens or tokens < 1:
                raise DataError(f"{self.path}: shard file {file} has {size} bytes, metadata says "
                                f"{tokens} tokens ({width * tokens} bytes)")
            bin_paths.append(bin_path)
            lengths.append(tokens)
            doc_path = os.path.join(self.path, doc_file)
            if not os.path.isfile(doc_path):
                raise DataError(f"{self.path}: document-start file {doc_file} is missing")
            count = _doc_count(doc_path)  # the header only: read when needed (LazyDocStarts)
            if "documents" in entry and count != int(entry["documents"]):
                raise DataError(f"{self.path}: {doc_file} has {count} document starts, metadata "
                                f"says {entry['documents']}")
            doc_paths.append(doc_path)
            doc_counts.append(count)
        return SplitData(name, MappedShards(bin_paths, lengths, self.dtype),
                         LazyDocStarts(doc_paths, doc_counts),
                         vocab_size=self.tokenizer.vocab_size)

    def split(self, name: str) -> SplitData:
        """The split ``name``; DataError naming the available ones if missing."""
        if name not in self._splits:
            raise DataError(f"{self.path} has no split {name!r}; available: {self.split_names}")
        return self._splits[name]

    @property
    def total_tokens(self) -> int:
        return int(sum(s.num_tokens for s in self._splits.values()))

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}={s.num_tokens} tokens/{s.num_shards} shards" for n, s in self._splits.items())
        return f"TokenDataset({self.path!r}: {parts})"
