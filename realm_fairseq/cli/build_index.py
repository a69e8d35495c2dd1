"""``realm-build-index --corpus CORPUS --checkpoint CKPT|--hf HF_DIR --out INDEX``: embed every block and
commit the MIPS index as version INDEX/vN. A thin parser: the build is
:func:`realm_fairseq.indexing.build.run_build`, which every index refresh calls too.

Job arrays: run ``--shard-id i --num-shards n`` for i = 0..n-1 (a rerun skips shards already written),
then ``--merge --num-shards n`` to commit the version.
"""
import argparse
import dataclasses
from typing import List, Optional

import torch

from realm_fairseq.cli import log_to_stderr
from realm_fairseq.errors import cli_errors
from realm_fairseq.indexing.build import BuildRequest, run_build
from realm_fairseq.indexing.embed import DTYPES
from realm_fairseq.models.similarity import POOLINGS, SCORES
from realm_fairseq.retrieval.mips import DEFAULT_INDEX_TYPE, INDEX_TYPES, IndexOptions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realm-build-index",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--corpus", required=True, help="CORPUS directory from realm-prepare-corpus")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="fairseq checkpoint of a realm model (its doc_embedder)")
    source.add_argument("--hf", help="Hugging Face BERT or sentence-transformers directory (with or without a "
                                     "head), realm-export-hf directory, or realm-convert-hf weights file")
    parser.add_argument("--pooling", choices=POOLINGS, default=None,
                        help="pooling with --hf weights; default: the one they were trained with (mean for "
                             "MiniLM, cls for BERT)")
    parser.add_argument("--score", choices=SCORES, default=None,
                        help="the --retriever-score of the model that will use the index (cosine L2-normalises "
                             "the block embeddings); default: the checkpoint's own, or the one --hf weights were "
                             "trained with (cosine for MiniLM, dot for BERT)")
    parser.add_argument("--out", required=True, help="INDEX directory (versions v1, v2, ... inside)")
    parser.add_argument("--index-type", choices=INDEX_TYPES, default=DEFAULT_INDEX_TYPE,
                        help="faiss index type (default: %(default)s)")
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


def build_request(args: argparse.Namespace) -> BuildRequest:
    """The build the command line asks for."""
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(IndexOptions)
               if getattr(args, f.name) is not None}
    return BuildRequest(corpus=args.corpus, out=args.out, checkpoint=args.checkpoint, hf=args.hf,
                        pooling=args.pooling, score=args.score, index_type=args.index_type, index_options=options,
                        max_tokens=args.max_tokens, device=args.device, dtype=args.dtype, shard_id=args.shard_id,
                        num_shards=args.num_shards, merge=args.merge, progress=not args.no_progress)


@cli_errors("realm-build-index")
def cli_main(argv: Optional[List[str]] = None) -> None:
    log_to_stderr()
    args = build_parser().parse_args(argv)
    version = run_build(build_request(args))
    if version is not None:
        print(f"committed {args.out}/v{version}")


if __name__ == "__main__":
    cli_main()
