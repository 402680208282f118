"""The command line's reports are compared with the API's: the API's app, client and keys, as tests/api has them."""

from tests.api.conftest import app, client, keys, settings  # noqa: F401 — fixtures

