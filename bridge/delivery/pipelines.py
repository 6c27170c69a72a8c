"""Customer.io Pipelines HTTP client: the only module that imports httpx.

It POSTs already-serialised calls to `{base}/batch` (or `/alias`) in strict mode and turns every
failure into one of the errors below; it never logs, and no error ever carries the request body,
the request headers or the write key.

    PipelinesError                 status: int | None, body: str (response, first 2 KB)
     +-- RetryableError            network error, timeout, 408, 429, 5xx; retry_after_s
     +-- PayloadTooLargeError      413, or over the size limits before sending: split the batch
     +-- BadRequestError           400, strict-mode validation failed; errors (meta.errors)
     +-- ConfigurationError        the settings are wrong, no call is: pause, never dead-letter
          +-- AuthError            401/403: wrong write key or workspace
          +-- EndpointError        404, 405, a redirect or an HTML page: PIPELINES_URL is wrong
     +-- FatalError                any other non-2xx: do not retry

`classify` is the one place that maps a response or exception to an error; `backoff_s` and
`retry_delay_s` are pure and say how long to wait before a retry.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Self

import httpx
import orjson

from bridge.delivery.calls import MAX_BATCH_BYTES, MAX_CALL_BYTES
from bridge.ids import iso_z

USER_AGENT = "cartbridge/0.1"
CONNECT_TIMEOUT_S = 5.0
MAX_ERROR_BODY_CHARS = 2048
MAX_ERRORS = 20
MAX_ERROR_CHARS = 500
RETRY_AFTER_MIN_S = 1.0
RETRY_AFTER_MAX_S = 3600.0

_EMPTY_BATCH = b'{"batch":[]}'


class PipelinesError(Exception):
    """A call to Pipelines failed; `status` is None when no response arrived."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "") -> None:
        # Only `message` goes into args, so the error pickles (RQ stores failed jobs' errors).
        super().__init__(message)
        self.status = status
        self.body = body


class RetryableError(PipelinesError):
    """Send the same calls again later; `retry_after_s` is the server's hint, if it gave one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.retry_after_s = retry_after_s


class PayloadTooLargeError(PipelinesError):
    """The request (or one call in it) is too large: split the batch; a lone call cannot be sent."""


class BadRequestError(PipelinesError):
    """Strict-mode validation rejected the whole request; `errors` is the server's list."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str = "",
        errors: list[str] | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.errors: list[str] = errors if errors is not None else []


class ConfigurationError(PipelinesError):
    """The workspace settings are wrong (the key or the URL), whatever the calls hold: the shop
    waits for the settings to be fixed; dead-lettering its calls would lose every one."""


class AuthError(ConfigurationError):
    """The write key was refused (401/403): fix the configuration, retrying cannot help."""


class EndpointError(ConfigurationError):
    """The answer came from something other than the Pipelines API (a 404 or 405, a redirect,
    an HTML page): PIPELINES_URL is wrong. No call is at fault, so none may be dead-lettered."""


class FatalError(PipelinesError):
    """Any other failure that retrying the same request cannot fix."""


def _truncate(body: bytes) -> str:
    return body[:MAX_ERROR_BODY_CHARS].decode("utf-8", errors="replace")


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if headers is None:
        return None
    if isinstance(headers, httpx.Headers):
        value = headers.get(name)
        return value if isinstance(value, str) else None
    # A plain dict (tests, other callers) is not case-insensitive.
    lower = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lower), None)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date), clamped to [1, 3600].

    Returns None for a missing or unparseable value; never raises.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    seconds: float
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, RETRY_AFTER_MIN_S), RETRY_AFTER_MAX_S)


def _meta_errors(body: bytes) -> list[str]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    meta = doc.get("meta") if isinstance(doc, dict) else None
    errors = meta.get("errors") if isinstance(meta, dict) else None
    if not isinstance(errors, list):
        return []
    return [str(e)[:MAX_ERROR_CHARS] for e in errors[:MAX_ERRORS]]


def classify(
    status: int | None,
    exc: Exception | None,
    headers: Mapping[str, str] | None,
    body: bytes,
    *,
    now: datetime | None = None,
) -> PipelinesError | None:
    """Map a response status (or the exception raised instead of one) to an error; 2xx -> None
    (unless it is an HTML page).

    Transport errors and timeouts are retryable, except a malformed URL or request, which is
    our bug. Raises ValueError when given neither a status nor an exception.
    """
    if exc is not None:
        what = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
            return FatalError(f"Pipelines request could not be made ({what})")
        if isinstance(exc, httpx.TimeoutException):
            return RetryableError(f"Pipelines timed out ({what})")
        if isinstance(exc, httpx.TransportError):
            return RetryableError(f"Pipelines network error ({what})")
        return FatalError(f"Pipelines request failed ({what})")
    if status is None:
        raise ValueError("classify needs a status or an exception")
    text = _truncate(body)
    if status in (408, 429) or 500 <= status < 600:
        # Before the HTML check: a proxy's 502 page is HTML and still means "try again".
        return RetryableError(
            f"Pipelines answered {status}",
            status=status,
            body=text,
            retry_after_s=parse_retry_after(_header(headers, "Retry-After"), now=now),
        )
    if status in (401, 403):
        return AuthError(f"Pipelines refused the write key ({status})", status=status, body=text)
    if status == 413:
        return PayloadTooLargeError("Pipelines: payload too large (413)", status=status, body=text)
    html = _is_html(headers, body)
    if status in (404, 405) or 300 <= status < 400 or html:
        # Even a 200: a website that answers any POST with a page has accepted nothing.
        return EndpointError(
            f"not the Pipelines API: it answered {status}" + (" with an HTML page" if html else ""),
            status=status,
            body=text,
        )
    if 200 <= status < 300:
        return None
    if status == 400:
        errors = _meta_errors(body)
        # The server's messages stay in `errors`, out of str(): they may quote call values.
        return BadRequestError(
            f"Pipelines rejected the request (400, {len(errors)} errors)",
            status=status,
            body=text,
            errors=errors,
        )
    return FatalError(f"Pipelines answered {status}", status=status, body=text)


