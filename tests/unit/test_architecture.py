"""The layers of app/ hold: the import-linter contracts pass, and the resilience kit is pure."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("fastapi", "starlette", "prometheus_client", "pydantic_settings", "pydantic", "httpx")


def test_import_linter_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache", "--config", str(ROOT / ".importlinter")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_importing_the_resilience_kit_loads_no_framework() -> None:
    code = (
        "import app.resilience, sys\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
        "print(sorted(m for m in sys.modules if m.startswith('app.')"
        " and not m.startswith('app.resilience')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    frameworks, other_app = result.stdout.splitlines()
    assert frameworks == "[]"
    assert other_app == "[]"


def test_resilience_sources_import_only_the_kit_and_the_standard_library() -> None:
    """The same rule read from the source, so a lazy import inside a function is caught too."""
    stdlib = sys.stdlib_module_names
    for path in sorted((ROOT / "app" / "resilience").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                ok = name.startswith("app.resilience") or top in stdlib or top == "__future__"
                assert ok, f"{path.name} imports {name}"
