"""Token corpora for the language-model workload, none of which needs a download.

* ``stdlib``: the ``.py`` files of the running Python's standard library, in a fixed order
  (depth-first, files before sub-folders, names sorted; ``site-packages`` and caches skipped),
  truncated to ``corpus_bytes``. The content differs between Python versions, so the run
  records its SHA-256.
* ``text``: a user's UTF-8 file, or every non-hidden file under a directory in sorted order.
* ``bin``: nanoGPT-style ``train.bin`` and ``val.bin`` of little-endian uint16 token ids,
  memory-mapped so a multi-gigabyte corpus costs no RAM.

Text corpora are byte-level (vocabulary 256, one token per byte), so bits per byte is the loss
in bits. Every problem with a user corpus is a ``ValueError`` naming the setting.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def user_text_bytes(path: str, limit: int) -> bytes:
    """A UTF-8 file, or a directory's non-hidden files in sorted order, up to ``limit`` bytes."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"{_WHERE}.corpus_path: {path!r} does not exist")
    if p.is_file():
        files = [p]
    else:
        files = sorted(
            f for f in p.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
    chunks: list[bytes] = []
    total = 0
    for f in files:
        data = f.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{_WHERE}.corpus_path: {str(f)!r} is not UTF-8 text (byte {err.start}); "
                "pre-tokenised corpora need corpus = 'bin'"
            ) from None
        if not data:
            continue
        chunks.append(data[: limit - total])
        total += len(chunks[-1])
        if total >= limit:
            break
    if total == 0:
        raise ValueError(f"{_WHERE}.corpus_path: {path!r} holds no text (empty)")
    return b"".join(chunks)


def byte_corpus(data: bytes, val_fraction: float, context: int, source: str) -> Corpus:
    """Split bytes into train (head) and validation (tail) token arrays."""
    n_val = int(len(data) * val_fraction)
    if min(n_val, len(data) - n_val) < context + 1:
        raise ValueError(
            f"{_WHERE}.corpus_path: {source!r} has {len(data)} bytes, too few: with "
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


def bin_corpus(path: str, context: int) -> Corpus:
    """``train.bin`` and ``val.bin`` under directory ``path`` (uint16, nanoGPT layout)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ValueError(
            f"{_WHERE}.corpus_path: {path!r} is not a directory holding train.bin and val.bin"
        )
    arrays = {}
    h = hashlib.sha256()
    for split in ("train", "val"):
        f = p / f"{split}.bin"
        if not f.is_file():
            raise ValueError(f"{_WHERE}.corpus_path: {str(f)!r} is missing")
        size = f.stat().st_size
        if size % 2:
            raise ValueError(
                f"{_WHERE}.corpus_path: {str(f)!r} has {size} bytes, not a whole number of "
                "uint16 tokens (corrupt or not a token file)"
            )
        if size // 2 < context + 1:
            raise ValueError(
                f"{_WHERE}.corpus_path: {str(f)!r} has {size // 2} tokens; context {context} "
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
        source=str(p),
    )
