"""``keel models pull ID...`` and ``keel models import ID --from PATH``.

``pull`` asks a running Keel (``KEEL_HOST``/``KEEL_PORT``, bearer ``KEEL_API_TOKEN`` when set)
to download, then draws one progress bar per model from the SSE events. ``import`` needs no
server and no network: it checks a local file against the manifest's size and SHA-256 while
copying it next to its final path, then fsyncs and renames it into place — the same guarantees
as a download (a file is never in its final path unverified).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import httpx

from app.lifecycle.hashing import fsync_dir
from app.lifecycle.manifest import FileSpec, ManifestError, ModelSpec, load_manifest
from app.lifecycle.storage import StorageRoots
from app.settings import Settings

_READ = 4 * 1024 * 1024
_RECONNECTS = 3


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = sub.add_parser("models", help="download, import and list model files")
    msub = models.add_subparsers(dest="models_command", required=True)
    pull = msub.add_parser("pull", help="download models through a running Keel, with progress")
    pull.add_argument("ids", nargs="+", metavar="ID")
    pull.add_argument("--url", help="Keel's base URL (default http://KEEL_HOST:KEEL_PORT)")
    pull.set_defaults(handler=_pull)
    imp = msub.add_parser("import", help="install a local copy of a model's file(s), verified")
    imp.add_argument("id", metavar="ID")
    imp.add_argument(
        "--from",
        dest="source",
        required=True,
        type=Path,
        metavar="PATH",
        help="the file (or a directory holding the model's files by name)",
    )
    imp.set_defaults(handler=_import)
    lst = msub.add_parser("list", help="list the manifest's models and their state")
    lst.add_argument("--url", help="Keel's base URL (default http://KEEL_HOST:KEEL_PORT)")
    lst.set_defaults(handler=_list)


# -- pull --------------------------------------------------------------------------------


def _base_url(settings: Settings, args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    host = settings.host if settings.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}"


def _headers(settings: Settings) -> dict[str, str]:
    token = settings.api_token.get_secret_value() if settings.api_token else None
    return {"Authorization": f"Bearer {token}"} if token else {}


def _pull(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(pull(_base_url(settings, args), _headers(settings), list(args.ids)))


async def pull(
    base_url: str, headers: dict[str, str], ids: list[str], out: TextIO | None = None
) -> int:
    bars = ProgressBars(ids, out or sys.stderr)
    timeout = httpx.Timeout(30.0, read=None)  # an SSE stream is idle between events
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout) as client:
        try:
            resp = await client.post("/v1/lifecycle/downloads", json={"models": ids})
        except httpx.TransportError:
            print(
                f"keel: cannot reach Keel at {base_url}; is `keel serve` running?", file=sys.stderr
            )
            return 1
        if resp.status_code >= 400:
            print(f"keel: {_problem(resp)}", file=sys.stderr)
            return 1
        results = await asyncio.gather(*(_follow(client, i, bars) for i in ids))
    bars.finish()
    return 0 if all(results) else 1


async def _follow(client: httpx.AsyncClient, model_id: str, bars: ProgressBars) -> bool:
    for attempt in range(_RECONNECTS + 1):
        try:
            async with client.stream("GET", f"/v1/lifecycle/models/{model_id}/events") as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    bars.fail(model_id, _problem(resp))
                    return False
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:])
                    bars.update(model_id, event)
                    if event["phase"] in ("ready", "failed"):
                        return bool(event["phase"] == "ready")
        except httpx.TransportError:
            if attempt == _RECONNECTS:
                bars.fail(model_id, "lost the connection to Keel")
                return False
        await asyncio.sleep(1.0)
    return False


def _problem(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        return f"{body.get('detail') or body.get('title')} ({body.get('code')})"
    except ValueError:
        return f"HTTP {resp.status_code}"


class ProgressBars:
    """One line per model: redrawn in place on a terminal, a line per change elsewhere."""

    WIDTH = 28

    def __init__(self, ids: list[str], out: TextIO) -> None:
        self.ids = ids
        self.out = out
        self.tty = out.isatty()
        self.lines = {i: f"{i}  waiting" for i in ids}
        self.last_step: dict[str, tuple[str, int]] = {}
        self.drawn = False

    def update(self, model_id: str, event: dict[str, Any]) -> None:
        phase = event["phase"]
        pct = float(event.get("percent") or 0.0)
        filled = int(self.WIDTH * pct / 100)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        rate = float(event.get("bytes_per_s") or 0.0) / 1e6
        line = (
            f"{model_id:<20} [{bar}] {pct:5.1f}%  {_mb(event.get('bytes', 0))}/"
            f"{_mb(event.get('total', 0))} MB  {rate:6.1f} MB/s  {phase}"
        )
        error = event.get("error")
        if error:
            line += f"  {error.get('code')}: {error.get('message', '')}"
        self.lines[model_id] = line
        self._emit(model_id, phase, pct)

    def fail(self, model_id: str, why: str) -> None:
        self.lines[model_id] = f"{model_id:<20} failed: {why}"
        self._emit(model_id, "failed", 0.0)

    def _emit(self, model_id: str, phase: str, pct: float) -> None:
        if self.tty:
            if self.drawn:
                self.out.write(f"\x1b[{len(self.ids)}F")
            for i in self.ids:
                self.out.write("\x1b[2K" + self.lines[i] + "\n")
            self.drawn = True
        else:
            step = (phase, int(pct // 10))
            if self.last_step.get(model_id) == step:
                return
            self.last_step[model_id] = step
            self.out.write(self.lines[model_id] + "\n")
        self.out.flush()

    def finish(self) -> None:
        self.out.flush()


def _mb(n: Any) -> str:
    return f"{int(n) / 1e6:.1f}"


# -- list --------------------------------------------------------------------------------


def _list(settings: Settings, args: argparse.Namespace) -> int:
    try:
        resp = httpx.get(
            _base_url(settings, args) + "/v1/lifecycle/models",
            headers=_headers(settings),
            timeout=10.0,
        )
    except httpx.TransportError:
        print("keel: cannot reach Keel; is `keel serve` running?", file=sys.stderr)
        return 1
    if resp.status_code >= 400:
        print(f"keel: {_problem(resp)}", file=sys.stderr)
        return 1
    for m in resp.json()["data"]:
        print(
            f"{m['id']:<24} {m['capability']:<10} {m['state']:<12} "
            f"{m['progress']['percent']:5.1f}%  {m['size'] / 1e6:.1f} MB"
        )
    return 0


# -- import ------------------------------------------------------------------------------


class ImportFailed(Exception):
    pass


def _import(settings: Settings, args: argparse.Namespace) -> int:
    try:
        installed = import_model(settings, args.id, args.source)
    except (ImportFailed, ManifestError) as exc:
        print(f"keel: {exc}", file=sys.stderr)
        return 1
    for path in installed:
        print(f"installed {path}")
    return 0


def import_model(settings: Settings, model_id: str, source: Path) -> list[Path]:
    manifest = load_manifest(settings.models_manifest)
    model = manifest.get(model_id)
    if model is None:
        raise ImportFailed(f"no model {model_id!r} in the manifest")
    sources = _sources(model, source)
    root = asyncio.run(_storage_root(settings, model))
    out = []
    for spec, src in sources:
        final = root / model.id / spec.name
        out.append(install_file(spec, src, final))
    return out


def _sources(model: ModelSpec, source: Path) -> list[tuple[FileSpec, Path]]:
    if source.is_dir():
        return [(spec, source / spec.name) for spec in model.files]
    if len(model.files) != 1:
        raise ImportFailed(
            f"{model.id} has {len(model.files)} files; pass a directory holding them by name"
        )
    return [(model.files[0], source)]


async def _storage_root(settings: Settings, model: ModelSpec) -> Path:
    """The model's storage root as the server would use it (roots persist in the database)."""
    from app.store.database import Database
    from app.store.migrate import upgrade_to_head

    db = Database(settings.effective_database_url, settings.store)
    storage = StorageRoots(db, settings.data_dir)
    try:
        if settings.auto_migrate:
            await upgrade_to_head(db)
        await storage.load()
    except Exception as exc:  # no usable database: the default root is the server's too
        print(f"keel: using the default storage root ({exc.__class__.__name__})", file=sys.stderr)
    finally:
        await db.dispose()
    return storage.model_dir(model).parent


def install_file(spec: FileSpec, source: Path, final: Path) -> Path:
    """Copy ``source`` next to ``final`` while hashing, check size and SHA-256, then fsync,
    rename into place and fsync the directory. Nothing is left behind on failure."""
    try:
        size = source.stat().st_size
    except OSError:
        raise ImportFailed(f"cannot read {source}") from None
    if size != spec.size:
        raise ImportFailed(
            f"{source} is {size} bytes; the manifest says {spec.size} for {spec.name}"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.import-{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with source.open("rb") as src, tmp.open("wb") as dst:
            while chunk := src.read(_READ):
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            if digest.hexdigest() != spec.sha256:
                raise ImportFailed(
                    f"{source} does not match the manifest's SHA-256 for "
                    f"{spec.name}; nothing was installed"
                )
            if dst.tell() != spec.size:
                raise ImportFailed(f"{source} changed while it was being copied")
            os.fsync(dst.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return final
