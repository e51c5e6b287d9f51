"""The README's first screen, run as written against a fake provider.

Every ``sh`` and ``python`` block of "From clone to a chat answer" runs in one bash session in
an empty directory, in order, except blocks marked ``<!-- readme-test: skip ... -->`` (the
local model needs a 253 MB package). Only what a test must change is changed: ``./run serve``
(re)starts Keel in the background and waits for ``/readyz``, ``./run keel`` is the CLI of this
checkout, the port is a free one, and the provider's example URL points at the fake upstream.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.servers import ROOT, free_port
from tests.fakes.upstream import FakeUpstream

pytestmark = pytest.mark.slow

README = ROOT / "README.md"
EXAMPLE_PROVIDER = "http://127.0.0.1:11434/v1"

PRELUDE = r"""
set -euo pipefail
keel_pid=""
stop_keel() { if [ -n "$keel_pid" ]; then kill "$keel_pid"; wait "$keel_pid" || true; fi; }
trap stop_keel EXIT
restart_keel() {
  stop_keel
  "$KEEL_PYTHON" -m app.cli serve >> serve.log 2>&1 &
  keel_pid=$!
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$KEEL_PORT/readyz" > /dev/null && return 0
    kill -0 "$keel_pid" || { cat serve.log >&2; return 1; }
    sleep 0.2
  done
  return 1
}
"""


def first_screen() -> str:
    text = README.read_text()
    start = text.index("## From clone to a chat answer")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks(section: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block not marked as skipped."""
    found = re.finditer(r"(<!-- readme-test: skip[^>]*-->\n)?```(\w+)\n(.*?)```", section, re.S)
    return [(m.group(2), m.group(3)) for m in found if m.group(1) is None]


def as_script(section: str, port: int, provider_url: str) -> str:
    parts = [PRELUDE]
    for language, code in blocks(section):
        code = code.replace("localhost:8080", f"127.0.0.1:{port}")
        code = code.replace(EXAMPLE_PROVIDER, provider_url)
        if language == "python":
            parts.append(f"\"$KEEL_PYTHON\" - <<'PYTHON_BLOCK'\n{code}PYTHON_BLOCK\n")
            continue
        assert language == "sh", language
        code = re.sub(r"^\./run serve\b.*$", "restart_keel", code, flags=re.M)
        code = re.sub(r"^\./run keel\b", '"$KEEL_PYTHON" -m app.cli', code, flags=re.M)
        parts.append(code)
    return "\n".join(parts)


def test_first_screen_blocks_run_offline_against_a_fake_provider(tmp_path: Path) -> None:
    section = first_screen()
    assert "restart" in section  # the provider path says that keel.toml needs a restart
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "CLOUD_"))}
    with FakeUpstream() as upstream:
        script = as_script(section, port, upstream.base_url)
        proc = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env={
                **clean,
                "KEEL_PYTHON": sys.executable,
                "KEEL_PORT": str(port),
                "PYTHONPATH": str(ROOT),
                "KEEL_LOG_FORMAT": "json",
            },
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        seen = list(upstream.requests)
    log = (tmp_path / "serve.log").read_text() if (tmp_path / "serve.log").exists() else ""
    assert proc.returncode == 0, proc.stderr[-3000:] + log[-3000:]
    out = proc.stdout
    assert out.count('"content":"echo: hi"') + out.count('"content": "echo: hi"') >= 1, out
    assert "echo: and now?" in out  # the chat turn that used the captured $ID ...
    assert '"text":"and now?"' in out  # ... and the stored conversation
    assert out.rstrip().endswith("echo: hi")  # the SDK snippet's print
    chats = [r for r in seen if r.path.endswith("/chat/completions")]
    assert len(chats) == 3
    # The key reached the provider from the variable keel.toml names, after the restart.
    assert {r.headers.get("authorization") for r in chats} == {"Bearer sk-your-key"}
    assert {r.body["model"] for r in chats if r.body} == {"llama3.2"}


def test_readme_links_stay_inside_the_repository() -> None:
    text = README.read_text()
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert "://" not in target, target
        assert not target.startswith(("../", "/")), target
        assert (ROOT / target.split("#")[0]).exists(), target
