#!/usr/bin/env python3
"""Submit a realm-train / fairseq-train command line to Slurm through submitit.

    python slurm/submit.py --nodes 2 --gpus-per-node 8 --time 1440 -- realm-train CORPUS --task realm_pretrain ...

Slurm options first (``--help`` lists them with their defaults), then the training command. The
resources, the requeue logic and the function to call from Python are in
:mod:`realm_fairseq.launch.submit`.
"""
from realm_fairseq.launch.submit import cli_main

if __name__ == "__main__":
    cli_main()
