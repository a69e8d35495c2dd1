"""An Inverse Cloze Task step (REALM section 3.4, ORQA) against its parts measured alone, in the same run.

    python bench/ict_step.py [--arch realm_tiny] [--batch-size 64] [--steps 10] [--device cpu]
                             [--dtype fp32|bf16]

The step is the realm_ict criterion's forward and backward on a batch of pseudo-queries and their blocks
from the shipped Wikipedia corpus (blocks of up to 288 wordpieces, queries of up to 64), as ``realm-train
--task realm_ict`` trains the retriever. Its parts, each timed alone on the same batches: query embedding
(forward + backward) and block embedding (forward + backward). Overhead = step / sum of the parts (goal <=
1.15: the in-batch scores and softmax cost almost nothing). The optimizer's update is not timed, nor, on
one process, the all-gather of the blocks that data-parallel training adds. ORQA's batch of 4,096 on 64
GPUs is 64 a GPU, the default here; the hours for 100k such steps are printed for the paper-scale table.
"""
import argparse
import shutil
import tempfile

import numpy as np

from goals import info_line  # bench/goals.py (this script's directory)
from pretrain_step import (build_model, criterion_step, print_parts, sample_batches, shipped_corpus,  # bench/
                           step_parser, timed)

ORQA_STEPS = 100_000  # ORQA's ICT pre-training, which REALM's warm start follows


def main():
    parser = step_parser(__doc__, batch_size=64, topk=0, batch_help="pseudo-queries a step")
    args = parser.parse_args()

    import realm_fairseq  # noqa: F401  (registers the task, model and criterion)
    from realm_fairseq.criterions.realm_ict import RealmIctCriterion
    from realm_fairseq.data.ict_dataset import IctDataset

    tmp = tempfile.mkdtemp(prefix="bench-ict-")
    corpus = shipped_corpus(tmp)
    device = args.device
    model = build_model(args.arch, corpus, device, args.dtype, reader=False)
    criterion = RealmIctCriterion(argparse.Namespace(source_dictionary=corpus.dictionary))
    ds = IctDataset(corpus, np.arange(len(corpus)), query_max_len=64, keep_sentence_prob=0.1, seed=1)
    if len(ds) < args.batch_size:
        raise SystemExit(f"--batch-size {args.batch_size}: the shipped corpus has {len(ds)} blocks with a sentence")
    batches = sample_batches(ds, args.steps, args.batch_size, device)
    step = criterion_step(model, criterion)

    def part(embed, key):
        def run(batch):
            model.zero_grad()
            embed(batch["net_input"][key]).sum().backward()
        return run

    parts = {"query embedding": timed(part(model.embed_queries, "query_tokens"), batches, device),
             "block embedding": timed(part(model.embed_blocks, "block_tokens"), batches, device)}
    total = timed(step, batches, device)
    shutil.rmtree(tmp, ignore_errors=True)

    block_len = np.mean([b["net_input"]["block_tokens"].shape[1] for b in batches])
    print(f"\n{args.arch}, batch {args.batch_size} (blocks padded to {block_len:.0f} wordpieces on average), "
          f"{device} {args.dtype}, median of {args.steps} steps")
    print_parts(parts, "ICT step", total)
    print(info_line(f"hours for {ORQA_STEPS:,} such steps", total * ORQA_STEPS / 3600,
                    "forward and backward only: no optimizer update, no all-gather", digits=1))


if __name__ == "__main__":
    main()
