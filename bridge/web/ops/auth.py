"""The ops console's login, roles and CSRF tokens.

A session is Flask's signed cookie (HttpOnly, SameSite=Strict, Secure unless
OPS_COOKIE_SECURE=false, path /ops, 12 hours from sign-in however it is used). Its signing
key is an HMAC, under the identity hash key, of both console tokens: rotating either token
ends every session. Logging in with OPS_ADMIN_TOKEN gives the `admin` role (replay, purge),
with OPS_TOKEN the `viewer` role.
Tokens are compared in constant time, as digests of equal length. Every POST but the login's
carries the session's CSRF token in a form field named `csrf`; every POST, the login's too, is
refused when the browser says it comes from another site (`Sec-Fetch-Site`, else `Origin`), so
another site cannot sign a browser in with a token of its choosing either. An address that
sent LOGIN_FAILURES_ALLOWED wrong tokens within LOGIN_WINDOW_S is refused until the window ends
(counted in Redis, so across the web's workers; named by a keyed hash of the address).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from flask import Flask, session

from bridge.config.settings import Settings

VIEWER = "viewer"
ADMIN = "admin"
SESSION_HOURS = 12
COOKIE_NAME = "cartbridge_ops"
MAX_TOKEN_CHARS = 512
LOGIN_FAILURES_ALLOWED = 10
LOGIN_WINDOW_S = 15 * 60


def enabled(settings: Settings) -> bool:
    """The console is served only when OPS_TOKEN is set."""
    return bool(settings.ops_token.get_secret_value())


def configure(app: Flask, settings: Settings) -> None:
    """Set the app's session signing key and cookie attributes for the console."""
    tokens = "\x1f".join(
        [settings.ops_token.get_secret_value(), settings.ops_admin_token.get_secret_value()]
    )
    app.secret_key = hmac.new(
        settings.email_hash_key, b"ops-session\x1f" + tokens.encode(), hashlib.sha256
    ).hexdigest()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_PATH="/ops",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.ops_cookie_secure,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
        # 12 hours from sign-in, not from the last page: a cookie re-signed on every request
        # would live for as long as it is used (a stolen one too).
        SESSION_REFRESH_EACH_REQUEST=False,
    )


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "replace")).digest()


def role_for(given: str, settings: Settings) -> str | None:
    """The role a login with `given` opens, or None. Both tokens are compared every time."""
    given = given[:MAX_TOKEN_CHARS]
    viewer = settings.ops_token.get_secret_value()
    admin = settings.ops_admin_token.get_secret_value()
    probe = _digest(given)
    is_admin = hmac.compare_digest(probe, _digest(admin)) and bool(admin)
    is_viewer = hmac.compare_digest(probe, _digest(viewer)) and bool(viewer)
    if is_admin and given:
        return ADMIN
    if is_viewer and given:
        return VIEWER
    return None


def open_session(role: str) -> None:
    session.clear()
    session.permanent = True
    session["role"] = role
    session["csrf"] = secrets.token_urlsafe(24)


def current_role() -> str | None:
    role = session.get("role")
    return role if role in (VIEWER, ADMIN) else None


def csrf_token() -> str:
    return str(session.get("csrf") or "")


def csrf_ok(given: str | None) -> bool:
    expected = csrf_token()
    return bool(expected and given) and hmac.compare_digest(_digest(given or ""), _digest(expected))


def client_key(address: str, settings: Settings) -> str:
    """The name under which a client's wrong logins are counted: a keyed hash of its address,
    or of its /64 for IPv6 (one host holds a whole /64 to rotate through). An address is
    personal data: it is neither stored nor logged."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        pass
    else:
        if ip.version == 6 and ip.ipv4_mapped is None:
            address = str(ipaddress.ip_network(f"{ip}/64", strict=False))
        elif ip.version == 6 and ip.ipv4_mapped is not None:
            address = str(ip.ipv4_mapped)
    mac = hmac.new(settings.email_hash_key, b"ops-login\x1f" + address.encode(), hashlib.sha256)
    return mac.hexdigest()[:16]


def cross_site(fetch_site: str | None, origin: str | None, host: str) -> bool:
    """Whether the browser says this request comes from another site: its `Sec-Fetch-Site`
    (every current browser sends it), else an `Origin` naming another host than `host`. A
    client that sends neither (curl, a script) is not a browser another site can drive."""
    if fetch_site is not None:
        return fetch_site.strip().lower() not in ("same-origin", "none")
    if origin is None:
        return False
    try:
        netloc = urlsplit(origin.strip()).netloc
    except ValueError:
        return True
    return netloc.lower() != host.lower()
