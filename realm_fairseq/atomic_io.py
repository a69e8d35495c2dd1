"""Write outputs so that nothing is ever half-written: build in a temporary directory, then rename.

Used for every directory a command produces (a CORPUS, an index version): a reader either sees the
complete result or nothing at all, and an interrupted run never damages what was there before.
"""
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator, Optional

logger = logging.getLogger(__name__)


def check_writable_target(path: str, force: bool) -> None:
    """Raise ``FileExistsError`` if ``path`` exists and ``force`` is not set."""
    if os.path.lexists(path) and not force:
        raise FileExistsError(f"{path} already exists; pass --force to replace it")


@contextmanager
def atomic_directory(path: str, force: bool = False) -> Iterator[str]:
    """Yield a fresh temporary directory beside ``path``; rename it to ``path`` when the block succeeds.

    On an exception the temporary directory is removed and ``path`` is left as it was. With ``force``
    an existing ``path`` is replaced only after the new one is complete.
    """
    path = os.path.abspath(path)
    check_writable_target(path, force)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    make_public(tmp, 0o777)  # mkdtemp makes it private; the result should not be
    logger.info("writing to %s (renamed to %s when complete)", tmp, path)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    check_writable_target(path, force)
    if os.path.lexists(path):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
        os.rename(path, os.path.join(old, "replaced"))
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, path)


@contextmanager
def atomic_file(path: str, force: bool = False) -> Iterator[str]:
    """Yield a temporary file path beside ``path``; when the block succeeds, flush it to disk and rename it
    to ``path`` (a crash leaves the old file or the complete new one, never a half-written one)."""
    path = os.path.abspath(path)
    check_writable_target(path, force)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=os.path.dirname(path))
    os.close(fd)
    try:
        yield tmp
        fsync(tmp)
    except BaseException:
        os.unlink(tmp)
        raise
    make_public(tmp, 0o666)
    os.replace(tmp, path)
    fsync(os.path.dirname(path))


def write_json(path: str, obj) -> None:
    """``obj`` as indented JSON and a final newline (a manifest or record inside a directory being written)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def fsync(path: str) -> None:
    """Flush a file, or a directory's list of entries, to disk (before and after it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_public(path: str, mode: int) -> None:
    """Give ``path`` the permissions a normally created file or directory would have (``mode`` & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def sha256_files(*paths: str) -> str:
    """SHA-256 of the concatenated bytes of ``paths``."""
    digest = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


# what a failed write is called in the messages of commands and of the index refresher
FAULTS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
          errno.EPERM: "permission denied", errno.EROFS: "read-only file system"}


def os_error_in(error: BaseException) -> Optional[OSError]:
    """The OSError behind ``error``: itself, or one it was raised from or while handling (torch and faiss
    wrap a failed write in a RuntimeError), or one a library's message names by its ``strerror``."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen
        seen = seen.__cause__ or seen.__context__
    for code in FAULTS:
        if f"({os.strerror(code)})" in str(error) or str(error).endswith(os.strerror(code)):
            return OSError(code, os.strerror(code))
    return None


def describe_fault(error: BaseException) -> str:
    """One line naming what went wrong: ``disk full (No space left on device): PATH`` for a failed write,
    else the exception's type and message."""
    os_error = os_error_in(error)
    if os_error is None:
        return f"{type(error).__name__}: {error}"
    words = FAULTS.get(os_error.errno, os_error.strerror)
    detail = f" ({os_error.strerror})" if words != os_error.strerror else ""
    where = f": {os_error.filename}" if os_error.filename else ""
    return f"{words}{detail}{where}"


@contextmanager
def write_faults_named(path: str) -> Iterator[None]:
    """Re-raise a write that fails inside the block as an OSError naming ``path`` (torch and faiss report a
    full disk as a RuntimeError such as ``unexpected pos 64 vs 0``, and Python's own writes name no file)."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        os_error = os_error_in(e)
        if os_error is None or (isinstance(e, OSError) and e.filename):
            raise
        raise OSError(os_error.errno, os_error.strerror, path) from e
