"""The shape issue 15 asked for, held: the request path names no wire, and the package has no import circle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import cliproxy_proxy

PACKAGE = Path(cliproxy_proxy.__file__).parent
#: The modules every wire goes through: a wire's knowledge belongs to its codec, not here.
WIRE_BLIND = ("forward.py", "runtime.py", "count.py", "embeddings.py")
WIRE_NAMES = re.compile(r"kiro|gemini|anthropic|claude|google|vertex|azure|bedrock|aws", re.IGNORECASE)


def test_the_request_path_names_no_wire() -> None:
    for name in WIRE_BLIND:
        text = (PACKAGE / name).read_text()
        named = sorted({m.group(0).lower() for m in WIRE_NAMES.finditer(text)})
        assert not named, f"{name} names {named}: that knowledge belongs in the wire's codec"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Every module of the package ``path`` imports, under ``TYPE_CHECKING`` too (a circle for readers all the same)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found & known


def test_no_import_circle() -> None:
    files = {_module(path): path for path in PACKAGE.rglob("*.py")}
    graph = {module: _imports(path, module, set(files)) - {module} for module, path in files.items()}
    done: set[str] = set()

    def visit(module: str, trail: tuple[str, ...]) -> None:
        if module in trail:
            raise AssertionError("import circle: " + " -> ".join((*trail[trail.index(module) :], module)))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, (*trail, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
