#!/usr/bin/env python3
"""Prepare a CORPUS as a Slurm job array through submitit: one task per shard, then the merge job.

    python slurm/prepare_corpus.py --cpus-per-task 16 --mem 32G -- \
        realm-prepare-corpus enwiki.jsonl.gz --vocab vocab.txt --out CORPUS --num-shards 64

Slurm options first (``--help`` lists them with their defaults), then the realm-prepare-corpus command with its
``--num-shards``. See :mod:`realm_fairseq.launch.prepare_corpus_job`; ``slurm/prepare_corpus.sbatch`` does the
same with plain sbatch.
"""
from realm_fairseq.launch.prepare_corpus_job import cli_main

if __name__ == "__main__":
    cli_main()
