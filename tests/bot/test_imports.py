"""The bot's modules import each other without a cycle (module-level imports; TYPE_CHECKING ones
and imports inside functions excluded), and the shared contract stays torch-free."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def module_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:  # top level only: a function's lazy import is no import cycle
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in ast.walk(node) if isinstance(node, ast.Import | ast.ImportFrom) else ():
            if isinstance(child, ast.ImportFrom) and child.module:
                found.add(child.module)
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
    return {name for name in found if name.startswith("bot.") or name == "bot"}


def test_no_import_cycle_among_bot_modules():
    graph = {f"bot.{p.stem}": module_imports(p) for p in (ROOT / "bot").glob("*.py") if p.stem != "__init__"}
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "active", " -> ".join([*path, name])
        state[name] = "active"
        for imported in graph.get(name, ()):
            visit(imported, [*path, name])
        state[name] = "done"

    for name in graph:
        visit(name, [])


def test_job_service_stays_small():
    assert len((ROOT / "bot" / "jobs.py").read_text().splitlines()) < 250
