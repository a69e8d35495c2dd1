"""``realm-build-index --corpus CORPUS --checkpoint CKPT|--hf HF_DIR --out INDEX``: embed every block and
commit the MIPS index as version INDEX/vN. See :mod:`realm_fairseq.indexing.build`.

Job arrays: run ``--shard-id i --num-shards n`` for i = 0..n-1 (a rerun skips shards already written),
then ``--merge --num-shards n`` to commit the version.
"""
import argparse
import dataclasses
from typing import List, Optional

import torch

from realm_fairseq.cli import log_to_stderr
from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.errors import cli_errors
from realm_fairseq.models.similarity import POOLINGS, SCORES
from realm_fairseq.indexing.build import build_index
from realm_fairseq.indexing.embed import DTYPES
from realm_fairseq.models.loading import doc_embedder_from_bert, doc_embedder_from_checkpoint
from realm_fairseq.retrieval.mips import APPLIES, INDEX_TYPES, IndexOptions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realm-build-index",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--corpus", required=True, help="CORPUS directory from realm-prepare-corpus")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="fairseq checkpoint of a realm model (its doc_embedder)")
    source.add_argument("--hf", help="Hugging Face BERT or sentence-transformers directory, or realm-convert-hf "
                                     "weights file")
    parser.add_argument("--pooling", choices=POOLINGS, default=None,
                        help="pooling with --hf weights; default: the one they were trained with (mean for "
                             "MiniLM, cls for BERT)")
    parser.add_argument("--score", choices=SCORES, default=None,
                        help="the --retriever-score of the model that will use the index (cosine L2-normalises "
                             "the block embeddings); default: the checkpoint's own, or the one --hf weights were "
                             "trained with (cosine for MiniLM, dot for BERT)")
    parser.add_argument("--out", required=True, help="INDEX directory (versions v1, v2, ... inside)")
    parser.add_argument("--index-type", choices=INDEX_TYPES, default="flat", help="faiss index type")
    for f in dataclasses.fields(IndexOptions):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=None,
                            help=f"{f.metadata['help']} (default: {f.default})".replace("%", "%%"))
    parser.add_argument("--max-tokens", type=int, default=16384, help="tokens in an embedding batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="compute precision (default: bf16 on a GPU, fp32 on CPU)")
    parser.add_argument("--shard-id", type=int, default=0, help="shard to embed (with --num-shards)")
    parser.add_argument("--num-shards", type=int, default=1, help="shards the corpus is embedded in")
    parser.add_argument("--merge", action="store_true", help="commit the --num-shards written shards")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    return parser


def index_options(args: argparse.Namespace) -> dict:
    """The index options given on the command line, checked against ``--index-type``."""
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(IndexOptions)
               if getattr(args, f.name) is not None}
    takes = APPLIES[args.index_type]
    for name, value in options.items():
        flag = f"--{name.replace('_', '-')}"
        if name not in takes:
            listed = ", ".join(f"--{t.replace('_', '-')}" for t in takes) or "none"
            raise ValueError(f"{flag} does not apply to --index-type {args.index_type} (its options: {listed})")
        if value < 1:
            raise ValueError(f"{flag} {value}: expected a positive integer")
    return options


def check_args(args: argparse.Namespace) -> None:
    """Refuse options that cannot work before anything is loaded or embedded."""
    if args.num_shards < 1:
        raise ValueError(f"--num-shards {args.num_shards}: expected at least 1")
    if not 0 <= args.shard_id < args.num_shards:
        raise ValueError(f"--shard-id {args.shard_id} is not in 0..{args.num_shards - 1}")
    if args.merge and args.num_shards == 1:
        raise ValueError("--merge commits the shards of a sharded build: give their --num-shards (at least 2)")
    if args.max_tokens < 1:
        raise ValueError(f"--max-tokens {args.max_tokens}: expected a positive number of tokens")
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {args.device!r}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no GPU is visible to torch")


@cli_errors("realm-build-index")
def cli_main(argv: Optional[List[str]] = None) -> None:
    log_to_stderr()
    args = build_parser().parse_args(argv)
    check_args(args)
    options = index_options(args)
    corpus = BlockCorpus(args.corpus)
    source = (doc_embedder_from_checkpoint(args.checkpoint, corpus, score=args.score) if args.checkpoint
              else doc_embedder_from_bert(args.hf, corpus, args.pooling, args.score))
    dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    version = build_index(
        corpus, args.out, source, args.index_type, shard=(args.shard_id, args.num_shards), merge=args.merge,
        embed_options=dict(max_tokens=args.max_tokens, device=args.device, dtype=dtype,
                           progress=not args.no_progress),
        **options,
    )
    if version is not None:
        print(f"committed {args.out}/v{version}")


if __name__ == "__main__":
    cli_main()
