"""Read the documents a corpus is built from: JSONL, DPR-style TSV and SQuAD JSON, plain or ``.gz``, and
REALM's ``block_records.npy``.

Every reader yields :class:`Document` objects in file order. Bad input raises :class:`InputError`,
whose message names the file, the line (or the JSON path for SQuAD files) and what was expected.

- JSONL: one object a line, ``{"id": str, "title": str, "text": str}``; ``text`` is required, ``title``
  defaults to empty, ``id`` to ``<file name>:<line>``.
- TSV (DPR's ``psgs_w100.tsv``): a header line ``id<TAB>text<TAB>title``, then one passage a line.
- SQuAD JSON: every paragraph ``context`` is a document titled with its article's title.
- ``realm-blocks``: REALM's released ``block_records.npy``; record i is a document with id ``"i"`` and no
  title, streamed (:mod:`realm_fairseq.data.realm_blocks`).
"""
import csv
import json
import logging
import os
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from realm_fairseq.data.input_files import Document, decode_utf8, jsonl_objects, open_binary, read_all, utf8_lines
from realm_fairseq.data.realm_blocks import read_realm_blocks
from realm_fairseq.errors import InputError

__all__ = ["FORMATS", "READERS", "Document", "InputError", "decode_utf8", "detect_format", "read_documents",
           "read_jsonl", "read_squad", "read_tsv", "resolve_formats"]

FORMATS = ("jsonl", "tsv", "squad", "realm-blocks")
DPR_HEADER = ["id", "text", "title"]

logger = logging.getLogger(__name__)


def _string_field(obj: dict, key: str, where: str, default=None) -> str:
    value = obj.get(key, default)
    if value is None:
        raise InputError(f"{where}: missing \"{key}\"; expected a string")
    if not isinstance(value, str):
        if key == "id" and isinstance(value, int):
            return str(value)
        raise InputError(f"{where}: \"{key}\" is {type(value).__name__}; expected a string")
    return value


def read_jsonl(path: str) -> Iterator[Document]:
    name = os.path.basename(path)
    for lineno, where, obj in jsonl_objects(path, "documents", '"id", "title", "text"'):
        yield Document(
            id=_string_field(obj, "id", where, default=f"{name}:{lineno}"),
            title=_string_field(obj, "title", where, default=""),
            text=_string_field(obj, "text", where),
        )


def _is_dpr_header(row: Optional[List[str]]) -> bool:
    return [h.strip().lower() for h in row or []] == DPR_HEADER


def _tsv_rows(path: str) -> Iterator[Tuple[int, List[str]]]:
    """(line, row) for each line of a TSV file; a quoted field must close on the line it opens on."""
    rows = csv.reader((line for _, line in utf8_lines(path)), delimiter="\t")
    while True:
        start = rows.line_num + 1
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as e:
            raise InputError(f"{path}, line {start}: {e}; expected one passage a line (an unterminated "
                             f"quote?)") from None
        if rows.line_num > start:
            raise InputError(f"{path}, line {start}: a quoted field opened on this line closes only on line "
                             f"{rows.line_num}; expected one passage a line (an unterminated quote?)")
        yield start, row


def read_tsv(path: str) -> Iterator[Document]:
    rows = _tsv_rows(path)
    _, header = next(rows, (1, None))
    if not _is_dpr_header(header):
        raise InputError(
            f"{path}, line 1: expected the DPR header 'id<TAB>text<TAB>title', found {header!r}"
        )
    for lineno, row in rows:
        if not row:
            continue
        if _is_dpr_header(row):
            logger.warning("%s, line %d: the DPR header again (files concatenated?); skipped", path, lineno)
            continue
        if len(row) != 3:
            raise InputError(
                f"{path}, line {lineno}: expected 3 tab-separated columns (id, text, title), found {len(row)}"
            )
        yield Document(id=row[0], title=row[2], text=row[1])


def read_squad(path: str) -> Iterator[Document]:
    raw = read_all(path)
    if not raw.strip():
        raise InputError(f"{path}: file is empty; expected SQuAD JSON")
    text = decode_utf8(path, raw)
    try:
        squad = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}, line {e.lineno}, column {e.colno}: invalid JSON ({e.msg})") from None
    articles = squad.get("data") if isinstance(squad, dict) else None
    if not isinstance(articles, list):
        raise InputError(f"{path}: expected SQuAD JSON, an object with a \"data\" list of articles")
    for i, article in enumerate(articles):
        where = f"{path}: data[{i}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise InputError(f"{where}: expected an article with a \"paragraphs\" list")
        title = _string_field(article, "title", where, default="")
        for j, paragraph in enumerate(article["paragraphs"]):
            pwhere = f"{where}.paragraphs[{j}]"
            if not isinstance(paragraph, dict):
                raise InputError(f"{pwhere}: expected an object with a \"context\"")
            yield Document(
                id=f"{title}#{j}",
                title=title.replace("_", " "),
                text=_string_field(paragraph, "context", pwhere),
            )


READERS: Dict[str, Callable[[str], Iterator[Document]]] = {
    "jsonl": read_jsonl,
    "tsv": read_tsv,
    "squad": read_squad,
    "realm-blocks": read_realm_blocks,
}


def detect_format(path: str) -> str:
    """The format of ``path`` from its name (.jsonl, .tsv, .json, each optionally .gz; .npy), else its
    content."""
    if path.endswith(".npy"):
        return "realm-blocks"
    name = path[:-3] if path.endswith(".gz") else path
    for suffix, fmt in ((".jsonl", "jsonl"), (".tsv", "tsv"), (".json", "squad")):
        if name.endswith(suffix):
            return fmt
    with open_binary(path) as f:
        head = f.read(65536).lstrip()
    first_line = head.split(b"\n", 1)[0]
    if not head:
        raise InputError(f"{path}: file is empty; expected documents")
    if first_line.startswith(b"{"):
        try:
            obj = json.loads(first_line)
        except ValueError:
            return "squad"  # a JSON document spread over lines
        return "squad" if isinstance(obj, dict) and "data" in obj and "text" not in obj else "jsonl"
    if b"\t" in first_line:
        return "tsv"
    raise InputError(
        f"{path}: cannot tell the format from the name or the first line; pass --format "
        f"({', '.join(FORMATS)})"
    )


def resolve_formats(paths: List[str], fmt: str = "auto") -> List[str]:
    """The format of each input: ``fmt`` itself, or detected per file when ``fmt`` is ``auto``."""
    if fmt != "auto" and fmt not in READERS:
        raise InputError(f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    for path in paths:
        if not os.path.isfile(path):
            raise InputError(f"{path}: file not found")
    return [detect_format(p) if fmt == "auto" else fmt for p in paths]


def read_documents(paths: List[str], formats: List[str]) -> Iterator[Tuple[int, Document]]:
    """(input index, document) for every document of every input, in order."""
    for k, (path, fmt) in enumerate(zip(paths, formats)):
        for doc in READERS[fmt](path):
            yield k, doc
