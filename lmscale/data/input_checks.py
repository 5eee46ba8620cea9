"""What an input path must be before it is read as text, each refusal one line naming it.

Refused: formats lmscale cannot read (``.zst``, ``.zip``, ``.parquet``, ... by name; binary
content: NUL bytes or a known magic number near the start), broken symbolic links, pipes and
other non-regular files (inputs are sized, sampled and read more than once), and what an
lmscale run or a killed prepare left in a folder (a workdir, ``OUTPUT.tmp-HOST-PID``): those
are skipped with a note inside a folder of corpora, refused when named themselves. Without
these checks such inputs were tokenized as text (compressed bytes, token ids, checkpoints).
"""

from __future__ import annotations

import os
import re
import stat

from lmscale.data.compression import READ_ERRORS, compression, format_extension, open_input
from lmscale.data.errors import DataError

SUPPORTED = ("lmscale reads plain text, .csv/.tsv and .jsonl files, and those compressed as "
             ".gz, .bz2 or .xz")
HEAD_BYTES = 8192  # the start of a file looked at for binary content
# Compressions and archives lmscale does not read: (name, how to decompress FILE).
_ARCHIVES = {
    ".zst": ("Zstandard", "zstd -d {f}"), ".zstd": ("Zstandard", "zstd -d {f}"),
    ".zip": ("zip", "unzip {f}"), ".7z": ("7-Zip", "7z x {f}"), ".rar": ("RAR", "unrar x {f}"),
    ".tar": ("tar", "tar xf {f}"), ".tgz": ("tar", "tar xzf {f}"), ".lz4": ("LZ4", "lz4 -d {f}"),
    ".br": ("Brotli", "brotli -d {f}"), ".lzma": ("LZMA", "unlzma {f}"), ".lz": ("lzip", "lzip -d {f}"),
    ".z": ("compress", "uncompress {f}"), ".snappy": ("Snappy", "decompress it"),
}
_BUNDLES = (".zip", ".7z", ".rar", ".tar", ".tgz")
_TABLES = {".parquet": "Parquet", ".arrow": "Arrow", ".feather": "Feather", ".avro": "Avro",
           ".orc": "ORC", ".pkl": "pickle", ".pickle": "pickle",
           ".h5": "HDF5", ".hdf5": "HDF5", ".sqlite": "SQLite", ".db": "database"}
_DOCUMENTS = {".pdf": "PDF", ".doc": "Word", ".docx": "Word", ".odt": "OpenDocument",
              ".epub": "EPUB", ".xls": "Excel", ".xlsx": "Excel"}
# Magic numbers at a file's start: (bytes, format name, the extension lmscale would read it by).
_MAGIC = [(b"\x28\xb5\x2f\xfd", "Zstandard", ".zst"), (b"PK\x03\x04", "zip", ".zip"),
          (b"\x1f\x8b", "gzip", ".gz"), (b"\xfd7zXZ\x00", "xz", ".xz"),
          (b"7z\xbc\xaf\x27\x1c", "7-Zip", ".7z"), (b"%PDF-", "PDF", ".pdf"),
          (b"PAR1", "Parquet", ".parquet"), (b"ARROW1", "Arrow", ".arrow"),
          (b"\x93NUMPY", "NumPy", ".npy")]
_WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff")  # UTF-16/32 text: NULs, but a note says what to do
_TMP_NAME = re.compile(r"\.tmp-(?:.+-)?\d+$")  # OUTPUT.tmp-HOST-PID (older: OUTPUT.tmp-PID)
RAW_FILES = ("tokens.raw", "doc_starts.raw")  # a prepare's pass-1 files (prepare.py)


def _refusal(path: str, what: str, ext: str) -> str:
    """How to make ``path`` (``what``, extension ``ext``) readable, in words."""
    if ext in _ARCHIVES:
        name, command = _ARCHIVES[ext]
        target = path[:-len(ext)] if path.lower().endswith(ext) else path
        if ext in _BUNDLES:  # many files in one: extracted, they are a folder to give
            return (f"{path}: {what} ({name} archive); {SUPPORTED}: extract it "
                    f"({command.format(f=path)}) and give the files or their folder")
        return (f"{path}: {what} ({name}); {SUPPORTED}: decompress it ({command.format(f=path)}), "
                f"or recompress it as .gz (e.g. into {os.path.basename(target)}.gz)")
    if ext in _TABLES:
        return (f"{path}: {what} ({_TABLES[ext]}); {SUPPORTED}: export its text column as JSONL "
                f"(one {{\"text\": ...}} object per line) or CSV first")
    return (f"{path}: {what} ({_DOCUMENTS.get(ext, 'binary')}); {SUPPORTED}: extract its text "
            f"into a .txt file first (e.g. pdftotext for a PDF), or leave it out of the inputs")


def check_name(path: str) -> None:
    """Refuses a file whose name says a format lmscale cannot read (``a.jsonl.zst``,
    ``a.zip``, ``a.tar.gz``; compressed ones lmscale reads: only .gz, .bz2, .xz)."""
    for ext in {os.path.splitext(path)[1].lower(), format_extension(path)}:
        if ext in _ARCHIVES or ext in _TABLES or ext in _DOCUMENTS:
            raise DataError(_refusal(path, "a format lmscale does not read", ext))


