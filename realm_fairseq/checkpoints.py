"""Checkpoint files written whole or not at all, read safely, and resumed from the newest intact one.

A checkpoint is written to a temporary file beside its name, flushed to disk and renamed over it
(:func:`save_state`, :func:`copy_atomically`): a kill at any moment leaves the old file or the new one,
and at worst a ``.NAME.tmp-*`` file that :func:`remove_unfinished` clears. Reading
(:func:`read_state`) first checks that the file is a whole torch archive (:func:`damage`, which reads
only its end), then loads it with ``weights_only=True``: tensors and plain containers, never code. A
damaged or refused file raises :class:`CheckpointError` naming the file and what is wrong with it.
:func:`newest_intact` picks the checkpoint to resume from when the last one is damaged.
"""
import os
import pickle
import shutil
import tempfile
import zipfile
from typing import List, Optional, Tuple

import torch

from realm_fairseq.atomic_io import fsync
from realm_fairseq.errors import InputError

TMP_INFIX = ".tmp-"
#: how a checkpoint of torch's legacy format (before torch 1.6, not a zip archive) starts: its magic number
LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


class CheckpointError(InputError):
    """A checkpoint file is damaged, is not a checkpoint, or holds what safe loading refuses."""


class _Writes:
    """A file's ``write``, keeping the OSError one raised: torch.save reports a full disk only as
    "unexpected pos"."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        self.f.flush()


def _write_file(f, write, path: str) -> None:
    """``write(f)``, flushed to disk; a failed write raises its OSError (full disk, ...) naming ``path``."""
    writes = _Writes(f)
    try:
        write(writes)
        f.flush()
        os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:
        error = writes.error or (e if isinstance(e, OSError) else None)
        if error is None:
            raise
        raise OSError(error.errno, error.strerror, path) from None


def _commit(path: str, write) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, flush it to disk, rename it to ``path``."""
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}{TMP_INFIX}", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_file(f, write, path)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    fsync(os.path.dirname(os.path.abspath(path)))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_state(state, path: str) -> None:
    """``torch.save(state)`` to ``path``, committed by rename."""
    _commit(path, lambda f: torch.save(state, f))


def copy_atomically(src: str, dst: str) -> None:
    """Copy ``src`` to ``dst``, committed by rename."""
    with open(src, "rb") as source:
        _commit(dst, lambda f: shutil.copyfileobj(source, f, 1 << 24))


def damage(path: str) -> Optional[str]:
    """Why ``path`` is not a whole torch checkpoint (truncated, empty, not a torch archive), or None.
    Reads the archive's directory at the end of the file, not the tensors; a file of torch's legacy format
    is left to loading to judge."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            if f.read(len(LEGACY_MAGIC)) == LEGACY_MAGIC:
                return None
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except FileNotFoundError:
        return "file not found"
    except (zipfile.BadZipFile, OSError) as e:
        return f"truncated or not a torch checkpoint ({e})"
    if not any(m.filename.endswith("/data.pkl") for m in members):
        return "a zip archive without data.pkl, not a torch checkpoint"
    if any(m.header_offset + m.compress_size > size for m in members):
        return "truncated (its records run past the end of the file)"
    return None


def read_state(path: str, mmap: bool = False):
    """What ``torch.save`` wrote to ``path``, loaded with ``weights_only=True`` onto the CPU; with ``mmap``
    its tensors are memory-mapped (read from the file when used; not for torch's legacy format)."""
    reason = damage(path)
    if reason is not None:
        raise CheckpointError(f"{path}: {reason}; expected a whole checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        if not str(e).startswith("Weights only load failed"):
            raise CheckpointError(f"{path}: damaged checkpoint ({_first_line(e)})") from None
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        refused = next((line for line in lines if "GLOBAL" in line), lines[min(1, len(lines) - 1)])
        raise CheckpointError(f"{path}: holds an object safe loading refuses ({refused}); only checkpoints "
                              f"of tensors and plain values load") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: damaged checkpoint ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def checkpoint_files(save_dir: str, suffix: str = "") -> List[str]:
    """The checkpoints fairseq writes in ``save_dir`` (``checkpoint*{suffix}.pt``), newest first."""
    try:
        names = os.listdir(save_dir)
    except FileNotFoundError:
        return []
    paths = [os.path.join(save_dir, n) for n in names if n.startswith("checkpoint") and n.endswith(f"{suffix}.pt")]
    return sorted(paths, key=os.path.getmtime, reverse=True)


def newest_intact(save_dir: str, suffix: str = "") -> Tuple[Optional[str], List[Tuple[str, str]]]:
    """The newest whole checkpoint of ``save_dir`` (or None), and the (path, reason) of each damaged one
    newer than it."""
    damaged = []
    for path in checkpoint_files(save_dir, suffix):
        reason = damage(path)
        if reason is None:
            return path, damaged
        damaged.append((path, reason))
    return None, damaged


def remove_unfinished(save_dir: str) -> List[str]:
    """Remove the temporary files a save killed mid-write left in ``save_dir``; returns their paths."""
    try:
        names = os.listdir(save_dir)
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        if name.startswith(".checkpoint") and TMP_INFIX in name:
            os.unlink(os.path.join(save_dir, name))
            removed.append(os.path.join(save_dir, name))
    return removed
