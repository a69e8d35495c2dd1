"""``realm-convert-hf HF_DIR... --out WEIGHTS.pt``: Hugging Face BERT or REALM checkpoints -> our weights.

A BERT checkpoint (or a sentence-transformers directory of one) becomes encoder weights for
``--encoder-init`` and ``realm-build-index --hf``, its masked-LM head included when it has one
(:mod:`realm_fairseq.models.hf_convert`). REALM's released checkpoints (``config.json`` with
``model_type: realm``; several may be converted into one file) become REALM weights for
``--retriever-init``/``--realm-init`` (:mod:`realm_fairseq.models.realm_hf`). With an open-QA checkpoint,
``--corpus CORPUS --index INDEX`` also commits its ``block_emb`` as a version of INDEX (CORPUS built from
its ``block_records.npy`` with ``realm-prepare-corpus --format realm-blocks``), and ``--qa-checkpoint
QA.pt`` writes a ``realm_open_qa`` checkpoint that ``realm-evaluate`` and ``realm-answer`` load. A
``realm-export-hf`` directory becomes the same kind of file holding the model it was exported from (for
``--realm-init``, ``--retriever-init`` and ``--hf``), and a sentence-transformers embedder with a head one
holding both towers (:mod:`realm_fairseq.models.st_import`).
"""
import argparse
import logging
import os
from typing import List, Optional

from realm_fairseq.cli import log_to_stderr
from realm_fairseq.errors import InputError, cli_errors
from realm_fairseq.models import realm_hf, st_import
from realm_fairseq.models.hf_convert import convert_hf_bert, save_weights
from realm_fairseq.retrieval.mips import DEFAULT_INDEX_TYPE, INDEX_TYPES

logger = logging.getLogger("realm-convert-hf")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realm-convert-hf",
        description="Convert a Hugging Face BERT checkpoint directory (config.json, model.safetensors "
        "or pytorch_model.bin, vocab.txt or tokenizer.json), or a sentence-transformers directory of one, into "
        "encoder weights for realm-fairseq's models (--encoder-init, with BERT's masked-LM head when it has one) "
        "and for realm-build-index --hf. The weights record the pooling and score they were trained for: a "
        "sentence-transformers model's own (mean and cosine for MiniLM), REALM's cls and dot for plain BERT. "
        "REALM's released checkpoints (google/realm-cc-news-pretrained-embedder, -encoder, -scorer, -openqa, "
        "google/realm-orqa-nq-openqa, ...) convert into REALM weights for --retriever-init/--realm-init; give "
        "several to convert them into one file. A realm-export-hf directory converts back into the model it was "
        "exported from (embedders with their heads, readers of their size with theirs) for --realm-init, "
        "--retriever-init and --hf; a sentence-transformers embedder with a head after the pooling (a Dense "
        "without activation or with tanh, its default; or Dense with tanh, Dense, LayerNorm: REALM's) into both "
        "towers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("hf_dirs", nargs="+", metavar="HF_DIR",
                        help="Hugging Face BERT checkpoint directory, sentence-transformers directory, "
                             "realm-export-hf directory, or REALM checkpoint directories")
    parser.add_argument("--out", required=True, help="weights file to write (.pt)")
    parser.add_argument("--force", action="store_true", help="replace existing output files")
    qa = parser.add_argument_group("REALM open-QA checkpoints (*-openqa)")
    qa.add_argument("--corpus", help="CORPUS built from the checkpoint's block_records.npy (realm-prepare-corpus "
                                     "block_records.npy --format realm-blocks)")
    qa.add_argument("--index", help="INDEX directory: commit the checkpoint's block_emb as its next version "
                                    "(no re-embedding); needs --corpus")
    qa.add_argument("--index-type", choices=INDEX_TYPES, default=DEFAULT_INDEX_TYPE,
                    help="faiss index type for --index (default: %(default)s)")
    qa.add_argument("--qa-checkpoint", metavar="QA.pt",
                    help="also write a realm_open_qa checkpoint of the converted model over --corpus and "
                         "--index, for realm-evaluate and realm-answer")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    return parser


