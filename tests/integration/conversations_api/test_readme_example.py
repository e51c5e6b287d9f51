"""The README's conversations example runs as printed against a live Keel."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from tests.fakes.servers import ServerThread

README = Path(__file__).resolve().parents[3] / "README.md"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_readme_conversations_example_runs(live_server: ServerThread) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "client.conversations" in b)
    code = example.replace("http://localhost:8080/v1", live_server.url + "/v1")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})  # our own README, run as printed
    assert out.getvalue().splitlines() == ["user hi", "assistant hello"]
