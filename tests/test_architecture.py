"""The layout spells the pipeline, and these rules keep it that way (read from the sources, not from a list):

- nothing in recovery_env imports builder (the boot media ship recovery_env only; builder may use the model);
- no import circle among the project's modules, counting imports inside functions too (a lazy import that closes
  a circle is still a circle);
- recovery_env imports with the standard library alone at module level (jinja2 only inside the renderer's
  functions), checked by a bare interpreter in test_agent.py; here, statically, for every module.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("builder", "recovery_env", "bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for top in PACKAGES for p in sorted((REPO / top).rglob("*.py"))}


def imports_of(path: Path, module: str, *, top_level_only: bool = False) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import statement of a file; ``from X import y`` yields X.y when that
    is a module of the project, else X."""
    tree = ast.parse(path.read_text(), str(path))
    modules = project_modules()
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield (full if full in modules else node.module), node.lineno


def test_recovery_env_never_imports_builder() -> None:
    found = [f"{path.relative_to(REPO)}:{line} imports {name}"
             for module, path in project_modules().items() if module.startswith("recovery_env")
             for name, line in imports_of(path, module) if name.split(".")[0] in ("builder", "bench")]  # fmt: skip
    assert not found, "\n".join(found)


def test_recovery_env_imports_only_the_standard_library_at_module_level() -> None:
    stdlib = set(sys.stdlib_module_names)
    found = [f"{path.relative_to(REPO)}:{line} imports {name}"
             for module, path in project_modules().items() if module.startswith("recovery_env")
             for name, line in imports_of(path, module, top_level_only=True)
             if name.split(".")[0] not in stdlib | {"recovery_env"}]  # fmt: skip
    assert not found, "\n".join(found)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_find_cycles_finds_a_circle_and_nothing_else() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        graph[module] = {name for name, _ in imports_of(path, module) if name in modules and name != module}
    cycles = find_cycles(graph)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("folder", ["builder/media", "builder/vm", "recovery_env/model", "recovery_env/probe",
                                    "recovery_env/capture", "recovery_env/restore", "recovery_env/agent"])
def test_each_folder_says_its_job(folder: str) -> None:
    init = REPO / folder / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc and len(doc.splitlines()[0]) > 20, f"{init} has no one-line job"
    text = (REPO / "ARCHITECTURE.md").read_text()
    layout = text[text.index("## The layout"):]
    assert f"  {folder.split('/')[-1]}/ " in layout, f"ARCHITECTURE.md's layout does not show {folder}"
