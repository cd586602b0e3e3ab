"""The house rules of the code base, checked on its source: vitcore's import graph has no cycle,
no private name crosses a module boundary, vitcore never imports Streamlit."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VITCORE = ROOT / "vitcore"


def _modules() -> dict[str, Path]:
    out = {}
    for path in VITCORE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(modules: dict[str, Path]) -> tuple[dict[str, set[str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """(module -> vitcore modules it imports, private names imported across modules, foreign top-level imports)."""
    edges: dict[str, set[str]] = {name: set() for name in modules}
    private, foreign = [], []
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                foreign.append((name, target))
                if not target.startswith("vitcore"):
                    continue
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    edges[name].add(full if full in modules else target)
                    if alias.name.startswith("_") and full not in modules:
                        private.append((name, f"{target}.{alias.name}"))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    foreign.append((name, alias.name))
                    if alias.name in modules:
                        edges[name].add(alias.name)
    return edges, private, foreign


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_vitcore_has_no_import_cycle():
    edges, _, _ = _imports(_modules())
    assert _cycles(edges) == []


def test_no_private_name_crosses_a_module_boundary():
    _, private, _ = _imports(_modules())
    assert private == []


def test_vitcore_never_imports_streamlit():
    _, _, foreign = _imports(_modules())
    assert [(m, t) for m, t in foreign if t.split(".")[0] == "streamlit"] == []


def test_vitcore_is_in_packages_that_match_its_ideas():
    top = sorted(p.name for p in VITCORE.iterdir() if p.suffix == ".py")
    assert top == ["__init__.py", "__main__.py", "cli.py"]
    packages = sorted(p.name for p in VITCORE.iterdir() if (p / "__init__.py").exists())
    assert packages == ["data", "explain", "inspect", "io", "model", "pretrained", "train"]
