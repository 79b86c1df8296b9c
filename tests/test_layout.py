"""The house rules of the layout, checked on the source (ast), not on what happens to be imported:

* imports run one way, ``experiments -> architectures -> memory -> kernels`` (kernels import nothing above
  them; memory takes its top-k from kernels);
* no import circle anywhere in the four packages (function-level imports count: a lazy import is still
  a dependency);
* inside ``experiments``: ``tables -> evaluation -> training -> data -> config, cli`` (entry points on top);
* no private name (``_x``) imported from another module;
* no module of ``experiments/`` over 300 lines; entry points stay thin.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("architectures", "kernels", "memory", "experiments")
LEVEL = {"kernels": 0, "memory": 1, "architectures": 2, "experiments": 3}
# inside experiments: the rooms, from the leaves up (entry points, at the top level, may import any room)
ROOMS = {"experiments.config": 0, "experiments.cli": 0, "experiments.provenance": 0, "experiments.plotting": 0,
         "experiments.data": 1, "experiments.training": 2, "experiments.evaluation": 3, "experiments.tables": 4}


def room(module: str) -> int:
    return next((level for r, level in ROOMS.items() if module == r or module.startswith(r + ".")), 5)
ENTRY_POINTS = ("train", "eval", "generate", "longeval", "fot_eval", "compare", "run_table", "make_table",
                "context_eval", "harness", "needle_offset")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(path: Path, name: str, known: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import of a project module in ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            for a in node.names:  # `from pkg import submodule` depends on the submodule
                sub = f"{base}.{a.name}"
                out.append((sub, [], node.lineno) if sub in known else (base, [a.name], node.lineno))
    return [(m, names, line) for m, names, line in out if m.split(".")[0] in PACKAGES]


def graph() -> tuple[dict[str, set[str]], list[str]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    problems = []
    for name, path in known.items():
        for target, names, line in imports(path, name, known):
            while target not in known and "." in target:  # an attribute of a module: the module
                target = target.rpartition(".")[0]
            if target not in known:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {target}, which is not in the repo")
                continue
            src_pkg, dst_pkg = name.split(".")[0], target.split(".")[0]
            if src_pkg != dst_pkg and LEVEL[dst_pkg] >= LEVEL[src_pkg]:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {target}: {src_pkg} may not import "
                                f"{dst_pkg} (experiments -> architectures -> memory -> kernels)")
            if src_pkg == dst_pkg == "experiments" and room(target) > room(name):
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {target}: inside experiments imports run "
                                "tables -> evaluation -> training -> data -> config, cli")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != name:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports the private name(s) {private} of {target}")
            if target != name:
                edges[name].add(target)
    return edges, problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_imports_run_one_way_and_name_nothing_private():
    _, problems = graph()
    assert not problems, "\n".join(problems)


def test_no_import_circles():
    found = cycles(graph()[0])
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checker_sees_circles_and_wrong_directions():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    edges, problems = graph()
    assert "experiments.tables.runner" in edges and "experiments.training" in {
        e.rpartition(".")[0] for e in edges["experiments.tables.runner"]}
    assert not any(e.startswith("experiments") for m in edges if m.startswith("architectures") for e in edges[m])


@pytest.mark.parametrize("pkg", ["experiments"])
def test_no_module_is_over_300_lines(pkg):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 300}
    assert not long, f"modules over 300 lines (split them by what a reader looks for): {long}"


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_points_are_thin(entry):
    path = ROOT / "experiments" / f"{entry}.py"
    code = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(code) <= 40, f"{path.name}: {len(code)} lines; an entry point is argument parsing plus one call"
