"""The layer contract: imports go one way only, engine < training < eval < ui < pages and cli, and inside engine
core < access < llm < knowledge < registry < rules < answering < lifecycle < demo.

The graph is read from the source with `ast`, function-level imports included (an import hidden in a function is
still a dependency). There is no exception list: a lower layer that needs something
from a higher one gets it moved down, or passed in.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"engine": 0, "training": 1, "eval": 2, "ui": 3, "pages": 4, "cli": 4, "streamlit_app": 4}
ENGINE_LAYERS = {name: rank for rank, name in enumerate(
    ("core", "access", "llm", "knowledge", "registry", "rules", "answering", "lifecycle", "demo"))}
RUN_TIME_FORBIDDEN = {"engine": ("streamlit",)}  # the run-time domain is importable without Streamlit

def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code, relative imports resolved."""
    package = module_name(path, root).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path, root)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from engine.core import database` imports it
    return found


def layer(module: str) -> tuple[int, int] | None:
    """(package layer, engine sub-package layer); None for a third-party module."""
    parts = module.split(".")
    if parts[0] not in LAYERS:
        return None
    return LAYERS[parts[0]], ENGINE_LAYERS.get(parts[1], -1) if parts[0] == "engine" and len(parts) > 2 else -1


def _files(root: Path) -> list[Path]:
    return [path for top in LAYERS for path in ([root / f"{top}.py"] if (root / f"{top}.py").is_file() else
                                                 sorted((root / top).rglob("*.py")) if (root / top).is_dir() else [])]


def violations(root: Path) -> set[tuple[str, str]]:
    """(importer, imported) for every import that goes up a layer or reaches a forbidden package."""
    files = _files(root)
    modules = {module_name(path, root) for path in files}
    found = set()
    for path in files:
        importer = module_name(path, root)
        for imported in imports(path, root):
            top = imported.split(".")[0]
            if top in RUN_TIME_FORBIDDEN.get(importer.split(".")[0], ()):
                found.add((importer, top))
            elif layer(imported) is not None and _above(layer(imported), layer(importer)):
                # the deepest module actually imported (`from engine.core import database` names engine.core.database)
                found.add((importer, imported if imported in modules else imported.rsplit(".", 1)[0]))
    return found


def _above(imported: tuple[int, int], importer: tuple[int, int]) -> bool:
    return imported[0] > importer[0] or imported[0] == importer[0] and -1 < importer[1] < imported[1]


def graph(root: Path) -> dict[str, set[str]]:
    """First-party module -> the first-party modules it imports."""
    files = _files(root)
    modules = {module_name(path, root) for path in files}
    return {module_name(path, root): {name if name in modules else name.rsplit(".", 1)[0] for name in imports(path, root)}
            & modules - {module_name(path, root)} for path in files}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_goes_up_a_layer():
    assert not violations(ROOT), f"upward imports: {sorted(violations(ROOT))}"


def test_the_import_graph_has_no_cycle():
    assert not cycles(graph(ROOT))


def test_the_check_catches_a_planted_upward_import_even_inside_a_function(tmp_path):
    for folder in ("engine", "cli"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "cli" / "main.py").write_text("from engine import store\n")
    (tmp_path / "engine" / "store.py").write_text("import json\n")
    assert violations(tmp_path) == set()
    (tmp_path / "engine" / "store.py").write_text("def run():\n    from cli.main import main\n    import streamlit as st\n")
    assert violations(tmp_path) == {("engine.store", "cli.main"), ("engine.store", "streamlit")}
    for folder in ("engine/core", "engine/rules"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "engine" / "rules" / "decision.py").write_text("from engine.core.settings import load_settings\n")
    (tmp_path / "engine" / "core" / "settings.py").write_text("from engine.rules.decision import decide\n")
    assert ("engine.core.settings", "engine.rules.decision") in violations(tmp_path)
    assert ["engine.core.settings", "engine.rules.decision"] in cycles(graph(tmp_path))
