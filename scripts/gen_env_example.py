"""Write .env.example from Settings, so it lists every setting with its real default.

.venv/bin/python scripts/gen_env_example.py          # rewrite .env.example
.venv/bin/python scripts/gen_env_example.py --check  # exit 1 when it is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.settings import Settings

HEADER = [
    "# Every Keel setting with its default. Export them (or use your process manager's env file).",
    "# Priority: defaults < TOML (KEEL_CONFIG or ./keel.toml) < these variables.",
    "# Nested settings use __ (KEEL_RESILIENCE__RETRY__MAX_ATTEMPTS). Providers and routes are",
    "# TOML tables: see README.md and DESIGN.md section 2.",
    "",
]
DOCS = {
    "host": "bind address; anything but loopback requires KEEL_API_TOKEN",
    "port": "bind port",
    "data_dir": "where the SQLite database, models and partial downloads live",
    "database_url": "SQLAlchemy URL; default sqlite+aiosqlite:///<data_dir>/keel.db; "
    "postgresql+asyncpg://user@host/db for replicas",
    "api_token": "bearer token required on /v1/* (at least 16 characters); unset = loopback only",
    "config": "TOML config file; default ./keel.toml when present",
    "models_manifest": "extra model manifests, ':'-separated paths",
    "auto_migrate": "migrate the database at start; false when replicas migrate as a deploy step",
    "log_format": "auto (JSON unless a terminal) | json | text",
    "log_level": "DEBUG | INFO | WARNING | ERROR",
    "max_body_bytes": "request body limit in bytes (413 beyond)",
    "timeline_size": "state transitions kept for /v1/diagnostics",
    "allowed_hosts": "Host header names accepted, comma-separated, '*' = any; "
    "default: localhost, 127.0.0.1, ::1 and KEEL_HOST",
    "cors_origins": "browser origins (scheme://host:port) allowed to call the API, "
    "comma-separated; default none",
    "header_timeout_s": "a request's headers must arrive within this many seconds (else closed)",
    "body_timeout_s": "a request's body must arrive within this many seconds after its headers",
    "direct_routes": "chat, embeddings and completions skip FastAPI's router (same answers)",
}


def render() -> str:
    lines = list(HEADER)

    def emit(prefix: str, model: BaseModel) -> None:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if name in ("providers", "routes"):
                continue
            if isinstance(value, BaseModel):
                lines.append(f"# --- [{(prefix + name).replace('__', '.')}] ---")
                emit(prefix + name + "__", value)
                continue
            env = "KEEL_" + (prefix + name).upper()
            desc = DOCS.get(name) if not prefix else None
            desc = desc or field.description or name.replace("_", " ")
            text = (
                ""
                if value is None
                else str(value).lower()
                if isinstance(value, bool)
                else ",".join(value)
                if isinstance(value, list)
                else (str(value))
            )
            lines.append(f"# {desc}")
            lines.append(f"{'# ' if value is None else ''}{env}={text}")

    emit("", Settings())
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / ".env.example"
    if "--check" in sys.argv:
        sys.exit(0 if target.read_text() == render() else 1)
    target.write_text(render())
