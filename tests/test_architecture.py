"""The rooms of STYLE.md: the accounting core imports nothing of HTTP, jobs, the engine or the shell."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {p.parent.name for p in ROOT.glob("*/__init__.py")} | {"bench", "tests"}
THIRD_PARTY_KEPT_OUT = {"ledger": {"litestar", "dramatiq", "httpx", "uvicorn"}, "integration": {"litestar", "uvicorn"}}
PRODUCTION = ("ledger", "integration", "documents", "readside", "service", "api", "jobs")  # what `make run` serves


def rooms() -> dict[str, set[str] | None]:
    """The Rooms table of docs/design.md: package -> the packages of ours it may import (None: all)."""
    text = (ROOT / "docs" / "design.md").read_text()
    table = text[text.index("## Rooms"):].split("\n\n")[0]
    allowed: dict[str, set[str] | None] = {}
    for row in table.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        package = cells[0].strip("`/")
        may = cells[2]
        allowed[package] = None if may == "all" else set(re.findall(r"`([a-z_]+)`", may))
    return allowed


def imports_of(path: Path) -> set[str]:
    return _names(ast.parse(path.read_text(), filename=str(path)))


def _names(tree: ast.AST) -> set[str]:
    """The top-level names of the modules that `tree` imports, anywhere in it (relative imports aside)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_rooms_table_names_every_package() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == set(rooms())


def test_packages_import_only_what_their_room_allows() -> None:
    problems = []
    for package, allowed in rooms().items():
        if allowed is None:
            continue
        for path in sorted((ROOT / package).rglob("*.py")):
            names = imports_of(path)
            bad = (names & OURS) - allowed - {package}
            bad |= names & THIRD_PARTY_KEPT_OUT.get(package, set())
            if bad:
                problems.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert problems == []


def test_the_simulator_is_off_the_production_path() -> None:
    """No production module imports the simulator; the shell only inside a function (the demo, simulate-engine)."""
    problems = [f"{path.relative_to(ROOT)} imports simulator" for package in PRODUCTION
                for path in sorted((ROOT / package).rglob("*.py")) if "simulator" in imports_of(path)]
    for path in sorted((ROOT / "invledger").rglob("*.py")):
        module = ast.parse(path.read_text())
        module.body = [node for node in module.body if isinstance(node, ast.Import | ast.ImportFrom)]
        if "simulator" in _names(module):
            problems.append(f"{path.relative_to(ROOT)} imports simulator at module level")
    assert problems == []


def test_the_shell_reads_through_the_read_side_not_the_api() -> None:
    """`invledger` reads every report through `readside` (the API's controllers call the same functions); of `api`
    it imports only the app, to serve it, and the key store, to make keys."""
    allowed = {"api.app", "api.auth"}
    problems = []
    for path in sorted((ROOT / "invledger").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if isinstance(node, ast.ImportFrom) and node.module == "api":
                modules = [f"api.{alias.name}" for alias in node.names]
            problems += [f"{path.relative_to(ROOT)} imports {m}" for m in modules
                         if (m == "api" or m.startswith("api.")) and m not in allowed]
    assert problems == []


def test_integration_needs_no_web_framework() -> None:
    """The engine's language (client, webhooks, outbox) imports neither litestar nor uvicorn; the simulator does."""
    web = {"litestar", "uvicorn"}
    problems = [f"{path.relative_to(ROOT)} imports {sorted(imports_of(path) & web)}"
                for path in sorted((ROOT / "integration").rglob("*.py")) if imports_of(path) & web]
    assert problems == []


def test_the_jobs_modules_import_one_way() -> None:
    """broker -> actors -> context: no module of jobs/ imports one above it (no cycle)."""
    order = ["scheduler", "broker", "actors", "context"]
    problems = []
    for i, name in enumerate(order):
        tree = ast.parse((ROOT / "jobs" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "jobs":
                above = {alias.name for alias in node.names} & set(order[:i])
                if above:
                    problems.append(f"jobs/{name}.py imports {sorted(above)}")
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jobs."):
                if node.module.split(".")[1] in order[:i]:
                    problems.append(f"jobs/{name}.py imports {node.module}")
    assert problems == []


def test_no_float_on_money_paths() -> None:
    """`float(` never appears in the core or the webhook path (money must not pass through float)."""
    offenders = [str(p.relative_to(ROOT)) for package in ("ledger",) for p in (ROOT / package).rglob("*.py")
                 if "float(" in p.read_text()]
    offenders += [f for f in ("integration/webhooks.py", "integration/events.py", "api/schemas.py")
                  if "float(" in (ROOT / f).read_text()]
    assert offenders == []
