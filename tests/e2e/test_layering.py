"""Layers enforced, not remembered: every import of the four packages (top-level, lazy ones inside
functions and ``TYPE_CHECKING`` ones, read with ast) runs down the house - search_space <- evaluator, search_space <- strategies,
all <- studies - never up or sideways between evaluator and strategies; no two files import each other
through any chain; search_space and evaluator never import Optuna; Optuna's private API (module paths
and private attributes of its objects) is reached only through strategies/optuna_private.py."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("search_space", "evaluator", "strategies", "studies")
MAY_IMPORT = {"search_space": set(), "evaluator": {"search_space"}, "strategies": {"search_space"},
              "studies": {"search_space", "evaluator", "strategies"}}
NO_OPTUNA = ("search_space", "evaluator")


def _files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """(line, module, names) of every import: top-level, inside functions, and for type checkers alike."""
    tree = ast.parse(path.read_text())
    pkg = _module_of(path) if path.name == "__init__.py" else _module_of(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            yield node.lineno, base, [a.name for a in node.names]


def _file_of(module: str) -> Path | None:
    p = ROOT.joinpath(*module.split("."))
    for cand in (p.with_suffix(".py"), p / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _edges(path: Path):
    """(line, imported file) for every import of one of our files."""
    for line, module, names in _imports(path):
        if module.split(".")[0] not in PACKAGES:
            continue
        subs = [_file_of(f"{module}.{n}") for n in names]
        targets = [s for s in subs if s is not None]
        if len(targets) < len(names) or not names:
            targets.append(_file_of(module))
        for t in targets:
            if t is not None and t != path:
                yield line, t


def _graph() -> dict[Path, set[Path]]:
    return {p: {t for _, t in _edges(p)} for p in _files()}


def test_no_import_runs_up_or_sideways():
    bad = []
    for p in _files():
        own = p.relative_to(ROOT).parts[0]
        for line, t in _edges(p):
            other = t.relative_to(ROOT).parts[0]
            if other != own and other not in MAY_IMPORT[own]:
                bad.append(f"{p.relative_to(ROOT)}:{line} imports {t.relative_to(ROOT)}")
    assert bad == []


def _cycles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    """Strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_between_files():
    circles = [[str(p.relative_to(ROOT)) for p in c] for c in _cycles(_graph())]
    assert circles == []


def test_the_circle_finder_finds_circles():
    a, b, c = Path("a"), Path("b"), Path("c")
    assert _cycles({a: {b}, b: {c}, c: {a}}) == [[a, b, c]]
    assert _cycles({a: {b}, b: set(), c: {a}}) == []


@pytest.mark.parametrize("pkg", NO_OPTUNA)
def test_search_space_and_evaluator_import_no_optuna(pkg):
    hits = [f"{p.relative_to(ROOT)}:{line}" for p in (ROOT / pkg).rglob("*.py")
            for line, module, _ in _imports(p) if module.split(".")[0] == "optuna"]
    assert hits == []


def _optuna_private_names() -> set[str]:
    """Private attribute names of the Optuna objects vaenas handles (study, trials, storages, samplers)."""
    import optuna
    from optuna.storages import BaseStorage, RDBStorage
    from optuna.trial import FrozenTrial, Trial

    names: set[str] = set()
    for cls in (optuna.Study, FrozenTrial, Trial, BaseStorage, RDBStorage, optuna.samplers.NSGAIISampler,
                optuna.samplers.TPESampler, optuna.samplers.RandomSampler):
        names |= {n for n in dir(cls) if n.startswith("_") and not n.startswith("__")}
        src = inspect.getsource(cls)
        names |= {a.attr for a in ast.walk(ast.parse(src)) if isinstance(a, ast.Attribute)
                  and a.attr.startswith("_") and not a.attr.startswith("__")
                  and isinstance(a.value, ast.Name) and a.value.id == "self"}
    return names


def _private_uses(text: str, label: str, names: set[str]) -> list[str]:
    hits = [f"{label}:{i}" for i, line in enumerate(text.splitlines(), 1)
            if "optuna._" in line or any(f"optuna.{m}._" in line for m in ("storages", "samplers", "study", "trial"))]
    for node in ast.walk(ast.parse(text)):
        if (isinstance(node, ast.Attribute) and node.attr in names
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            hits.append(f"{label}:{node.lineno} .{node.attr}")
    return hits


def test_optuna_private_api_is_reached_through_one_module():
    """An Optuna upgrade touches one file: strategies/optuna_private.py (plus the RDB method list
    studies/storage.py checks against Optuna's source)."""
    names = _optuna_private_names()
    assert {"_study_id", "_storage", "_trial_id"} <= names
    hits = [h for d in PACKAGES + ("benchmarks",) for p in sorted((ROOT / d).rglob("*.py"))
            if p.name != "optuna_private.py" for h in _private_uses(p.read_text(), str(p.relative_to(ROOT)), names)]
    assert hits == []


def test_the_private_guard_catches_a_private_attribute():
    names = _optuna_private_names()
    assert _private_uses("def f(view):\n    return view.study._study_id\n", "probe", names) == ["probe:2 ._study_id"]
    assert _private_uses("import optuna.storages._rdb\n", "probe", names) == ["probe:1"]
    assert _private_uses("class A:\n    def f(self):\n        return self._storage\n", "probe", names) == []


def _long_functions(limit: int = 60) -> list[str]:
    out = []
    for p in _files():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit:
                out.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    return out


def test_no_function_over_60_lines():
    """A function does one thing (C templates are module-level string constants, not functions)."""
    assert _long_functions() == []


def test_no_studies_module_over_400_lines():
    big = [f"{p.relative_to(ROOT)} ({n} lines)" for p in sorted((ROOT / "studies").rglob("*.py"))
           if (n := len(p.read_text().splitlines())) > 400]
    assert big == []


def test_the_latency_formats_are_the_runnable_exports():
    from evaluator.deploy.formats import hint_order, runnable
    from evaluator.latency import COMMAND_FORMATS

    assert COMMAND_FORMATS == runnable() == ("onnx", "c", "executorch")
    assert hint_order() == ("c", "onnx", "executorch")
