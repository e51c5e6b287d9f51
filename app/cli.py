"""The ``keel`` command: serve, migrate, config, and ``models`` (app/lifecycle/cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
from collections.abc import Callable, Sequence

from app.settings import (
    ConfigError,
    Settings,
    config_file_path,
    load_settings,
    redacted_dump,
)
from app.settings_errors import prepare_data_dir


def _tune_gc() -> None:
    """Once start-up is done: what was built lives as long as the process, so move it out of
    the collector's generations (collections under load then scan request garbage only), and
    raise the gen-0 threshold: each request allocates a few hundred container objects, and the
    default (700) ran a collection every couple of requests at load. Only ``keel serve`` does
    this; apps built by tests keep the interpreter's defaults."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.server import http_protocol

    uvicorn.run(
        create_app(settings, on_ready=_tune_gc),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # Keel reads no client address or scheme, so it trusts no X-Forwarded-* header.
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        http=http_protocol(settings.header_timeout_s, settings.body_timeout_s),
        workers=None,
    )
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from app.store.database import Database
    from app.store.migrate import upgrade_to_head

    async def run() -> None:
        db = Database(settings.effective_database_url, settings.store)
        try:
            await upgrade_to_head(db)
        finally:
            await db.dispose()

    asyncio.run(run())
    print("database migrated to head")
    return 0


def _config(settings: Settings, args: argparse.Namespace) -> int:
    path = config_file_path()
    loaded = str(path.resolve()) if path is not None else None
    print(json.dumps({"config_file": loaded, **redacted_dump(settings)}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keel", description="Keel: dependable AI models.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", help="bind address (overrides KEEL_HOST)")
    serve.add_argument("--port", type=int, help="bind port (overrides KEEL_PORT)")
    serve.set_defaults(handler=_serve)
    sub.add_parser("migrate", help="migrate the database to head").set_defaults(handler=_migrate)
    sub.add_parser(
        "config", help="print the effective configuration, secrets redacted"
    ).set_defaults(handler=_config)
    from app.lifecycle.cli import register as register_models

    register_models(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Flags win over the environment and the file: passed on as the variables they override,
    # so every later reader of the settings sees the same values.
    for flag, env in (("host", "KEEL_HOST"), ("port", "KEEL_PORT")):
        if getattr(args, flag, None) is not None:
            os.environ[env] = str(getattr(args, flag))
    try:
        settings = load_settings()
        if args.handler is not _config:
            prepare_data_dir(settings.data_dir)
    except ConfigError as exc:
        print(f"keel: {exc}", file=sys.stderr)
        return 2
    handler: Callable[[Settings, argparse.Namespace], int] = args.handler
    return handler(settings, args)


if __name__ == "__main__":
    sys.exit(main())
