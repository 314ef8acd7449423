"""Token corpora for the language-model workload, none of which needs a download.

* ``stdlib``: the ``.py`` files of the running Python's standard library, in a fixed order
  (depth-first, files before sub-folders, names sorted; ``site-packages`` and caches skipped),
  truncated to ``corpus_bytes``. The content differs between Python versions, so the run
  records its SHA-256.
* ``text``: a user's UTF-8 file, or every non-hidden file under a directory in sorted order.
* ``bin``: nanoGPT-style ``train.bin`` and ``val.bin`` of little-endian uint16 token ids,
  memory-mapped so a multi-gigabyte corpus costs no RAM.

User corpora come only from the operator's data folder (``APPROXIMANT_FILES_DIR``, see
``engine/files.py``); paths are resolved there before any reader here sees them, and every
file read is checked again to lie inside it (a link in the folder may point out of it).

Text corpora are byte-level (vocabulary 256, one token per byte), so bits per byte is the loss
in bits. Every problem with a user corpus is a ``ValueError`` naming the setting.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from approximant.engine.errors import short
from approximant.engine.files import ENV, display_path, inside_data_folder

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_WHERE = "workload.settings"


@dataclass(frozen=True)
class Corpus:
    """Token ids as 1-D numpy arrays (uint8 for bytes, uint16 memmaps for ``.bin``)."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    bytes_per_token: float | None  # None when unknown (pre-tokenised corpora)
    fingerprint: str
    source: str


def stdlib_bytes(limit: int) -> bytes:
    """The first ``limit`` bytes of the standard library's ``.py`` files in the fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks: list[bytes] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place makes os.walk visit sub-folders in sorted order and skip the rest.
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            data = (Path(dirpath) / name).read_bytes() + b"\n"
            chunks.append(data[: limit - total])
            total += len(chunks[-1])
            if total >= limit:
                return b"".join(chunks)
    return b"".join(chunks)


def _inside(f: Path, field: str) -> Path:
    """``f`` resolved, refused unless it is still inside the data folder: a link in the folder
    must not lead a reader out of it."""
    real = Path(os.path.realpath(f))
    if not inside_data_folder(real):
        raise ValueError(f"{field}: {short(display_path(f))} leads outside the data folder "
                         f"({ENV})")
    return real


def _utf8_prefix_ok(data: bytes, complete: bool) -> int | None:
    """The offset of the first byte that is not UTF-8, or None. A chunk cut at the byte
    limit may end inside a character; that tail is not an error."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=complete)
    except UnicodeDecodeError as err:
        return err.start
    return None


# The most entries (files and folders) a text corpus folder may hold along the way to its
# ``corpus_bytes``: each folder's listing is sorted, so one with millions of files would stall
# the worker before it read a byte.
MAX_FOLDER_ENTRIES = 100_000


def _folder_files(root: Path, field: str, shown: str) -> Iterator[Path]:
    """The non-hidden files under ``root`` in sorted path order (what ``sorted(rglob)`` gives:
    names compared folder by folder; links to folders not followed), listed lazily, so that a
    reader that has its bytes stops the walk; refused past ``MAX_FOLDER_ENTRIES`` entries."""
    seen = 0

    def walk(folder: Path) -> Iterator[Path]:
        nonlocal seen
        entries = []
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    seen += 1
                    if seen > MAX_FOLDER_ENTRIES:
                        raise ValueError(
                            f"{field}: {short(shown)} holds more than {MAX_FOLDER_ENTRIES} "
                            "files and folders; name a smaller folder or one file")
                    if not entry.name.startswith("."):
                        entries.append(entry)
        except OSError as err:
            raise ValueError(f"{field}: {short(display_path(folder))} cannot be listed "
                             f"({err.strerror})") from None
        for entry in sorted(entries, key=lambda e: e.name):
            path = folder / entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from walk(path)
            elif entry.is_file():
                yield path

    return walk(root)


