"""Reliability fixtures: the API fixtures (real app over ASGI, keys per role) and a place to write figures."""

from __future__ import annotations

import json
from pathlib import Path

from tests.api.conftest import app, auth, client, keys, settings  # noqa: F401 — fixtures shared with tests/api
from tests.jobs.conftest import _jobs, db, jobs, runtime, sim  # noqa: F401 — and with tests/jobs


def report_figures(tmp_path: Path, item: str, figures: dict[str, object]) -> None:
    """Print one line of figures for the README and keep them as JSON next to the test."""
    line = json.dumps({"item": item, **figures}, sort_keys=True)
    print(f"\nRELIABILITY {line}")
    (tmp_path / "figures.json").write_text(line + "\n")
