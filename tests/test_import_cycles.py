"""No module of wsi_lpd imports another in a circle (any import statement, lazy ones included), and
imports go downward through the layers of docs/ARCHITECTURE.md."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1] / "wsi_lpd"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                # importing a.b.c runs the __init__ of a.b too (except the importer's own
                # packages, which Python has initialised before the importer runs)
                parts = target.split(".")
                for i in range(2, len(parts) + 1):
                    candidate = ".".join(parts[:i])
                    own = name == candidate or name.startswith(candidate + ".")
                    if candidate in modules and not own:
                        edges.add(candidate)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_wsi_lpd_has_no_import_cycle() -> None:
    graph = _graph()
    assert graph.get("wsi_lpd.train.engine")
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


# --- layering -------------------------------------------------------------------------------------
# Imports go downward only (docs/ARCHITECTURE.md): cli → workflow → stage packages → shared
# packages → top-level modules. A stage package never imports another stage package; a shared
# package imports only shared packages below it.

TOP_LEVEL = 0  # wsi_lpd/*.py: errors, io, classes, progress, device, cores, settings, ...
LAYERS: dict[str, int] = {
    "formats": 1,  # on-disk contracts between stages
    "slide": 2,  # reading slides, tissue, tile grids, raster geometry, overlays
    "data": 3,  # patch stores' builder, datasets, splits, sampling, augmentation
    "networks": 3,  # encoders, heads, the model.pt contract
    "train": 4,  # stage packages from here ...
    "infer": 4,
    "export": 4,
    "evaluate": 4,
    "synthetic": 4,  # ... to here
    "workflow": 5,  # composes the stages' options, cohort, report
    "cli": 6,  # the `wsi-lpd` command line
}
STAGE_PACKAGES = {name for name, layer in LAYERS.items() if layer == 4}

# Known upward imports, all of the training config, which lives in the train stage but is read by
# the networks it builds and the training data; it moves below them with the typed training config
# (issue 21, items 3-4). An entry that no longer exists fails the test, so the list only shrinks.
KNOWN_UPWARD = {
    ("wsi_lpd.data.training_data", "wsi_lpd.train.training_config"),
}


def _package(module: str) -> str | None:
    """``wsi_lpd.slide.tissue`` → ``slide``; None for a top-level module or the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def _layer(module: str) -> int:
    package = _package(module)
    return TOP_LEVEL if package is None else LAYERS[package]


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS), packages ^ set(LAYERS)


def _violations(
    graph: dict[str, set[str]],
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(upward imports, imports between packages of one layer) of a module graph."""
    upward, sideways = set(), set()
    for module, targets in graph.items():
        for target in targets:
            src, dst = _package(module), _package(target)
            if src == dst or target == f"wsi_lpd.{dst}":
                continue  # within a package (or top-level modules), or a package's __init__
            if _layer(target) > _layer(module):
                upward.add((module, target))
            elif _layer(target) == _layer(module) and src is not None:
                sideways.add((module, target))
    return upward, sideways


def test_imports_go_downward_only() -> None:
    upward, sideways = _violations(_graph())
    assert upward - KNOWN_UPWARD == set(), sorted(upward - KNOWN_UPWARD)
    assert KNOWN_UPWARD - upward == set(), (
        f"fixed, remove from KNOWN_UPWARD: {KNOWN_UPWARD - upward}"
    )
    # stage packages do not import each other; shared packages of one layer neither
    assert sideways == set(), sorted(sideways)


def test_the_library_never_imports_the_cli() -> None:
    offenders = {
        module
        for module, targets in _graph().items()
        if _package(module) != "cli" and any(_package(t) == "cli" for t in targets)
    }
    assert offenders == set(), offenders


def test_the_layering_check_sees_upward_and_sideways_imports() -> None:
    upward, sideways = _violations(
        {
            "wsi_lpd.slide.tissue": {"wsi_lpd.infer.inference", "wsi_lpd.errors"},
            "wsi_lpd.infer.stage": {"wsi_lpd.export.vectorize", "wsi_lpd.slide.tissue"},
            "wsi_lpd.errors": {"wsi_lpd.io"},
        }
    )
    assert upward == {("wsi_lpd.slide.tissue", "wsi_lpd.infer.inference")}
    assert sideways == {("wsi_lpd.infer.stage", "wsi_lpd.export.vectorize")}
    assert {"train", "infer", "export", "evaluate", "synthetic"} == STAGE_PACKAGES
