"""Layers point one way: components <- evaluation <- experiments, and our modules import each other without
cycles. Read with `ast` (nothing is imported), so every import counts, also those inside functions: a cycle
closed by a function-level import is a cycle too. Importing a.b.c runs the __init__ of a and a.b first, so an
import also reaches the packages above what it names (those that do not hold the importing module), and a
module that imports names from its own package's __init__ reaches that __init__.

Inside experiments/ the jobs are packages in one order, each importing only those before it (cli.py, at the top,
imports any): config <- corpus <- tracking <- train <- infer <- grid <- search."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "evaluation", "experiments")
# what each package must not import, anywhere in it (inside functions too)
FORBIDDEN = {"components": ("evaluation", "experiments", "mlflow", "optuna"),
             "evaluation": ("experiments",)}
# experiments' job packages, lowest first: each may import only itself and those before it
JOBS = ("config", "corpus", "tracking", "train", "infer", "grid", "search")


INIT = ".__init__"  # our_sources' suffix for a package's __init__ when a test names it (see _package_of)


def our_sources(root: Path = ROOT) -> dict[str, str]:
    """Dotted module name -> source, for every module of our packages (a package's __init__ under the
    package's name)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path.read_text()
    return out


def _package_of(module: str, known: set[str]) -> list[str]:
    """The package a module's relative imports resolve against: the module itself for a package's __init__
    (a known module with known modules under it), else its parent."""
    parts = module.split(".")
    is_package = any(other.startswith(module + ".") for other in known)
    return parts if is_package else parts[:-1]


def _imports(module: str, source: str, known: set[str]) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in the source. `from a import b` names a.b when
    that is one of the known modules, else a. Imports inside functions are not at module level."""
    found: list[tuple[str, bool]] = []
    package = _package_of(module, known)

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolved against this module's package
                    anchor = package[:len(package) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.append((full if full in known else base, top))
            visit(child, top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source, filename=module), True)
    return found


def _under(name: str, roots: tuple[str, ...]) -> str | None:
    return next((r for r in roots if name == r or name.startswith(r + ".")), None)


def _reached(module: str, name: str, known: set[str]) -> set[str]:
    """Our modules that importing `name` from `module` runs: name itself and the packages above it, except the
    packages that hold `module` (already being imported when it runs) unless `name` is that package."""
    parts = name.split(".")
    out = set()
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        holds_importer = module.startswith(prefix + ".")
        if prefix in known and (prefix == name or not holds_importer):
            out.add(prefix)
    out.discard(module)
    return out


def _later_job(module: str, name: str) -> str | None:
    """The job package `name` belongs to when it comes after `module`'s own job (see JOBS), else None."""
    mine, theirs = module.split("."), name.split(".")
    if len(mine) < 2 or len(theirs) < 2 or mine[0] != "experiments" or theirs[0] != "experiments":
        return None
    if mine[1] not in JOBS or theirs[1] not in JOBS:
        return None
    return theirs[1] if JOBS.index(theirs[1]) > JOBS.index(mine[1]) else None


def check(sources: dict[str, str]) -> list[str]:
    """Problems: forbidden imports (by layer) and cycles in the import graph of these modules, function-level
    imports and the package __init__s an import runs included."""
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
            late = _later_job(module, name)
            if late:
                problems.append(f"{module} imports {name}: {module.split('.')[1]} must not import {late}, a later "
                                f"job ({' <- '.join(JOBS)})")
            graph[module] |= _reached(module, name, known)
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
        "evaluation.b": "import numpy\n\ndef f():\n    from experiments.g import x\n",
        "experiments.c": "from experiments import d\nfrom evaluation.b import f\n",
        "experiments.d": "import experiments.c\n",
        "experiments.e": "def f():\n    import experiments.f\n",  # a cycle closed inside a function
        "experiments.f": "import experiments.e\n",
        # job order: train may import tracking, not infer (not even inside a function)
        "experiments.train.loop": "from experiments.tracking.store import client\n\ndef f():\n"
                                  "    from experiments.infer.synth import x\n",
        "experiments.infer.synth": "x = 1\n",
    }
    problems = check(sources)
    assert "components.a imports mlflow (module level); components must not import mlflow" in problems
    assert ("components.a imports evaluation.b (module level); components must not import evaluation"
            in problems)
    assert ("evaluation.b imports experiments.g (inside a function); evaluation must not import experiments"
            in problems)
    assert "import cycle: experiments.c -> experiments.d -> experiments.c" in problems
    assert "import cycle: experiments.e -> experiments.f -> experiments.e" in problems
    assert ("experiments.train.loop imports experiments.infer.synth: train must not import infer, a later job "
            "(config <- corpus <- tracking <- train <- infer <- grid <- search)") in problems
    assert len(problems) == 6, problems


def test_the_checker_finds_cycles_through_package_inits():
    sources = {
        # a module importing a name from its own package's __init__, which imports the module back
        "experiments.search": "from experiments.search.run import go\nLIMIT = 3\n",
        "experiments.search.run": "from experiments.search import LIMIT\n\ndef go():\n    return LIMIT\n",
        # importing a submodule runs its package's __init__, which imports the importer back
        "experiments.cli": "def main():\n    from experiments.tools.spec import x\n",
        "experiments.tools": "from experiments import cli\n",
        "experiments.tools.spec": "x = 1\n",
        # relative imports in an __init__ resolve against the package itself; submodules importing their siblings
        # (the package is already being imported) are no cycle
        "experiments.fine": "from . import a\n",
        "experiments.fine.a": "from experiments.fine import b\n",
        "experiments.fine.b": "X = 1\n",
    }
    problems = check(sources)
    assert "import cycle: experiments.search -> experiments.search.run -> experiments.search" in problems
    assert "import cycle: experiments.cli -> experiments.tools -> experiments.cli" in problems
    assert len(problems) == 2, problems


def test_layers_point_one_way_and_there_are_no_cycles():
    sources = our_sources()
    assert {"components.model", "evaluation.compare.build", "experiments.cli"} <= set(sources)
    assert check(sources) == []
