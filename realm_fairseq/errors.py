"""What the console scripts print: log lines on stderr, and errors in one line each, naming the file, line
or field and what was expected.

Every command (and the index refresh's worker process) logs with :func:`log_to_stderr`.

Every ``realm-*`` entry point is wrapped by :func:`cli_errors`: an error the user can act on (bad input,
a damaged or refused checkpoint, a missing or unwritable file, a full disk, a missing optional package)
ends the command with ``PROG: error: MESSAGE`` on one line and exit status 1, no traceback. ``--debug``
on the command line (or ``REALM_DEBUG=1`` in the environment) shows the traceback instead. Anything
else is a bug and keeps its traceback.
"""
import functools
import logging
import os
import sys
from typing import Callable, List, Optional

DEBUG_ENV = "REALM_DEBUG"
DEBUG_FLAG = "--debug"
LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"  # fairseq-train's


def log_to_stderr(level: int = logging.INFO) -> None:
    """Log ``level`` and above to stderr, one line per record with time, level and logger. ``force``:
    importing fairseq has already configured the root logger (at DEBUG, from one of its models)."""
    logging.basicConfig(format=LOG_FORMAT, level=level, stream=sys.stderr, force=True)


class InputError(ValueError):
    """A user's input file (documents, vocab, questions) is not what we expected."""


class StoppedError(Exception):
    """A run that stopped for a cause the user can act on, named in the message (e.g. too many failed index
    refreshes)."""


#: what a user can act on: InputError and CheckpointError (ValueErrors, as are JSON and UTF-8 decoding
#: errors), file system errors, missing optional packages, runs stopped for a named cause
USER_ERRORS = (ValueError, OSError, ImportError, StoppedError)


def message(error: BaseException) -> str:
    """``error`` as one line."""
    if isinstance(error, OSError) and error.filename is not None:
        text = f"{error.filename}: {error.strerror or error}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def _take_debug_flag(args: List[str], first: int) -> bool:
    """Remove ``--debug`` from ``args[first:]``; whether it was there."""
    found = DEBUG_FLAG in args[first:]
    while DEBUG_FLAG in args[first:]:
        del args[args.index(DEBUG_FLAG, first)]
    return found


def cli_errors(prog: str) -> Callable:
    """Decorate a console script's ``main(argv=None)`` as the module docstring says."""
    def decorate(main: Callable) -> Callable:
        @functools.wraps(main)
        def run(argv: Optional[List[str]] = None):
            argv = None if argv is None else list(argv)
            flag = _take_debug_flag(sys.argv, 1) if argv is None else _take_debug_flag(argv, 0)
            debug = flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")
            try:
                return main(argv)
            except USER_ERRORS as e:
                if debug:
                    raise
                sys.exit(f"{prog}: error: {message(e)}")
            except KeyboardInterrupt:
                if debug:
                    raise
                sys.exit(f"{prog}: interrupted")
        return run
    return decorate
