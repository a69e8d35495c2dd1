#!/usr/bin/env python3
"""Submit a command line to Slurm through submitit: training, or corpus preparation as a job array.

    python slurm/submit.py --nodes 2 --gpus-per-node 8 --time 1440 -- realm-train CORPUS --task realm_pretrain ...
    python slurm/submit.py --cpus-per-task 16 --mem 32G -- realm-prepare-corpus docs.jsonl.gz --vocab V \
        --out CORPUS --num-shards 64

Slurm options first (``--help`` lists them with their defaults), then the command. A ``realm-train`` /
``fairseq-train`` command runs as one training job (:mod:`realm_fairseq.launch.submit`: resources, requeue,
the function to call from Python); a ``realm-prepare-corpus`` command runs as an array of one task a shard
and a merge job (:mod:`realm_fairseq.launch.prepare_corpus_job`, also ``python slurm/prepare_corpus.py``).
"""
import os
import sys

from realm_fairseq.launch import prepare_corpus_job, submit

PREPARE = "realm-prepare-corpus"


def command_of(argv):
    """The command line after ``--``, else from the first word naming a command of ours or fairseq's."""
    if "--" in argv:
        return argv[argv.index("--") + 1:]
    starts = [i for i, word in enumerate(argv) if os.path.basename(word).startswith(("realm-", "fairseq-"))]
    return argv[starts[0]:] if starts else []


if __name__ == "__main__":
    words = command_of(sys.argv[1:])
    is_prepare = bool(words) and os.path.basename(words[0]) == PREPARE
    (prepare_corpus_job if is_prepare else submit).cli_main(sys.argv[1:])
