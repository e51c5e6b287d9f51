"""The operators' files (alert rules, Grafana dashboard) name only metrics Keel exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[3]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "keel-dashboard.json"

_NAME = re.compile(r"\bkeel_[a-z0-9_]+")
_SELECTOR = re.compile(r"(keel_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")
_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus adds at scrape time, and the histogram bucket label.
_EXTERNAL = {"instance", "job", "le"}


def _expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return exprs


def _exported(text: str) -> dict[str, set[str]]:
    """Every sample name /metrics can carry, with the label names its family uses."""
    families: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            families[name] = kind
    names: dict[str, set[str]] = {}
    for name, kind in families.items():
        names[name] = set()
        if kind == "histogram":
            names.update({name + s: set() for s in _SUFFIXES})
    return names


async def test_alerts_and_dashboard_use_only_exported_metrics(client: httpx.AsyncClient) -> None:
    from app.observability.metrics import Metrics

    text = (await client.get("/metrics")).text
    exported = _exported(text)
    labels: dict[str, set[str]] = {}
    for collector in vars(Metrics()).values():
        name = getattr(collector, "_name", None)
        if name is None:
            continue
        kind = getattr(collector, "_type", "")
        full = name + "_total" if kind == "counter" else name
        for sample in (full, *(full + s for s in _SUFFIXES)):
            labels[sample] = set(collector._labelnames)
    exprs = _expressions()
    assert len(exprs) >= 20
    used = {name for e in exprs for name in _NAME.findall(e)}
    assert used, "no metric found in the files"
    missing = sorted(used - set(exported))
    assert not missing, f"not on /metrics: {missing}"
    for expr in exprs:
        in_expr: set[str] = set()
        for name, body in _SELECTOR.findall(expr):
            for label in _MATCHER.findall(body):
                assert label in labels[name], f"{name} has no label {label!r}: {expr}"
        for name in _NAME.findall(expr):
            in_expr |= labels.get(name, set())
        for group in _GROUPING.findall(expr):
            for label in filter(None, (g.strip() for g in group.split(","))):
                assert label in in_expr | _EXTERNAL, f"no metric has label {label!r}: {expr}"


def test_alerts_cover_what_operators_asked_for() -> None:
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    text = " ".join(r["expr"] for r in rules)
    for needle in (
        'keel_breaker_state{state=~"open',
        "keel_retry_budget_exhausted_total",
        "keel_data_corruption_total",
        'reason="model_cooldown"',
        'reason="disk_low"',
    ):
        assert needle in text
    for rule in rules:
        assert rule["alert"].startswith("Keel")
        assert rule["annotations"]["summary"]
