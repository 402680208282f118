"""The command-line shell: the `invledger` command, the demo and the CLI's reports."""

from service import __version__

__all__ = ["__version__"]
