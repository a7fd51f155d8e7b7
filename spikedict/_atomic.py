"""Atomic file writes: a temporary file in the target's folder, flushed to disk, then renamed onto the target.

A crash, a kill or an exception while writing leaves the previous file (or none) under the final name, never a
truncated one: ``os.replace`` within one folder is atomic on POSIX and Windows. Every file that spikedict writes
and a later run reads (checkpoints, models, templates, settings, recordings) goes through :func:`atomic_path`.

Examples
--------
>>> import pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
>>> with atomic_path(path) as temporary:
...     _ = temporary.write_text("complete")
>>> path.read_text(), sorted(p.name for p in path.parent.iterdir())
('complete', ['notes.txt'])
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_bytes_atomic", "write_text_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without error it replaces ``path``.

    The temporary file exists (empty) when the block starts, is hidden (its name starts with a dot) and ends with
    the suffix of ``path``, so writers that pick the format from the extension, or append one when it is missing
    (``numpy.savez``, ``scipy.io.savemat``, PIL), write the same file as they would at ``path``. A writer that
    refuses existing files may delete it first. It has the permissions of a plain new file (``0o666`` less the
    umask). After the block the file is flushed to disk (``fsync``) and renamed onto ``path``; if the block raises
    (including ``KeyboardInterrupt``) it is deleted and ``path`` is left as it was.

    The folder of ``path`` must exist.
    """
    path = Path(path)
    temporary = _create_temporary(path)
    try:
        yield temporary
        descriptor = os.open(temporary, os.O_RDWR)  # Windows flushes only files open for writing
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _create_temporary(path: Path) -> Path:
    """A new empty file ``.STEM-RANDOM.tmpSUFFIX`` next to ``path``, with the permissions of a plain new file.

    Unlike ``tempfile.mkstemp`` (owner-only permissions), the file gets ``0o666`` less the process umask, as
    ``open(path, "w")`` would, without touching the umask (which is process-wide).
    """
    for _ in range(100):
        candidate = path.parent / f".{path.stem}-{secrets.token_hex(4)}.tmp{path.suffix}"
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not create a temporary file next to {str(path)!r}.")  # pragma: no cover


def _sync_folder(folder: Path) -> None:
    """Flush the rename to disk where the system allows opening a folder (POSIX); elsewhere do nothing."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return ``Path(path)``."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically and return ``Path(path)``."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding=encoding)
    return Path(path)
