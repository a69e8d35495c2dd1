"""``realm-prepare-corpus INPUT... --vocab VOCAB.txt --out CORPUS``: raw documents -> a block corpus.

See :mod:`realm_fairseq.data.corpus_builder` for what CORPUS holds.

Job arrays: run ``--shard-id i --num-shards n`` for i = 0..n-1 (each writes CORPUS.shards/shard-I-of-N; a rerun
skips shards already written), then ``--merge --num-shards n`` to write CORPUS, byte-identical to a single run
(:mod:`realm_fairseq.data.corpus_shards`). ``python slurm/prepare_corpus.py`` submits both to Slurm.
"""
import argparse
import json
from typing import List, Optional, Tuple

from fairseq.dataclass.utils import gen_parser_from_dataclass

from realm_fairseq.cli import config_from_args, log_to_stderr
from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus
from realm_fairseq.errors import cli_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realm-prepare-corpus",
        description="Cut documents (JSONL {id,title,text}, DPR TSV id/text/title, SQuAD JSON; plain "
        "or .gz) into REALM retrieval blocks of BERT WordPieces, with pre-training examples and "
        "salient spans, as a fairseq dataset directory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="document files")
    parser.add_argument("--vocab", required=True, help="BERT uncased WordPiece vocab: a vocab.txt, a tokenizer.json, "
                                                       "or a Hugging Face model directory holding either")
    parser.add_argument("--out", required=True, help="CORPUS directory to create")
    gen_parser_from_dataclass(parser, CorpusConfig())
    return parser


def parse(argv: Optional[List[str]] = None) -> Tuple[argparse.Namespace, CorpusConfig]:
    """The command line's arguments and its :class:`CorpusConfig`."""
    args = build_parser().parse_args(argv)
    return args, config_from_args(CorpusConfig, args)


def run(argv: Optional[List[str]] = None) -> dict:
    """Prepare (a shard of, or merge) the CORPUS of a command line; returns its manifest (a shard's record).
    Errors are raised, not printed: what a job (:mod:`realm_fairseq.launch.prepare_corpus_job`) calls."""
    args, cfg = parse(argv)
    return prepare_corpus(args.inputs, args.vocab, args.out, cfg)


@cli_errors("realm-prepare-corpus")
def cli_main(argv: Optional[List[str]] = None) -> None:
    log_to_stderr()
    print(json.dumps(run(argv)["counts"], indent=2))


if __name__ == "__main__":
    cli_main()