def check_file(path: str) -> None:
    """Refuses what cannot be read as a file at all: a broken symbolic link, a file gone since
    it was listed, a pipe or other non-regular file; then a name in an unread format."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise DataError(f"{path}: a broken symbolic link (-> {os.readlink(path)}): its target "
                            f"is gone; fix the link or remove it") from None
        raise DataError(f"{path}: no such file (removed or renamed since it was listed?)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a pipe" if stat.S_ISFIFO(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
                else "a device or socket")
        raise DataError(f"{path} is {kind}, not a regular file: lmscale sizes, samples and reads "
                        f"its inputs more than once, so it needs a file (write it to one first, "
                        f"e.g. zstdcat corpus.zst > corpus.txt)")
    if os.path.basename(path) in RAW_FILES and prepare_leftover(os.path.dirname(path) or "."):
        raise DataError(leftover_refusal(path))
    check_name(path)


def unreadable(path: str, e: BaseException) -> DataError | None:
    """The one line for an input that cannot be read, without permission, as a folder (one
    named like a file: Spark's "out.csv") or as a damaged compressed file; None for another
    error (the caller's own case; a file not found has its own line wherever it is read, not
    "cannot read it as a .gz file")."""
    if isinstance(e, FileNotFoundError):
        return None
    if isinstance(e, PermissionError):
        return DataError(f"{path}: permission denied (make it readable, or leave it out)")
    if isinstance(e, IsADirectoryError):  # Spark writes "out.csv" as a folder of part files
        return DataError(f"{path} is a folder, not a file: give the file in it to read")
    if compression(path):
        return DataError(f"{path}: cannot read it as a {compression(path)} file ({e})")
    return None


def check_contents(path: str) -> None:
    """Refuses a file whose start (decompressed) is binary: a known magic number (a misnamed
    archive or table) or NUL bytes, which text does not hold (UTF-16 text, with a byte order
    mark, is left to the reader's note)."""
    try:
        with open_input(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (removed or renamed since it was listed?)") from None
    except READ_ERRORS as e:
        raise (unreadable(path, e) or DataError(f"{path}: cannot read it ({e})")) from None
    for magic, name, ext in _MAGIC:
        if head.startswith(magic):
            if ext in (".gz", ".xz") and not compression(path):
                raise DataError(f"{path}: {name}-compressed data, but its name does not end in "
                                f"{ext}: rename it (e.g. to {os.path.basename(path)}{ext}) so "
                                f"lmscale decompresses it")
            if ext not in (".gz", ".xz"):
                raise DataError(_refusal(path, f"{name} data by its content, not text", ext))
    if b"\x00" in head and not head.startswith(_WIDE_BOMS):
        raise DataError(f"{path}: binary data, not text (a NUL byte at byte {head.index(0):,}); "
                        f"{SUPPORTED}: convert it to text, or leave it out of the inputs")


def prepare_leftover(folder: str) -> bool:
    """Whether ``folder`` is what a killed (or running) prepare leaves: OUTPUT.tmp-HOST-PID
    with its token files or shards in it, or any folder holding both raw token files."""
    if all(os.path.isfile(os.path.join(folder, n)) for n in RAW_FILES):
        return True
    return bool(_TMP_NAME.search(os.path.basename(os.path.normpath(folder)))) and any(
        os.path.exists(os.path.join(folder, n)) for n in (*RAW_FILES, "train", "metadata.json"))


def leftover_refusal(path: str) -> str:
    return (f"{path} is the temporary folder (or a file of it) of a prepare that was killed or "
            f"is still running: token ids, not text; prepare that output again (it removes the "
            f"folder) or delete it, and give the text files or the finished dataset")


def run_folder(folder: str) -> bool:
    """Whether ``folder`` is an lmscale run's workdir: config.json with checkpoints/ or
    metrics.jsonl (what lmscale.train writes), or the data_request.json it records next to
    its .lock or prepared data/."""
    def has(name: str) -> bool:
        return os.path.exists(os.path.join(folder, name))
    if has("config.json") and (os.path.isdir(os.path.join(folder, "checkpoints")) or has("metrics.jsonl")):
        return True
    return os.path.isfile(os.path.join(folder, "data_request.json")) and (
        has(".lock") or os.path.isfile(os.path.join(folder, "data", "metadata.json")))


def run_refusal(path: str) -> str:
    return (f"{path} is an lmscale run folder (a workdir: config.json, checkpoints, metrics), "
            f"not text: give its text files, or its prepared dataset ({os.path.join(path, 'data')}) "
            f"if it has one")


def per_file(counts: dict[str, int]) -> str:
    """"a.txt (3), b.txt (1) (pieces of text per file)", the first three files named."""
    named = ", ".join(f"{p} ({n})" for p, n in list(counts.items())[:3])
    return f"{named}{', ...' if len(counts) > 3 else ''} (pieces of text per file)"


def is_utf8(data: bytes) -> bool:
    """Whether ``data`` is valid UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
