"""The plain-text readiness report a user pastes into a bug report.

Built only from the report's own fields plus version and platform: no URL, no environment
value, no token ever reaches it (the checks hold variable *names*, never values).
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

from app.readiness.reasons import human_bytes


def keel_version() -> str:
    try:
        return metadata.version("keel")
    except metadata.PackageNotFoundError:
        return "unknown"


def render_text(report: dict[str, Any], *, data_dir: str, database_kind: str) -> str:
    lines = [
        "Keel readiness report",
        f"generated   {report['generated_at']}",
        f"version     keel {keel_version()}",
        f"platform    {platform.platform()}; Python {sys.version.split()[0]}",
        f"database    {database_kind}",
        f"data dir    {data_dir}",
    ]
    if not report["complete"]:
        lines.append("note        some checks are still running")
    lines += ["", "Capabilities"]
    for cap, body in report["capabilities"].items():
        codes = ", ".join(r["code"] for r in body["reasons"]) or "-"
        lines.append(f"  {cap:<10} {body['status']:<12} {codes}")
    lines += ["", "Storage roots"]
    for root in report["storage"]:
        state = "writable" if root["writable"] else "NOT WRITABLE"
        if not root["exists"]:
            state += ", missing"
        caps = ",".join(root["capabilities"])
        lines.append(
            f"  {caps:<24} {root['path']}  free {human_bytes(root['free_bytes'])}  {state}"
        )
    lines += ["", "Checks"]
    actions: dict[str, dict[str, Any]] = {}
    for body in report["capabilities"].values():
        for r in body["reasons"]:
            actions.setdefault(r["code"] + r["subject"], r)
    for check in report["checks"]:
        ms = "-" if check["duration_ms"] is None else f"{check['duration_ms']:.1f} ms"
        codes = ", ".join(check["reasons"]) or "ok"
        lines.append(f"  [{check['status']:<7}] {check['name']:<32} {ms:>10}  {codes}")
    if actions:
        lines += ["", "What to do"]
        for r in actions.values():
            lines.append(f"  {r['code']} ({r['subject']}): {r['message']}")
            lines.append(f"      -> {r['action']}")
    return "\n".join(lines) + "\n"