def _is_html(headers: Mapping[str, str] | None, body: bytes) -> bool:
    """An HTML page: what a website, a login wall or a wrong path answers, never the API (whose
    answers are JSON)."""
    content_type = (_header(headers, "Content-Type") or "").lower()
    if "html" in content_type:
        return True
    head = body[:256].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def backoff_s(
    attempt: int,
    *,
    base_s: float = 1.0,
    cap_s: float = 600.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap_s, base_s * 2**attempt)].

    `attempt` counts from 0; `rng` returns a float in [0, 1). Pure apart from `rng`.
    """
    # 2**attempt overflows a float past ~1024; by 64 every sane cap is reached anyway.
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempt, 0), 64))
    return rng() * ceiling


def retry_delay_s(
    err: PipelinesError,
    attempt: int,
    rng: Callable[[], float] = random.random,
    *,
    base_s: float = 1.0,
    cap_s: float = 600.0,
) -> float:
    """Seconds to wait before retry number `attempt`: the server's Retry-After if it sent one.

    Retry-After is already clamped to [1, 3600] by `classify`, and is honoured as given even
    above `cap_s` (the server asked); otherwise `backoff_s`.
    """
    if isinstance(err, RetryableError) and err.retry_after_s is not None:
        return min(max(err.retry_after_s, RETRY_AFTER_MIN_S), RETRY_AFTER_MAX_S)
    return backoff_s(attempt, base_s=base_s, cap_s=cap_s, rng=rng)


def batch_body(calls: Sequence[bytes], sent_at: str) -> bytes:
    """`{"batch":[c1,...],"sentAt":"..."}` by byte concatenation: calls are not re-parsed."""
    return b'{"batch":[' + b",".join(calls) + b'],"sentAt":"' + sent_at.encode() + b'"}'


class PipelinesClient:
    """One long-lived keep-alive HTTP client for a Pipelines workspace; thread-safe.

    Every request is strict mode (`X-Strict-Mode: 1`) so bad calls fail loudly instead of
    being dropped with a 200. Methods raise `PipelinesError` subclasses only; they never log.
    """

    def __init__(
        self,
        base_url: str,
        write_key: str,
        *,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 8,
    ) -> None:
        base = base_url.rstrip("/")
        self._batch_url = f"{base}/batch"
        self._alias_url = f"{base}/alias"
        self._client = httpx.Client(
            auth=httpx.BasicAuth(write_key, ""),
            headers={
                "Content-Type": "application/json",
                "X-Strict-Mode": "1",
                "User-Agent": USER_AGENT,
            },
            timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
            follow_redirects=False,
        )

    def send_batch(self, calls: Sequence[bytes]) -> None:
        """POST the serialised calls to /batch as one request; an empty sequence sends nothing.

        Raises PayloadTooLargeError without sending when a call is over 32 KB or the body over
        500 KB (Pipelines would answer 200 and drop it), else whatever `classify` decides.
        """
        if not calls:
            return
        for raw in calls:
            if len(raw) > MAX_CALL_BYTES:
                raise PayloadTooLargeError(
                    f"a call is {len(raw)} bytes, over the 32 KB limit; not sent"
                )
        body = batch_body(calls, iso_z(datetime.now(UTC)))
        if len(body) > MAX_BATCH_BYTES:
            raise PayloadTooLargeError(
                f"batch of {len(calls)} calls is {len(body)} bytes, over the 500 KB limit; not sent"
            )
        self._post(self._batch_url, body)

    def send_alias(self, call: bytes) -> None:
        """POST one serialised alias call to /alias (the docs don't allow alias inside a batch).

        Raises PayloadTooLargeError without sending when the call is over 32 KB, else whatever
        `classify` decides.
        """
        if len(call) > MAX_CALL_BYTES:
            raise PayloadTooLargeError(f"alias call is {len(call)} bytes, over 32 KB; not sent")
        self._post(self._alias_url, call)

    def probe(self) -> None:
        """Check the write key with an empty batch; raises AuthError on 401/403.

        Other failures raise as `classify` decides (a BadRequestError would mean the key was
        accepted but the empty batch was not; how Pipelines treats one is unverified).
        """
        self._post(self._batch_url, _EMPTY_BATCH)

    def _post(self, url: str, body: bytes) -> None:
        err: PipelinesError | None
        try:
            resp = self._client.post(url, content=body)
        except httpx.HTTPError as exc:
            err = classify(None, exc, None, b"") or FatalError("unclassified transport failure")
        else:
            err = classify(resp.status_code, None, resp.headers, resp.content)
        # Raised outside the `except` so the error has no __context__: httpx exceptions hold
        # the request, and with it the Authorization header.
        if err is not None:
            raise err

    def close(self) -> None:
        """Close the pooled connections; the client cannot be used afterwards."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
