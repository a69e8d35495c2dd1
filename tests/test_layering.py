"""The packages of realm_fairseq import only downwards, and no modules import each other in a cycle.

Every module under realm_fairseq/ is parsed with ``ast`` (nothing is imported); every ``import`` and
``from ... import`` statement counts, also inside functions and under ``if TYPE_CHECKING``. Importing a
module runs its packages' ``__init__`` too; those implicit edges are not counted (``realm_fairseq/__init__``
imports every registering module, so counting them would make everything one cycle).

Layers, bottom to top (a module may import its own layer and the layers below):

1. base modules: errors, atomic_io, distributed, slurm, checkpoints (one home each for errors and logging,
   atomic writes, rank helpers and all-reduce, Slurm resources, checkpoint files);
2. data: corpus, vocab, documents, questions, answers, QA metrics;
3. retrieval: READS index versions and searches (mips, versions, retrievers);
4. models: towers, the realm model, readers; models/loading.py fills towers from every kind of weights.
   Models sit above retrieval: a model is handed a retriever and searches it;
5. indexing: PRODUCES index versions (embeds the corpus with a model's document embedder, refreshes);
6. criterions; 7. optim (optimizers that group the parameters the models tag);
8. tasks (tasks build models, start refreshes, hand the retriever in);
9. top: launch, cli, hub, checkpoint_compat and the package ``__init__`` (entry points and fairseq hooks).
"""
import ast
import os
from typing import Dict, List, Set, Tuple

PACKAGE = "realm_fairseq"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)
BASE = {"errors", "atomic_io", "distributed", "slurm", "checkpoints"}
LAYERS = ["base", "data", "retrieval", "models", "indexing", "criterions", "optim", "tasks", "top"]


def module_files() -> Dict[str, str]:
    """Dotted module name -> file, for every module under realm_fairseq/ (packages as their __init__)."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(ROOT))[:-3].split(os.sep)
            dotted = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
            found[dotted] = os.path.join(folder, name)
    return found


def layer(module: str) -> str:
    """The layer of a dotted module name (see the module docstring)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "top"  # realm_fairseq/__init__
    if parts[1] in BASE:
        return "base"
    return parts[1] if parts[1] in LAYERS else "top"


def imported(module: str, path: str, modules: Dict[str, str]) -> List[Tuple[str, int]]:
    """(realm_fairseq module, line) for every import statement of ``module``; ``from P import name`` counts
    as an import of the module P.name where that is a module, else of P."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    edges = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            edges += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                edges.append((f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base, node.lineno))
    return [(name, line) for name, line in edges if name.split(".")[0] == PACKAGE and name in modules]


def import_graph() -> Tuple[Dict[str, Set[str]], List[str]]:
    """The graph of explicit imports between realm_fairseq modules, and every upward import as a message."""
    modules = module_files()
    graph, upward = {}, []
    for module, path in sorted(modules.items()):
        graph[module] = set()
        for target, line in imported(module, path, modules):
            if target == module:
                continue
            graph[module].add(target)
            if LAYERS.index(layer(target)) > LAYERS.index(layer(module)):
                rel = os.path.relpath(path, os.path.dirname(ROOT))
                upward.append(f"{rel}:{line}: {module} ({layer(module)}) imports {target} ({layer(target)})")
    return graph, sorted(set(upward))


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_is_found():
    modules = module_files()
    assert f"{PACKAGE}.indexing.build" in modules and f"{PACKAGE}.models.loading" in modules


def test_no_package_imports_one_above_it():
    _, upward = import_graph()
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph, _ = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)
