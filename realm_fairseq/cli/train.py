"""``realm-train`` and ``realm-hydra-train``: fairseq's own trainers with this plugin loaded.

They import the plugin (registering its tasks, models and criterions) and point fairseq's
``user_dir`` at the installed package, so that processes fairseq spawns for distributed training load
the plugin too; then they hand over to ``fairseq-train`` / ``fairseq-hydra-train`` unchanged.
"""
import os
import sys
from typing import List

import realm_fairseq

PLUGIN_DIR = os.path.dirname(os.path.abspath(realm_fairseq.__file__))


def with_user_dir(argv: List[str]) -> List[str]:
    """``argv`` plus ``--user-dir PLUGIN_DIR`` unless a user dir is already given."""
    if any(a == "--user-dir" or a.startswith("--user-dir=") for a in argv):
        return argv
    return argv + ["--user-dir", PLUGIN_DIR]


def with_hydra_user_dir(argv: List[str]) -> List[str]:
    """``argv`` plus the hydra override ``common.user_dir=PLUGIN_DIR`` unless one is given."""
    if any(a.lstrip("+").startswith("common.user_dir=") for a in argv):
        return argv
    if any(a in ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c") for a in argv):
        return argv  # hydra's informational flags take no overrides before them
    return argv + [f"common.user_dir={PLUGIN_DIR}"]


def train_main() -> None:
    from fairseq_cli import train

    sys.argv = [sys.argv[0]] + with_user_dir(sys.argv[1:])
    train.cli_main()


def hydra_train_main() -> None:
    from fairseq_cli import hydra_train

    sys.argv = [sys.argv[0]] + with_hydra_user_dir(sys.argv[1:])
    hydra_train.cli_main()
