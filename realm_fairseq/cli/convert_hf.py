"""``realm-convert-hf HF_DIR --out WEIGHTS.pt``: a Hugging Face BERT checkpoint -> our encoder weights.

See :mod:`realm_fairseq.models.hf_convert` for the mapping and :mod:`realm_fairseq.models.similarity`
for the pooling and score recorded with the weights.
"""
import argparse
import sys
from typing import List, Optional

from realm_fairseq.data.documents import InputError
from realm_fairseq.models.hf_convert import convert_hf_bert, save_weights


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realm-convert-hf",
        description="Convert a Hugging Face BERT checkpoint directory (config.json, model.safetensors "
        "or pytorch_model.bin, vocab.txt), or a sentence-transformers directory of one, into encoder weights "
        "for realm-fairseq's models (--encoder-init) and for realm-build-index --hf. The weights record the "
        "pooling and score they were trained for: a sentence-transformers model's own (mean and cosine for "
        "MiniLM), REALM's cls and dot for plain BERT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("hf_dir", metavar="HF_DIR", help="Hugging Face BERT checkpoint directory")
    parser.add_argument("--out", required=True, help="weights file to write (.pt)")
    parser.add_argument("--force", action="store_true", help="replace an existing weights file")
    return parser


def cli_main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        weights = convert_hf_bert(args.hf_dir)
        save_weights(weights, args.out, force=args.force)
    except (InputError, FileExistsError) as e:
        sys.exit(f"realm-convert-hf: error: {e}")
    cfg, similarity = weights["config"], weights["retriever"]
    print(
        f"wrote {args.out}: {cfg['encoder_layers']} layers, hidden {cfg['encoder_embed_dim']}, "
        f"{cfg['encoder_attention_heads']} heads, vocab {len(weights['vocab'])} (md5 {weights['vocab_md5']}), "
        f"{similarity['pooling']} pooling, {similarity['score']} score"
    )


if __name__ == "__main__":
    cli_main()
