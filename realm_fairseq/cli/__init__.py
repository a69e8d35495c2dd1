"""Command-line entry points, one module per command (see setup.py's console_scripts)."""
