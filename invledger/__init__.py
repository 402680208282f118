"""The application shell: configuration, the embedded database, logging and the `invledger` command."""

__version__ = "0.1.0"
