"""Pure pieces of readiness: reasons, redaction, subject filter, storage and runtime probes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.readiness.checks import (
    CheckResult,
    check_provider,
    probe_runtime,
    probe_storage,
    result,
)
from app.readiness.diagnostics import matches
from app.readiness.reasons import REASONS, human_bytes, reason
from app.readiness.runtime_view import redact
from app.settings import ProviderSettings


def test_every_reason_formats_with_its_facts() -> None:
    facts = {
        "capability": "llm",
        "model": "m",
        "provider": "p",
        "env": "E",
        "seconds": 3,
        "engine": "e",
        "install": "pip install x",
        "free": "1 B",
        "low": "2 B",
        "error": "download_failed",
        "check": "database",
    }
    for code in REASONS:
        r = reason(code, "subject", **facts)
        assert r.message
        assert r.action
        assert "{" not in r.message


def test_unwritable_root_is_a_finding(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = probe_storage(["llm"], blocker / "models", lambda p: 10**12, 1)
    assert out.status == "fail"
    assert [r.code for r in out.reasons] == ["storage_unwritable"]
    assert out.detail["writable"] is False
    assert out.detail["exists"] is False


def test_writable_root_with_room(tmp_path: Path) -> None:
    out = probe_storage(["llm", "stt"], tmp_path, lambda p: 10**12, 10**9)
    assert out.status == "ok"
    assert out.detail == {
        "capabilities": ["llm", "stt"],
        "path": str(tmp_path),
        "exists": True,
        "writable": True,
        "free_bytes": 10**12,
    }
    assert list(tmp_path.iterdir()) == []  # the write probe cleans up


def test_runtime_probe_never_imports() -> None:
    asked: list[str] = []

    def find(name: str) -> bool:
        asked.append(name)
        return False

    out = probe_runtime("llama_cpp", find)
    assert asked == ["llama_cpp"]
    assert [r.code for r in out.reasons] == ["runtime_missing"]
    assert probe_runtime("llama_cpp", lambda n: True).status == "ok"
    assert probe_runtime("unknown-engine", lambda n: True).status == "fail"


def test_provider_check_reads_the_variable_name_only() -> None:
    cfg = ProviderSettings(base_url="http://127.0.0.1:9/v1", api_key_env="SOME_KEY", models=["m"])
    missing = check_provider("p", cfg, {"state": "closed"}, environ={})
    assert [r.code for r in missing.reasons] == ["provider_key_missing"]
    ok = check_provider("p", cfg, {"state": "closed"}, environ={"SOME_KEY": "sk-secret-value"})
    assert ok.status == "ok"
    assert "sk-secret-value" not in repr(ok)
    half = check_provider("p", cfg, {"state": "half_open"}, environ={"SOME_KEY": "x"})
    assert half.status == "warn"
    opened = check_provider(
        "p", cfg, {"state": "open", "seconds_until_half_open": 2.2}, environ={"SOME_KEY": "x"}
    )
    assert opened.status == "fail"
    assert "3 s" in opened.reasons[0].message


@pytest.mark.parametrize(
    ("subject", "wanted", "hit"),
    [
        ("provider:cloud", None, True),
        ("provider:cloud", "provider:cloud", True),
        ("breaker:cloud", "provider:cloud", True),
        ("provider:cloud", "cloud", True),
        ("model:cloud", "cloud", True),
        ("provider:cloud", "model:cloud", False),
        ("provider:cloudy", "cloud", False),
        ("download:m", "model:m", False),
    ],
)
def test_subject_filter(subject: str, wanted: str | None, hit: bool) -> None:
    assert matches(subject, wanted) is hit


def test_redact_masks_credentials_and_known_values() -> None:
    text = (
        "Authorization: Bearer abc.def\napi_key=sk-live-123456789\n"
        "token: t0k3n\nhttps://u:pw@h/x\nmy-own-secret-value here\n"
    )
    out = redact(text, ["my-own-secret-value"])
    for secret in ("abc.def", "sk-live-123456789", "t0k3n", "pw@", "my-own-secret-value"):
        assert secret not in out
    assert "here" in out


def test_human_bytes() -> None:
    assert human_bytes(None) == "unknown"
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 1024**3) == "3.0 GiB"


def _check(name: str, *codes: str, **detail: Any) -> CheckResult:
    facts = {"model": "m", "provider": "p", "seconds": 1, "env": "E", "capability": "llm"}
    facts.update({"free": "1 B", "low": "2 B", "engine": "e", "install": "x", "error": "e"})
    return result(name, [reason(c, name, **facts) for c in codes], **detail)


@pytest.mark.parametrize(
    ("models", "providers", "shared", "status"),
    [
        ([], [], [], "unavailable"),
        ([()], [], [], "available"),
        ([()], [()], [], "available"),
        ([("model_absent",)], [()], [], "degraded"),
        ([("model_absent",)], [("provider_circuit_open",)], [], "unavailable"),
        ([()], [("provider_recovering",)], [], "degraded"),
        ([()], [], [("disk_low",)], "degraded"),
        ([("model_absent",)], [], [("storage_unwritable",)], "unavailable"),
    ],
)
def test_capability_status_rules(
    models: list[tuple[str, ...]],
    providers: list[tuple[str, ...]],
    shared: list[tuple[str, ...]],
    status: str,
) -> None:
    from app.readiness.service import _capability

    out = _capability(
        "llm",
        [_check(f"model:m{i}", *codes) for i, codes in enumerate(models)],
        [_check(f"provider:p{i}", *codes) for i, codes in enumerate(providers)],
        [_check(f"storage:s{i}", *codes) for i, codes in enumerate(shared)],
    )
    assert out["status"] == status
    expected = {c for group in (*models, *providers, *shared) for c in group}
    if not models and not providers:
        expected.add("not_configured")
    assert {r["code"] for r in out["reasons"]} == expected
