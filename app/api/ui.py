"""``GET /ui``: the status page, one self-contained HTML file (no build step, no CDN).

Served with a strict Content-Security-Policy: scripts and styles run only when their hash is
the one of the page's own inline blocks, the page may talk to this origin only, and nothing
may frame it. The page learns whether Keel wants a token from a meta tag filled in here, so it
asks for the token before its first call instead of provoking a 401. ``/ui`` itself is outside
``/v1`` and needs no token: it holds no data.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from app.api.deps import SettingsDep

router = APIRouter(include_in_schema=False)

PAGE = Path(__file__).with_name("ui.html")
_AUTH_SLOT = "__KEEL_AUTH__"


def _hashes(html: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks
    )


@cache
def page() -> tuple[str, str]:
    """The page and its CSP, read once (the file ships inside the package)."""
    html = PAGE.read_text(encoding="utf-8")
    csp = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_hashes(html, 'script')}",
            f"style-src {_hashes(html, 'style')}",
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return html, csp


@router.get("/ui", response_class=HTMLResponse)
async def status_page(settings: SettingsDep) -> HTMLResponse:
    html, csp = page()
    auth = "required" if settings.api_token is not None else "none"
    return HTMLResponse(
        html.replace(_AUTH_SLOT, auth, 1),
        headers={
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )
