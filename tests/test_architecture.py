"""The project's import graph, read from the source with ``ast``: no cycles among its own modules, each module in
one layer of docs/architecture.md and importing only the layers that layer may import.

Every import statement counts, wherever it is: at the top, inside functions (the lazy imports that keep ib_async,
Stable-Baselines3 or torch out of runs that do not need them) and under ``if TYPE_CHECKING:``. A lazy import only
delays a dependency; it does not remove it. Allowed exceptions: none (ALLOWED_IMPORTS).
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# the project's own modules: the flat top-level *.py files (there is no package)
MODULES = {path.stem: path for path in sorted(REPO.glob("*.py"))}
# scripts run by path that import the modules and that nothing imports; tests are users too
USERS = sorted([*REPO.glob("tools/*.py"), *REPO.glob("bench/*.py"), *REPO.glob("tests/*.py")])

# (layer, its modules, the lower layers it may import), lowest first; a module may also import its own layer.
# The environment may not import storage (no SQLAlchemy in environment workers), nor sources (no ib_async).
LAYERS = (
    ("foundation", "settings", ""),
    (
        "core",
        "bar_validation features metrics evaluation_stats seed_stats planted_markets walk_forward search_space",
        "foundation",
    ),
    ("sources", "bar_files bar_parsing watchlist_loader ibkr_pacing ibkr_parsing ibkr_source", "foundation core"),
    ("storage", "tt_schema db_utils run_locks bar_store coverage_check", "foundation core"),
    (
        "environment",
        "env_kernels market tensortrade_risk_module trading_env trading_vec_env tensortrade_backend tensortrade_remote",
        "foundation core",
    ),
    (
        "runs",
        "checkpoints run_records step_writes step_logger step_fallback training_run ingest_log evaluation_records "
        "report_mvp signal_records policy_rollout run_groups group_evaluation group_report",
        "foundation core sources storage environment",
    ),
    (
        "commands",
        "create_tt_tables mvp_pipeline train_mvp evaluate_mvp predict_mvp tune_mvp",
        "foundation core sources storage environment runs",
    ),
)
# (importer, imported) pairs exempt from both checks, each with its reason. None are needed today.
ALLOWED_IMPORTS: dict[tuple[str, str], str] = {}


def imported_modules(path: Path, known: Collection[str]) -> set[str]:
    """The names in ``known`` that the file imports, from any import statement anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {name for name in found if name in known} - {path.stem}


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, minus the ALLOWED_IMPORTS."""
    return {
        name: {m for m in imported_modules(path, MODULES) if (name, m) not in ALLOWED_IMPORTS}
        for name, path in MODULES.items()
    }


def find_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted: every import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def layer_of() -> dict[str, str]:
    """module -> its layer."""
    return {module: name for name, modules, _ in LAYERS for module in modules.split()}


def test_the_cycle_finder_finds_cycles_and_only_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": {"a"}, "g": set()}
    assert find_cycles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) == []


def test_imports_are_read_from_function_bodies_and_type_checking_blocks(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nimport a.sub\nif TYPE_CHECKING:\n    from b import X\n"
        "def f() -> None:\n    import c as alias\n    from .relative import d\n"
    )
    assert imported_modules(source, {"a", "b", "c", "d", "typing_not_known"}) == {"a", "b", "c"}


def test_the_project_modules_form_no_import_cycle() -> None:
    assert find_cycles(import_graph()) == []


def test_every_module_has_exactly_one_layer() -> None:
    placed = [module for _, modules, _ in LAYERS for module in modules.split()]
    assert sorted(placed) == sorted(MODULES), "place new modules in LAYERS here and in docs/architecture.md"


def test_layers_may_import_only_lower_layers() -> None:
    names = [name for name, _, _ in LAYERS]
    for rank, (name, _, may_import) in enumerate(LAYERS):
        assert set(may_import.split()) <= set(names[:rank]), name


def test_every_module_imports_only_its_own_layer_or_the_layers_it_may_import() -> None:
    layer, may_import = layer_of(), {name: set(lower.split()) | {name} for name, _, lower in LAYERS}
    wrong = [
        f"{module} ({layer[module]}) imports {target} ({layer[target]})"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if module in layer and target in layer and layer[target] not in may_import[layer[module]]
    ]
    assert wrong == []


def test_no_module_imports_the_tools_benchmarks_or_tests() -> None:
    users = {path.stem for path in USERS} | {"tools", "bench", "tests"}
    leaks = {name: found for name, path in MODULES.items() if (found := imported_modules(path, users))}
    assert leaks == {}


def test_architecture_doc_shows_the_same_layers() -> None:
    """docs/architecture.md's layer table: one row per layer, top to bottom, with its modules and what it may import."""
    text = (REPO / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| \*\*(\w+)\*\* \| ([^|]*) \| ([^|]*) \|$", text, flags=re.MULTILINE)
    documented = [
        (name, set(re.findall(r"`(\w+)\.py`", mods)), set(re.findall(r"\w+", may))) for name, mods, may in rows
    ]
    expected = [(name, set(mods.split()), set(lower.split()) or {"nothing"}) for name, mods, lower in reversed(LAYERS)]
    assert documented == expected


def test_pyproject_installs_every_module() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert sorted(config["tool"]["setuptools"]["py-modules"]) == sorted(MODULES)
