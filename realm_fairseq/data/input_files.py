"""What every reader of input files shares: the :class:`Document` record, and reading UTF-8 files, plain or
``.gz``, whose errors (:class:`~realm_fairseq.errors.InputError`) name the file, the line and the byte.

The document readers (:mod:`realm_fairseq.data.documents`, :mod:`realm_fairseq.data.realm_blocks`), question
files (:mod:`realm_fairseq.data.questions`) and vocabularies (:mod:`realm_fairseq.data.vocab`) build on it;
it imports none of them, so that the document formats can be registered in ``documents`` next to their
readers without an import cycle.
"""
import gzip
import json
from dataclasses import dataclass
from typing import Iterator, Tuple

from realm_fairseq.errors import InputError


@dataclass
class Document:
    """One document a CORPUS is built from (its blocks keep ``title``; REALM, section 4.3)."""

    id: str
    title: str
    text: str


def open_binary(path: str):
    """``path`` opened for reading bytes, through gzip if its name ends in ``.gz``."""
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_all(path: str) -> bytes:
    """The bytes of ``path`` (uncompressed); an :class:`InputError` if it is missing or unreadable."""
    try:
        with open_binary(path) as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, EOFError) as e:  # a corrupt or truncated .gz
        raise InputError(f"{path}: cannot read ({e})") from None


def decode_utf8(path: str, raw: bytes, first_line: int = 1) -> str:
    """``raw`` (the bytes of ``path`` from line ``first_line`` on) as text; invalid UTF-8 raises an
    :class:`InputError` naming the line and byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + raw.count(b"\n", 0, e.start)
        byte = e.start - raw.rfind(b"\n", 0, e.start)
        raise InputError(
            f"{path}, line {line}, byte {byte}: invalid UTF-8 ({raw[e.start:e.start + 1]!r}); "
            f"expected UTF-8 text"
        ) from None


def utf8_lines(path: str, expected: str = "documents") -> Iterator[Tuple[int, str]]:
    """(line number, decoded line) pairs; raises for an empty file (which should hold ``expected``) and for
    non-UTF-8 bytes."""
    empty = True
    try:
        with open_binary(path) as f:
            for lineno, raw in enumerate(f, start=1):
                empty = False
                yield lineno, decode_utf8(path, raw, first_line=lineno)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, EOFError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    if empty:
        raise InputError(f"{path}: file is empty; expected {expected}")


def jsonl_objects(path: str, expected: str, fields: str) -> Iterator[Tuple[int, str, dict]]:
    """(line number, ``"PATH, line N"``, object) for each non-blank line of a JSON-lines file of ``expected``
    (e.g. "questions"); a line that is not a JSON object raises an :class:`InputError` naming it and the
    ``fields`` an object should have."""
    for lineno, line in utf8_lines(path, expected):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}, column {e.colno}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object {{{fields}}}")
        yield lineno, where, obj
