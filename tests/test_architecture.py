"""The rooms of STYLE.md: the accounting core imports nothing of HTTP, jobs, the engine or the shell."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "ledger": {"api", "jobs", "integration", "invledger", "litestar", "dramatiq", "httpx", "uvicorn"},
    "integration": {"api", "jobs"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_packages_import_only_downwards() -> None:
    problems = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = imports_of(path) & forbidden
            if bad:
                problems.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert problems == []


def test_no_float_on_money_paths() -> None:
    """`float(` never appears in the core or the webhook path (money must not pass through float)."""
    offenders = [str(p.relative_to(ROOT)) for package in ("ledger",) for p in (ROOT / package).rglob("*.py")
                 if "float(" in p.read_text()]
    offenders += [f for f in ("integration/webhooks.py", "integration/events.py", "api/schemas.py")
                  if "float(" in (ROOT / f).read_text()]
    assert offenders == []
