"""The package's layers import only downward and no module imports itself back through others:
ops -> modeling -> engine -> training / evaluation / hf -> cli, with config, errors, utils, tokenizer and
checkpoint at the bottom beside ops. Read from the source (every import, at any depth in a module), not by
importing it."""

import ast
import os

SRC = os.path.join(os.path.dirname(__file__), "..", "src", "hymba")

# rank of each layer: a module may import modules of its own rank or lower (engine below training/evaluation:
# they generate; those, hf and serve are siblings and do not import each other)
RANK = {"errors": 0, "utils": 0, "config": 1, "ops": 1, "tokenizer": 1, "checkpoint": 2, "modeling": 3,
        "engine": 4, "training": 5, "evaluation": 5, "hf": 5, "serve": 5, "cli": 6, "__init__": 7, "__main__": 7}
SIBLINGS = {"training", "evaluation", "hf", "serve"}


def modules():
    for root, _, files in os.walk(SRC):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, SRC)[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__") if rel.endswith(".__init__") else rel, path


def imports(name: str, path: str) -> set[str]:
    """The hymba modules `name` imports (relative imports resolved), as dotted names without 'hymba.'."""
    package = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("hymba"):
                target = node.module.removeprefix("hymba").lstrip(".")
            else:
                continue
            for alias in node.names:  # `from . import x` may name a submodule
                out.add(f"{target}.{alias.name}" if target else alias.name)
                out.add(target)
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("hymba").lstrip(".") for a in node.names if a.name.startswith("hymba")}
    return {t for t in out if t}


def layer(name: str) -> str:
    return name.split(".")[0]


def test_imports_only_run_downward():
    known = dict(modules())
    wrong = []
    for name, path in known.items():
        for target in imports(name, path):
            a, b = layer(name), layer(target)
            if b not in RANK or a == b:
                continue
            if RANK[b] > RANK[a] or (a in SIBLINGS and b in SIBLINGS):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "imports from a lower layer into a higher one:\n" + "\n".join(wrong)


def test_no_import_cycles():
    known = dict(modules())
    graph = {n: {t for t in imports(n, p) if t in known and t != n} for n, p in known.items()}
    # a package's __init__ importing its own submodules (its face) is not a cycle with them
    for n in graph:
        graph[n] = {t for t in graph[n] if not t.startswith(n + ".") and not n.startswith(t + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for t in graph[n]:
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_module_is_within_600_lines():
    long = [f"{n}: {sum(1 for _ in open(p))}" for n, p in modules() if sum(1 for _ in open(p)) > 600]
    assert not long, long