def _check_args(args: argparse.Namespace, is_realm: bool) -> None:
    if not is_realm and len(args.hf_dirs) > 1:
        raise InputError(f"{args.hf_dirs[0]} is a BERT checkpoint: convert one BERT at a time (several "
                         f"directories convert together only when all are REALM checkpoints)")
    if (args.index or args.qa_checkpoint) and not is_realm:
        raise InputError("--index and --qa-checkpoint take REALM open-QA checkpoints")
    if (args.index or args.qa_checkpoint) and not args.corpus:
        raise InputError("--index and --qa-checkpoint need --corpus, the CORPUS of the checkpoint's blocks")
    if args.qa_checkpoint and not args.index:
        raise InputError("--qa-checkpoint needs --index, the INDEX its block_emb is (or was) committed to")
    for path in [args.out] + ([args.qa_checkpoint] if args.qa_checkpoint else []):
        if os.path.lexists(path) and not args.force:
            raise FileExistsError(f"{path} already exists; pass --force to replace it")


def convert_bert(args: argparse.Namespace) -> None:
    weights = convert_hf_bert(args.hf_dirs[0])
    save_weights(weights, args.out, force=args.force)
    cfg, similarity = weights["config"], weights["retriever"]
    print(
        f"wrote {args.out}: {cfg['encoder_layers']} layers, hidden {cfg['encoder_embed_dim']}, "
        f"{cfg['encoder_attention_heads']} heads, vocab {len(weights['vocab'])} (md5 {weights['vocab_md5']}), "
        f"{similarity['pooling']} pooling, {similarity['score']} score, "
        f"{'with' if 'lm_head' in weights else 'no'} masked-LM head, {cfg['activation_fn']}"
    )


def convert_export(args: argparse.Namespace) -> None:
    source = args.hf_dirs[0]
    weights = st_import.convert_towers(source)
    realm_hf.save_realm_weights(weights, args.out, force=args.force)
    readers = [r for r in st_import.READERS if r in weights["parts"]]
    use = "--realm-init, --retriever-init and --hf" if readers else "--retriever-init and --hf"
    print(f"wrote {args.out}: weights for {use}; {st_import.describe_towers(weights)}")
    for reader in st_import.READERS:
        if os.path.isdir(os.path.join(source, reader)) and reader not in readers:
            print(f"{source}/{reader} is left out (not of the embedders' size, or without its head); it converts "
                  f"apart, for --reader-init: realm-convert-hf {source}/{reader} --out {reader.upper()}.pt")


def import_index(args: argparse.Namespace, block_emb) -> None:
    from realm_fairseq.data.corpus import BlockCorpus
    from realm_fairseq.data.realm_blocks import check_corpus_for
    from realm_fairseq.indexing.block_emb import import_block_emb

    openqa = next(d for d in args.hf_dirs if realm_hf.hf_dir_kind(d))
    if block_emb is None:
        raise InputError(f"{', '.join(args.hf_dirs)}: no block_emb (only REALM's *-openqa checkpoints have one); "
                         f"--index needs it")
    corpus = BlockCorpus(args.corpus)
    check_corpus_for(corpus, os.path.join(openqa, "block_records.npy"), block_emb.shape[0], "block_emb")
    version = import_block_emb(block_emb, corpus, args.index, openqa, args.index_type,
                               progress=not args.no_progress)
    print(f"committed {args.index}/v{version}: {block_emb.shape[0]} REALM block embeddings of dimension "
          f"{block_emb.shape[1]}, {args.index_type} index")


def convert_realm(args: argparse.Namespace) -> None:
    weights, block_emb = realm_hf.convert_realm(args.hf_dirs)
    if args.index:
        import_index(args, block_emb)
    realm_hf.save_realm_weights(weights, args.out, force=args.force)
    print(f"wrote {args.out}: REALM weights, {realm_hf.describe(weights)}")
    if args.qa_checkpoint:
        from realm_fairseq.cli.qa_checkpoint import write_open_qa_checkpoint

        write_open_qa_checkpoint(args.out, args.corpus, args.index, args.qa_checkpoint, force=args.force)
        print(f"wrote {args.qa_checkpoint}: realm_open_qa checkpoint over {args.corpus} and {args.index}")


@cli_errors("realm-convert-hf")
def cli_main(argv: Optional[List[str]] = None) -> None:
    log_to_stderr()
    args = build_parser().parse_args(argv)
    kinds = [realm_hf.hf_dir_kind(d) for d in args.hf_dirs]
    if any(kinds) and not all(kinds):
        raise InputError(f"{args.hf_dirs[kinds.index(None)]}: not a REALM checkpoint, unlike "
                         f"{args.hf_dirs[kinds.index('realm')]}; convert BERT and REALM checkpoints apart")
    _check_args(args, is_realm=all(kinds))
    if all(kinds):
        convert_realm(args)
    elif st_import.is_retriever_dir(args.hf_dirs[0]):
        convert_export(args)
    else:
        convert_bert(args)


if __name__ == "__main__":
    cli_main()
