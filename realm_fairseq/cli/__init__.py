"""Command-line entry points, one module per command (see setup.py's console_scripts), and the logging
setup they share."""
import logging
import sys

LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"  # fairseq-train's


def log_to_stderr(level: int = logging.INFO) -> None:
    """Log ``level`` and above to stderr, one line per record with time, level and logger. ``force``:
    importing fairseq has already configured the root logger (at DEBUG, from one of its models)."""
    logging.basicConfig(format=LOG_FORMAT, level=level, stream=sys.stderr, force=True)
