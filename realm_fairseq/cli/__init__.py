"""Command-line entry points, one module per command (see setup.py's console_scripts). They share the
logging setup of :mod:`realm_fairseq.errors`."""
from dataclasses import fields

from realm_fairseq.errors import log_to_stderr  # noqa: F401  what every command sets up first


def config_from_args(cls, args):
    """The dataclass ``cls`` (its options added by fairseq's ``gen_parser_from_dataclass``) from the parsed
    ``args``."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if f.init and not f.name.startswith("_")})
