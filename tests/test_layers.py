"""Layers point one way: components <- evaluation <- experiments, and our modules import each other without
cycles. Read with `ast` (nothing is imported), so every import counts, also those inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "evaluation", "experiments")
# what each package must not import, anywhere in it (inside functions too)
FORBIDDEN = {"components": ("evaluation", "experiments", "mlflow", "optuna"),
             "evaluation": ("experiments",)}


def our_sources(root: Path = ROOT) -> dict[str, str]:
    """Dotted module name -> source, for every module of our packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path.read_text()
    return out


def _imports(module: str, source: str, known: set[str]) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in the source. `from a import b` names a.b when
    that is one of the known modules, else a. Imports inside functions are not at module level."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolved against this module's package
                    package = module.split(".")[:-child.level] if child.level else []
                    base = ".".join(package + ([base] if base else []))
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.append((full if full in known else base, top))
            visit(child, top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source, filename=module), True)
    return found


def _under(name: str, roots: tuple[str, ...]) -> str | None:
    return next((r for r in roots if name == r or name.startswith(r + ".")), None)


def check(sources: dict[str, str]) -> list[str]:
    """Problems: forbidden imports (by layer) and cycles in the module-level import graph of these modules."""
    known = set(sources)
    problems = []
    graph: dict[str, set[str]] = {}
    for module, source in sorted(sources.items()):
        graph[module] = set()
        rules = FORBIDDEN.get(module.split(".")[0], ())
        for name, top in _imports(module, source, known):
            bad = _under(name, rules)
            if bad:
                problems.append(f"{module} imports {name} ({'module level' if top else 'inside a function'}); "
                                f"{module.split('.')[0]} must not import {bad}")
            if top and name in known and name != module:
                graph[module].add(name)
    problems.extend(f"import cycle: {' -> '.join(c)}" for c in _cycles(graph))
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected component with a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; our graphs are small, recursion depth is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                members.append(w)
                if w == v:
                    break
            if len(members) > 1:
                components.append(sorted(members))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for members in components:  # walk inside the component from its first member back to it
        inside, start = set(members), members[0]
        path, seen = [start], {start}
        while True:
            following = sorted(graph[path[-1]] & inside)
            if start in following:
                cycles.append(path + [start])
                break
            step = next((w for w in following if w not in seen), None)
            if step is None:  # dead end within the component: report its members instead
                cycles.append(members + [members[0]])
                break
            path.append(step)
            seen.add(step)
    return cycles


# ----------------------------------------------------------------------------- the tests


def test_the_checker_finds_bad_imports_and_cycles():
    sources = {
        "components.a": "import mlflow\nfrom evaluation import b\n",
        "components.ok": "import torch\nfrom components import a\n",
        "evaluation.b": "import numpy\n\ndef f():\n    from experiments.c import x\n",
        "experiments.c": "from experiments import d\nfrom evaluation.b import f\n",
        "experiments.d": "import experiments.c\n",
        "experiments.e": "def f():\n    import experiments.f\n",  # a function-level cycle is allowed
        "experiments.f": "import experiments.e\n",
    }
    problems = check(sources)
    assert "components.a imports mlflow (module level); components must not import mlflow" in problems
    assert ("components.a imports evaluation.b (module level); components must not import evaluation"
            in problems)
    assert ("evaluation.b imports experiments.c (inside a function); evaluation must not import experiments"
            in problems)
    assert "import cycle: experiments.c -> experiments.d -> experiments.c" in problems
    assert len(problems) == 4, problems


def test_layers_point_one_way_and_there_are_no_cycles():
    sources = our_sources()
    assert {"components.model", "evaluation.compare", "experiments.cli"} <= set(sources)
    assert check(sources) == []
