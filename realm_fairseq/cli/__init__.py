"""Command-line entry points, one module per command (see setup.py's console_scripts). They share the
logging setup of :mod:`realm_fairseq.errors`."""
from realm_fairseq.errors import log_to_stderr  # noqa: F401  what every command sets up first
