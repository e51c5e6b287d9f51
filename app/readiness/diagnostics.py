"""What ``/v1/diagnostics`` shows: every subject once, filterable by subject.

Subjects are ``kind:name``: ``provider:<name>`` (its breaker, retry budget and limiter),
``model:<id>`` (a model the runtime holds), ``download:<id>`` (a running download job). The
timeline records a provider's breaker as ``breaker:<name>``; it belongs to ``provider:<name>``
when filtering. A filter is a whole subject or a bare name (``cloud`` matches every kind).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from app.observability.timeline import Timeline
from app.readiness.runtime_view import RUNTIME_STATES, ModelRuntimeView, runtime_model_json
from app.readiness.service import GuardView

SUBJECT_PATTERN = r"^([a-z_]{1,32}:)?[A-Za-z0-9._-]{1,128}$"
_OWNER = {"breaker": "provider"}


def matches(subject: str, wanted: str | None) -> bool:
    if wanted is None:
        return True
    kind, _, name = subject.partition(":")
    want_kind, sep, want_name = wanted.partition(":")
    if not sep:
        return name == wanted
    return (_OWNER.get(kind, kind), name) == (_OWNER.get(want_kind, want_kind), want_name)


def diagnostics(
    *,
    guards: Mapping[str, GuardView],
    running_jobs: Callable[[], list[dict[str, Any]]] | None,
    runtime: ModelRuntimeView | None,
    timeline: Timeline,
    last: int,
    subject: str | None,
    secrets: Iterable[str],
) -> dict[str, Any]:
    providers = []
    for name, guard in guards.items():
        d = guard.diagnostics()
        providers.append(
            {
                "subject": f"provider:{name}",
                "provider": name,
                "breaker": d["breaker"],
                "retry_budget": d["retry_budget"],
                "limiter": d["limiter"],
                "throttle": d.get("throttle"),  # a 429's pause, if one is running
                "probes": d.get("probes"),  # active probes sent while the breaker was open
            }
        )
    models = []
    if runtime is not None:
        hidden = list(secrets)
        # Only models with a worker or a failure: an installed, idle model has nothing to show.
        models = [
            runtime_model_json(m, hidden)
            for m in runtime.runtime_models()
            if m.state in RUNTIME_STATES
        ]
    downloads = [{"subject": f"download:{j['model']}", **j} for j in (running_jobs or list)()]
    transitions = [t.as_json() for t in timeline.last() if matches(t.subject, subject)]
    return {
        "runtime": {"attached": runtime is not None},
        "providers": [p for p in providers if matches(p["subject"], subject)],
        "models": [m for m in models if matches(m["subject"], subject)],
        "downloads": [d for d in downloads if matches(d["subject"], subject)],
        "transitions": transitions[-last:],
    }
