"""Honest dependencies: every third-party module app/ imports belongs to a distribution that
pyproject.toml declares (runtime or an extra), and tenacity, once declared unused, stays out."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from tests.fakes.servers import ROOT


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    extras = {_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    return runtime, extras


def _imports(folder: str) -> set[str]:
    out: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                out.add(node.module.split(".")[0])
    return {m for m in out if m not in sys.stdlib_module_names and m not in ("app", "tests")}


def _distributions(module: str) -> set[str]:
    names = importlib.metadata.packages_distributions().get(module, [])
    return {n.lower().replace("_", "-") for n in names}


def test_every_module_app_imports_is_declared() -> None:
    runtime, extras = _declared()
    missing = {
        m
        for m in _imports("app")
        if not _distributions(m) & (runtime | extras) and m != "llama_cpp"  # the [local] extra
    }
    assert missing == set()


def test_every_module_the_tests_import_is_declared() -> None:
    runtime, extras = _declared()
    missing = {m for m in _imports("tests") if not _distributions(m) & (runtime | extras)}
    assert missing == set()


def test_tenacity_is_not_a_dependency() -> None:
    runtime, extras = _declared()
    assert "tenacity" not in runtime | extras