def user_text_bytes(path: Path, limit: int, shown: str | None = None) -> bytes:
    """A UTF-8 file, or a directory's non-hidden files in sorted order, up to ``limit`` bytes.

    ``path`` is resolved inside the data folder (``engine.files.resolve_data_file``); every
    file read is checked to be there too. ``shown`` is how messages name it.
    """
    field = f"{_WHERE}.corpus_path"
    p = Path(path)
    shown = shown if shown is not None else display_path(p)
    if not p.exists():
        raise ValueError(f"{field}: {short(shown)} is not in the data folder ({ENV})")
    if p.is_file():
        files: Iterable[Path] = [p]
    elif p.is_dir():
        files = _folder_files(p, field, shown)
    else:
        raise ValueError(f"{field}: {short(shown)} is neither a file nor a folder")
    chunks: list[bytes] = []
    total = 0
    for f in files:
        real = _inside(f, field)
        try:
            with real.open("rb") as fh:
                # Read no more than is used: a many-gigabyte file costs only the limit.
                data = fh.read(limit - total)
                complete = not fh.read(1)
        except OSError as err:
            raise ValueError(f"{field}: {short(display_path(f))} cannot be read "
                             f"({err.strerror})") from None
        bad = _utf8_prefix_ok(data, complete)
        if bad is not None:
            raise ValueError(
                f"{field}: {short(display_path(f))} is not UTF-8 text (byte {bad}); "
                "pre-tokenised corpora need corpus = 'bin'"
            )
        if not data:
            continue
        chunks.append(data)
        total += len(data)
        if total >= limit:
            break
    if total == 0:
        raise ValueError(f"{field}: {short(shown)} holds no text (empty)")
    return b"".join(chunks)


def byte_corpus(data: bytes, val_fraction: float, context: int, source: str) -> Corpus:
    """Split bytes into train (head) and validation (tail) token arrays."""
    n_val = int(len(data) * val_fraction)
    if min(n_val, len(data) - n_val) < context + 1:
        raise ValueError(
            f"{_WHERE}.corpus_path: {short(source)} has {len(data)} bytes, too few: with "
            f"val_fraction {val_fraction} each split needs at least context + 1 = {context + 1}"
        )
    tokens = np.frombuffer(data, dtype=np.uint8)
    return Corpus(
        train=tokens[: len(data) - n_val],
        val=tokens[len(data) - n_val:],
        vocab_size=256,
        bytes_per_token=1.0,
        fingerprint="sha256:" + hashlib.sha256(data).hexdigest(),
        source=source,
    )


def bin_corpus(path: Path, context: int, shown: str | None = None) -> Corpus:
    """``train.bin`` and ``val.bin`` under directory ``path`` (uint16, nanoGPT layout).

    ``path`` is resolved inside the data folder; both files are checked to be there too.
    """
    field = f"{_WHERE}.corpus_path"
    p = Path(path)
    shown = shown if shown is not None else display_path(p)
    if not p.is_dir():
        raise ValueError(
            f"{field}: {short(shown)} is not a folder holding train.bin and val.bin in the "
            f"data folder ({ENV})"
        )
    arrays = {}
    h = hashlib.sha256()
    for split in ("train", "val"):
        f = p / f"{split}.bin"
        name = short(f"{shown.rstrip('/')}/{split}.bin")
        if not f.is_file():
            raise ValueError(f"{field}: {name} is missing")
        f = _inside(f, field)
        size = f.stat().st_size
        if size % 2:
            raise ValueError(
                f"{field}: {name} has {size} bytes, not a whole number of "
                "uint16 tokens (corrupt or not a token file)"
            )
        if size // 2 < context + 1:
            raise ValueError(
                f"{field}: {name} has {size // 2} tokens; context {context} "
                f"needs at least {context + 1}"
            )
        arrays[split] = np.memmap(f, dtype="<u2", mode="r")
        # Hashing a many-gigabyte file would stall every run start: fingerprint the size and
        # both ends instead, which catches a swapped or truncated file.
        with f.open("rb") as fh:
            h.update(f"{split}:{size}:".encode())
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return Corpus(
        train=arrays["train"],
        val=arrays["val"],
        vocab_size=0,  # set by the workload's vocab_size setting
        bytes_per_token=None,
        fingerprint="ends-sha256:" + h.hexdigest(),
        source=shown,
    )
