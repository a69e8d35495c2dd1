"""``realm-train`` and ``realm-hydra-train``: fairseq's own trainers with this plugin loaded.

They import the plugin (registering its tasks, models and criterions) and point fairseq's
``user_dir`` at the installed package, so that processes fairseq spawns for distributed training load
the plugin too; then they hand over to ``fairseq-train`` / ``fairseq-hydra-train`` (``realm-train``
reads ``--bf16`` as bfloat16 on GPUs, where fairseq's command line asks for a TPU: see ``train_main``).
"""
import argparse
import atexit
import logging
import os
import sys
import warnings
from typing import List, Optional

import realm_fairseq
from realm_fairseq.errors import LOG_FORMAT
from realm_fairseq.errors import cli_errors

PLUGIN_DIR = os.path.dirname(os.path.abspath(realm_fairseq.__file__))
HELP_FLAGS = ("-h", "--help")


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


def exit_after_success() -> None:
    """Exit 0 without interpreter finalization, after running atexit handlers and flushing logs.

    fairseq's ``BufferedIterator`` prefetches batches in a daemon thread that is still collating
    (inside torch) when training returns; if Python finalizes while it is there, torch 2.13 aborts
    with "terminate called without an active exception" (exit 134) after a successful run, which a
    scheduler reads as a failed job.
    """
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# warnings about how fairseq calls hydra and torch, printed at every start: nothing a user can act on
FAIRSEQ_INTERNAL_WARNINGS = (
    (UserWarning, r"hydra\.experimental\.\w+\(\) is no longer experimental"),
    (UserWarning, r"\s*The version_base parameter is not specified"),
    (UserWarning, r"In 'config': Usage of deprecated keyword in package header '# @package _group_'"),
    (UserWarning, r"\s*'\w+' is validated against ConfigStore schema with the same name"),
    (UserWarning, r"Future Hydra versions will no longer change working directory at job runtime"),
    (UserWarning, r"\s*The strict flag in the compose API is deprecated"),
    (UserWarning, r"'pin_memory' argument is set as true but no accelerator is found"),
    (FutureWarning, r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated"),
)


def hide_fairseq_internal_warnings() -> None:
    for category, message in FAIRSEQ_INTERNAL_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def use_fairseq_train_logging() -> None:
    """Configure logging as ``fairseq-train`` does, less the warnings about fairseq's own calls. It sets up
    the root logger before importing fairseq; importing this plugin has imported fairseq already, and
    fairseq's ``text_to_speech`` task calls ``logging.basicConfig`` at import, which would otherwise leave
    its default format in place."""
    hide_fairseq_internal_warnings()
    logging.basicConfig(
        format=LOG_FORMAT,
        datefmt="%Y-%m-%d %H:%M:%S",
        level=os.environ.get("LOGLEVEL", "INFO").upper(),
        stream=sys.stdout,
        force=True,
    )


def training_config(argv: List[str]):
    """The fairseq config of a ``fairseq-train ARGV`` command line, with the plugin loaded. One difference:
    fairseq's command line takes ``--bf16`` to mean a TPU (it sets ``--tpu``, which then fails on a GPU for
    want of torch_xla); here ``--bf16`` trains in bfloat16 on GPUs, as fairseq's hydra configs do."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = with_user_dir(argv)
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=argv)
    if args.bf16 and "--tpu" not in argv:
        args.tpu = False
    return convert_namespace_to_omegaconf(args)


def print_full_help(argv: List[str]) -> None:
    """``--help`` with the options of the ``--task``, ``--arch`` (default ``realm_base``), ``--criterion``,
    optimizer and scheduler that ``argv`` names, then exit. ``fairseq-train --help`` lists only its generic
    options: it prints the help in its first parse, before it adds those of the chosen task, model and
    criterion."""
    from fairseq import options

    argv = [a for a in argv if a not in HELP_FLAGS]
    if not any(a in ("--arch", "-a") or a.startswith("--arch=") for a in argv):
        argv += ["--arch", "realm_base"]  # fairseq adds model options only for a known architecture

    calls = []

    def print_once_complete(parser):  # fairseq calls this before its first parse and after adding them all
        calls.append(parser)
        if len(calls) == 2:
            parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
            parser.print_help()
            sys.exit(0)

    options.parse_args_and_arch(options.get_training_parser(), modify_parser=print_once_complete,
                                input_args=with_user_dir(argv))


def train(argv: List[str]) -> None:
    """``fairseq-train ARGV`` in this process (see :func:`training_config`); returns when training ends."""
    from fairseq.distributed import utils as distributed_utils
    from fairseq_cli import train as fairseq_train

    distributed_utils.call_main(training_config(argv), fairseq_train.main)


@cli_errors("realm-train")
def train_main(argv: Optional[List[str]] = None) -> None:
    """``realm-train``: :func:`train` on the command line's arguments."""
    argv = sys.argv[1:] if argv is None else argv
    use_fairseq_train_logging()
    if any(a in HELP_FLAGS for a in argv):
        print_full_help(argv)
    train(argv)
    exit_after_success()


def hydra_train_main() -> None:
    hide_fairseq_internal_warnings()  # before the import: fairseq's @hydra.main warns as it is applied
    from fairseq_cli import hydra_train

    logging.getLogger().setLevel(logging.INFO)  # until hydra configures logging; fairseq set it to DEBUG
    sys.argv = [sys.argv[0]] + with_hydra_user_dir(sys.argv[1:])
    hydra_train._hydra_main = errors_in_one_line(hydra_train._hydra_main)
    hydra_train.cli_main()
    exit_after_success()


def errors_in_one_line(job):
    """fairseq's Hydra job function, its user errors ended as one line (as every ``realm-*`` command's) before
    Hydra reports them with a traceback; ``REALM_DEBUG=1`` shows the traceback."""
    def run(cfg, **kwargs):
        return cli_errors("realm-hydra-train")(lambda _argv: job(cfg, **kwargs))([])
    return run
