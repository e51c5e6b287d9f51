"""The reason codes a readiness check can give, each with the action that fixes it.

A table, so the report, the text export, the status page and the docs all say the same thing.
``blocking`` reasons make the model or provider they name unusable; the others only degrade a
capability. Messages and actions are templates filled from the check's facts (model id,
provider name, variable name, seconds): never from exception text, never with a secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ReasonKind:
    blocking: bool
    message: str
    action: str


REASONS: dict[str, ReasonKind] = {
    "not_configured": ReasonKind(
        True,
        "No model or provider serves {capability}.",
        "add a model with capability {capability} to a manifest (KEEL_MODELS_MANIFEST) "
        "or a provider with it in `capabilities`",
    ),
    "model_absent": ReasonKind(
        True,
        "Model {model} is not installed.",
        "POST /v1/lifecycle/models/{model}/download (or `keel models pull {model}`)",
    ),
    "model_downloading": ReasonKind(
        True,
        "Model {model} is being downloaded.",
        "wait; progress: GET /v1/lifecycle/models/{model}/events",
    ),
    "model_download_failed": ReasonKind(
        True,
        "The last download of model {model} failed ({error}).",
        "POST /v1/lifecycle/models/{model}/download to retry; see GET /v1/readiness?format=text",
    ),
    "model_cooldown": ReasonKind(
        True,
        "Model {model} failed to load and is cooling down ({seconds} s left).",
        "wait {seconds} s, then POST /v1/lifecycle/models/{model}/load; "
        "stderr: GET /v1/diagnostics?subject=model:{model}",
    ),
    "model_error": ReasonKind(
        False,
        "Model {model} stopped with an error; the next request loads it again.",
        "POST /v1/lifecycle/models/{model}/load; stderr: GET /v1/diagnostics?subject=model:{model}",
    ),
    "runtime_missing": ReasonKind(
        True,
        "No runtime for engine {engine} is installed in Keel's environment.",
        "{install}",
    ),
    "provider_circuit_open": ReasonKind(
        True,
        "Provider {provider} is failing; its circuit breaker is open ({seconds} s to a trial).",
        "wait {seconds} s; details: GET /v1/diagnostics?subject=provider:{provider}",
    ),
    "provider_recovering": ReasonKind(
        False,
        "Provider {provider} is being probed after an outage (breaker half-open).",
        "none needed; GET /v1/diagnostics?subject=provider:{provider}",
    ),
    "provider_key_missing": ReasonKind(
        True,
        "Provider {provider} needs an API key in the environment variable {env}, which is unset.",
        "set {env} in Keel's environment and restart Keel",
    ),
    "storage_unwritable": ReasonKind(
        False,
        "The {capability} storage root cannot be written; downloads will fail.",
        'PUT /v1/lifecycle/storage {{"root": "<writable dir>", "create": true}}',
    ),
    "disk_low": ReasonKind(
        False,
        "The {capability} storage root has {free} free, under the {low} threshold.",
        "free space on that disk, or PUT /v1/lifecycle/storage to move the root",
    ),
    "database_unreachable": ReasonKind(
        False,
        "The database does not answer; conversations and downloads fail.",
        "check KEEL_DATABASE_URL and the database server; GET /readyz",
    ),
    "database_not_migrated": ReasonKind(
        False,
        "The database schema is behind this Keel version.",
        "run `keel migrate`",
    ),
    "check_timeout": ReasonKind(
        False,
        "The check {check} did not finish in time.",
        "GET /v1/readiness?refresh=true to run it again",
    ),
}


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    subject: str
    message: str
    action: str
    blocking: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "subject": self.subject,
            "message": self.message,
            "action": self.action,
        }


def reason(code: str, subject: str, **facts: Any) -> Reason:
    kind = REASONS[code]
    return Reason(
        code=code,
        subject=subject,
        message=kind.message.format(**facts),
        action=kind.action.format(**facts),
        blocking=kind.blocking,
    )


def human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
