"""``realm-export-hf CHECKPOINT --out DIR``: a realm checkpoint's towers as Hugging Face directories.

The retriever's embedders become sentence-transformers models and the reader a transformers BERT
(:mod:`realm_fairseq.models.hf_export`), so that what REALM training learned serves outside fairseq.
"""
import argparse
from typing import List, Optional

from realm_fairseq.cli import log_to_stderr
from realm_fairseq.errors import cli_errors
from realm_fairseq.models.hf_export import export_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realm-export-hf",
        description="Export the towers of a realm checkpoint (realm_ict, realm_pretrain or realm_open_qa) as "
        "Hugging Face directories under --out: query_embedder/ and doc_embedder/ as sentence-transformers "
        "models (pooling, projection and normalisation as the checkpoint's retriever), reader/ as a "
        "BertForMaskedLM (pre-training's knowledge-augmented encoder with its masked-LM head), span_reader/ as "
        "a BertModel (the open-QA reader's encoder; its span head is not exported). Only towers on fairseq's "
        "transformer (BERT's layout) export. The output is written to a temporary directory and renamed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="realm checkpoint (.pt) from realm-train")
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--corpus", help="CORPUS whose vocab the checkpoint was trained with (default: the "
                                         "checkpoint's own)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    return parser


@cli_errors("realm-export-hf")
def cli_main(argv: Optional[List[str]] = None) -> None:
    log_to_stderr()
    args = build_parser().parse_args(argv)
    exported = export_checkpoint(args.checkpoint, args.out, corpus=args.corpus, force=args.force)
    for tower, kind in exported.towers.items():
        note = "" if tower == "query_embedder" else (
            f"; a block's title [SEP] now reads as the closing [SEP], whose row differed from it by at most "
            f"{exported.sep_row_difference[tower]:.2e}")
        print(f"wrote {exported.out}/{tower}: {kind}{note}")
    print(f"wrote {exported.out}/README.md: how to feed each one text")


if __name__ == "__main__":
    cli_main()
