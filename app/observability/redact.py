"""Secrets that ride inside URLs, masked before a URL or a log line leaves the process.

Two places hide credentials in a URL: the userinfo (``scheme://user:password@host``, and for an
upstream ``base_url`` a lone ``token@host`` too) and the query string (``?password=...``, which
asyncpg and libpq accept). ``keel config``, diagnostics and every log line pass through here
(DESIGN §10).
"""

from __future__ import annotations

import re

MASK = "***"

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#@\s\"']*)@")
_SECRET_PARAM = re.compile(
    r"(?i)(?P<name>[?&;](?:password|passwd|pwd|pass|secret|client_secret|token|access_token"
    r"|api_key|apikey|api-key|key|sslpassword|auth|authorization|sig|signature)=)"
    r"(?P<value>[^&#\s\"']*)"
)


def redact_url(url: str, *, keep_user: bool = True) -> str:
    """``url`` with its password (and, with ``keep_user=False``, its whole userinfo) and its
    secret-looking query parameters masked."""

    def userinfo(m: re.Match[str]) -> str:
        user, colon, _ = m["userinfo"].partition(":")
        if keep_user and not colon:
            return m[0]
        kept = f"{user}:{MASK}" if keep_user else MASK
        return f"{m['scheme']}{kept}@"

    return _SECRET_PARAM.sub(_mask_param, _USERINFO.sub(userinfo, url))


def redact_text(text: str) -> str:
    """Every URL's userinfo and secret query parameters in free text (a log line, an error):
    a line cannot tell a database user from a token placed before the @."""
    if "@" not in text and "=" not in text:
        return text
    return redact_url(text, keep_user=False)


def _mask_param(m: re.Match[str]) -> str:
    return m["name"] + MASK if m["value"] else m[0]
