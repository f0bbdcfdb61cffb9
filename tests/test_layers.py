"""The house rules of ARCHITECTURE.md, read from the source (nothing is imported): no two modules and no
two rooms import each other, no room imports one above its layer, and only the command layer reads
environment variables."""
from __future__ import annotations

import ast
import os
from collections import defaultdict

import pytest

import pylth

PACKAGE_DIR = os.path.dirname(os.path.abspath(pylth.__file__))
COMMANDS = ("find_ticket", "train", "sample", "export", "mixed", "evaluate", "compare", "cka.__main__")
# Bottom (0) to top; the longest prefix of a module's name gives its layer.
LAYERS = {"_pylth": 0, "pylth.foundations": 1, "pylth.ops": 2, "pylth.optim": 3, "pylth.pruning": 3,
          "pylth.cka": 3, "pylth.sparse": 4, "pylth.ddpm": 5, "pylth.evaluation": 6, "pylth.tickets": 6,
          "pylth.lottery": 7, "pylth.studies": 8, "pylth.cli": 9, **{f"pylth.{c}": 10 for c in COMMANDS}}
ENVIRONMENT_READERS = ("pylth.foundations.environment", "pylth.cli")  # the one place, and the commands' runner


def source_modules() -> dict[str, ast.Module]:
    modules = {}
    for folder, _, names in os.walk(PACKAGE_DIR):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = ["pylth"] + os.path.relpath(path, PACKAGE_DIR)[:-3].split(os.sep)
                module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                with open(path, encoding="utf-8") as f:
                    modules[module] = ast.parse(f.read(), path)
    return modules


MODULES = source_modules()


def imports(tree: ast.Module) -> set[str]:
    """The pylth modules (or _pylth) a module imports, at its top or inside functions alike."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # "from pylth.ddpm import data" imports the module pylth.ddpm.data; "from pylth.ddpm import
            # GaussianDiffusion" the package pylth.ddpm
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                      for a in node.names}
    return {m for m in found if m in MODULES or m == "_pylth"}


def room(module: str) -> str:
    if module.endswith(".__main__"):
        return module  # a command
    return ".".join(module.split(".")[:2])


def layer(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    if prefix is None:
        pytest.fail(f"{module} is in no layer of ARCHITECTURE.md (tests/test_layers.py's LAYERS)")
    return LAYERS[prefix]


# pylth/__init__.py is the package's face, not a room: every import runs it, and ops/native reads its version.
EDGES = {m: imports(tree) - {"pylth", m} for m, tree in MODULES.items() if m != "pylth"}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_rules_see_every_room_and_command():
    assert {room(m) for m in EDGES} >= {"pylth.foundations", "pylth.ops", "pylth.ddpm", "pylth.evaluation",
                                        "pylth.tickets", "pylth.lottery", "pylth.studies", "pylth.cka.__main__"}
    assert "pylth.foundations.run_dir" in EDGES["pylth.lottery.spec"], "the scan reads imports"
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_two_modules_import_each_other():
    assert cycles(EDGES) == []


def test_no_two_rooms_import_each_other():
    rooms = defaultdict(set)
    for a, targets in EDGES.items():
        rooms[room(a)] |= {room(b) for b in targets if room(b) != room(a)}
    assert cycles(rooms) == []


def test_no_room_imports_one_above_it_or_beside_it():
    up = [f"{a} -> {b}" for a, targets in sorted(EDGES.items()) for b in sorted(targets)
          if room(a) != room(b) and layer(b) >= layer(a)]
    assert up == []


def test_only_the_command_layer_reads_environment_variables():
    readers, builders = set(), set()
    for module, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                    and node.attr in ("environ", "getenv", "putenv", "environb"):
                readers.add(module)
            elif isinstance(node, ast.ImportFrom) and node.module == "os" and \
                    {a.name for a in node.names} & {"environ", "getenv", "environb"}:
                readers.add(module)
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "from_environ":
                builders.add(module)
    assert readers <= set(ENVIRONMENT_READERS), sorted(readers - set(ENVIRONMENT_READERS))
    assert builders == {"pylth.cli"}
