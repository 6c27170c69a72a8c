"""PipelinesClient against the real loopback stand-in (and a recording MockTransport where the
exact request matters), plus `classify`, `parse_retry_after` and the backoff as pure functions."""

from __future__ import annotations

import base64
import pickle
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.delivery.pipelines import (
    USER_AGENT,
    AuthError,
    BadRequestError,
    EndpointError,
    FatalError,
    PayloadTooLargeError,
    PipelinesClient,
    PipelinesError,
    RetryableError,
    backoff_s,
    batch_body,
    classify,
    parse_retry_after,
    retry_delay_s,
)
from tests.pipelines_standin import PipelinesStandIn

KEY = "wk-secret-123"
NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def call(i: int = 0, **extra: Any) -> bytes:
    body = {"type": "track", "userId": f"u{i}", "event": "Order Completed", "messageId": f"m{i}"}
    return orjson.dumps(body | extra)


@pytest.fixture
def standin() -> Iterator[PipelinesStandIn]:
    with PipelinesStandIn(write_keys={KEY}) as s:
        yield s


@pytest.fixture
def pipelines(standin: PipelinesStandIn) -> Iterator[PipelinesClient]:
    with PipelinesClient(standin.url, KEY, timeout_s=5.0) as client:
        yield client


class Recorder:
    """A MockTransport that keeps every request and answers with a fixed response."""

    def __init__(self, status: int = 200, body: bytes = b"{}") -> None:
        self.requests: list[httpx.Request] = []
        self.status = status
        self.body = body
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, content=self.body)


# -- success and the request as sent ---------------------------------------------------------


def test_send_batch_delivers_every_call(
    pipelines: PipelinesClient, standin: PipelinesStandIn
) -> None:
    pipelines.send_batch([call(1), call(2), call(3)])

    assert standin.message_ids() == ["m1", "m2", "m3"]
    assert standin.records[0].write_key == KEY


def test_body_is_the_calls_bytes_verbatim_plus_sent_at() -> None:
    rec = Recorder()
    # orjson writes a 19-digit integer exactly; a float round trip would change it.
    calls = [call(1, properties={"order_id": 1234567890123456789}), b'{"type":"identify","x":1}']
    with PipelinesClient("https://cdp.example/v1", KEY, transport=rec.transport) as client:
        client.send_batch(calls)

    (req,) = rec.requests
    assert req.method == "POST"
    assert str(req.url) == "https://cdp.example/v1/batch"
    body = req.content
    prefix = b'{"batch":[' + calls[0] + b"," + calls[1] + b'],"sentAt":"'
    assert body.startswith(prefix)
    assert re.fullmatch(rb'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"\}', body[len(prefix) - 1 :])
    assert orjson.loads(body)["batch"][0]["properties"]["order_id"] == 1234567890123456789


def test_19_digit_id_survives_to_the_server(
    pipelines: PipelinesClient, standin: PipelinesStandIn
) -> None:
    pipelines.send_batch([call(1, properties={"order_id": 1234567890123456789})])

    assert standin.calls[0]["properties"]["order_id"] == 1234567890123456789


def test_headers_basic_auth_strict_mode_and_user_agent() -> None:
    rec = Recorder()
    with PipelinesClient("https://cdp.example/v1/", KEY, transport=rec.transport) as client:
        client.send_batch([call()])

    headers = rec.requests[0].headers
    assert headers["Authorization"] == "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    assert headers["X-Strict-Mode"] == "1"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == USER_AGENT
    assert str(rec.requests[0].url) == "https://cdp.example/v1/batch"  # trailing slash dropped


def test_send_alias_posts_one_call_to_alias(
    pipelines: PipelinesClient, standin: PipelinesStandIn
) -> None:
    pipelines.send_alias(orjson.dumps({"previousId": "a@example.com", "userId": "42"}))

    assert standin.calls == [{"previousId": "a@example.com", "userId": "42", "type": "alias"}]


def test_empty_batch_sends_nothing(pipelines: PipelinesClient, standin: PipelinesStandIn) -> None:
    pipelines.send_batch([])

    assert standin.requests == 0


def test_probe_passes_with_a_good_key_and_raises_auth_error_with_a_bad_one(
    pipelines: PipelinesClient, standin: PipelinesStandIn
) -> None:
    pipelines.probe()
    with PipelinesClient(standin.url, "nope") as bad, pytest.raises(AuthError):
        bad.probe()
    assert standin.calls == []


def test_keep_alive_reuses_one_connection(
    pipelines: PipelinesClient, standin: PipelinesStandIn
) -> None:
    for i in range(10):
        pipelines.send_batch([call(i)])

    assert standin.requests == 10
    assert standin.connections == 1


# -- failures --------------------------------------------------------------------------------


def test_wrong_key_is_auth_error_without_the_key(standin: PipelinesStandIn) -> None:
    with PipelinesClient(standin.url, "wrong-key-456") as client, pytest.raises(AuthError) as info:
        client.send_batch([call()])

    err = info.value
    assert err.status == 401
    assert "Unauthorized" in err.body
    assert "wrong-key-456" not in f"{err} {err.body} {err!r}"


def test_strict_400_is_bad_request_with_the_server_errors(
    pipelines: PipelinesClient, standin: PipelinesStandIn
) -> None:
    no_event = orjson.dumps({"type": "track", "userId": "1", "messageId": "m"})

    with pytest.raises(BadRequestError) as info:
        pipelines.send_batch([call(0), no_event])

    assert info.value.status == 400
    assert info.value.errors == ["batch[1]: track needs event"]
    assert "userId" not in str(info.value)  # server text stays out of str()
    assert standin.calls == []


def test_server_413_is_payload_too_large() -> None:
    with (
        PipelinesStandIn(write_keys={KEY}, max_request_bytes=500) as s,
        PipelinesClient(s.url, KEY) as client,
        pytest.raises(PayloadTooLargeError) as info,
    ):
        client.send_batch([call(i) for i in range(10)])

    assert info.value.status == 413


# The documented limits (pipelines-api.md section 3: "One call 32 KB", "One batch 500 KB"), as
# literals: the client's own constants would make these tests agree with any limit it had.
CALL_LIMIT = 32 * 1024
BATCH_LIMIT = 500 * 1024


def sized(size: int, i: int = 0) -> bytes:
    """A serialised call of exactly `size` bytes."""
    base = len(call(i, properties={"pad": ""}))
    raw = call(i, properties={"pad": "x" * (size - base)})
    assert len(raw) == size
    return raw


def test_oversize_call_or_batch_is_refused_before_sending(
    pipelines: PipelinesClient, standin: PipelinesStandIn
) -> None:
    huge_call = sized(CALL_LIMIT + 1)
    with pytest.raises(PayloadTooLargeError) as one:
        pipelines.send_batch([call(1), huge_call])
    with pytest.raises(PayloadTooLargeError):
        pipelines.send_alias(huge_call)
    fat = call(properties={"pad": "x" * 30_000})
    with pytest.raises(PayloadTooLargeError) as many:
        pipelines.send_batch([fat] * (BATCH_LIMIT // len(fat) + 1))

    assert one.value.status is None and many.value.status is None
    assert standin.requests == 0


def test_a_call_of_exactly_32_kb_is_sent_and_accepted(
    pipelines: PipelinesClient, standin: PipelinesStandIn
) -> None:
    pipelines.send_batch([sized(CALL_LIMIT, 1)])

    assert standin.message_ids() == ["m1"]


@pytest.mark.parametrize("status", [500, 502, 503, 408])
def test_5xx_and_408_are_retryable(
    pipelines: PipelinesClient, standin: PipelinesStandIn, status: int
) -> None:
    standin.script(status)

    with pytest.raises(RetryableError) as info:
        pipelines.send_batch([call()])

    assert info.value.status == status
    assert info.value.retry_after_s is None
    assert "stand-in fault" in info.value.body


def test_429_retry_after_seconds(pipelines: PipelinesClient, standin: PipelinesStandIn) -> None:
    standin.script((429, {"Retry-After": "7"}))

    with pytest.raises(RetryableError) as info:
        pipelines.send_batch([call()])

    assert (info.value.status, info.value.retry_after_s) == (429, 7.0)


def test_503_retry_after_http_date(pipelines: PipelinesClient, standin: PipelinesStandIn) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    standin.script((503, {"Retry-After": format_datetime(when, usegmt=True)}))

    with pytest.raises(RetryableError) as info:
        pipelines.send_batch([call()])

    assert info.value.retry_after_s is not None
    assert 115 <= info.value.retry_after_s <= 120


@pytest.mark.parametrize(("fault", "accepted"), [("drop_before", 0), ("drop_after", 1)])
def test_a_dropped_connection_is_retryable_and_the_next_send_reconnects(
    pipelines: PipelinesClient, standin: PipelinesStandIn, fault: str, accepted: int
) -> None:
    standin.script(fault)

    with pytest.raises(RetryableError) as info:
        pipelines.send_batch([call(1)])
    assert info.value.status is None
    assert len(standin.calls) == accepted  # drop_after: delivered, but the answer was lost
    # No reference back to the httpx exception, whose request holds the Authorization header.
    assert info.value.__context__ is None and info.value.__cause__ is None

    pipelines.send_batch([call(2)])
    assert standin.message_ids()[-1] == "m2"
    assert standin.connections == 2


def test_timeout_is_retryable() -> None:
    with (
        PipelinesStandIn(write_keys={KEY}, delay_s=2.0) as s,
        PipelinesClient(s.url, KEY, timeout_s=0.1) as client,
        pytest.raises(RetryableError, match="timed out"),
    ):
        client.send_batch([call()])


def test_connection_refused_is_retryable() -> None:
    s = PipelinesStandIn(write_keys={KEY}).start()
    url = s.url
    s.stop()
    with PipelinesClient(url, KEY) as client, pytest.raises(RetryableError, match="network"):
        client.send_batch([call()])


def test_other_4xx_is_fatal() -> None:
    rec = Recorder(409, b'{"meta":{"errors":["conflict"]}}')
    with (
        PipelinesClient("https://cdp.example/v1", KEY, transport=rec.transport) as client,
        pytest.raises(FatalError) as info,
    ):
        client.send_batch([call()])

    assert (info.value.status, info.value.body) == (409, '{"meta":{"errors":["conflict"]}}')


def test_a_404_page_means_the_url_is_wrong_not_the_call() -> None:
    rec = Recorder(404, b"<html>not here</html>")
    with (
        PipelinesClient("https://cdp.example/v1", KEY, transport=rec.transport) as client,
        pytest.raises(EndpointError) as info,
    ):
        client.send_batch([call()])

    assert (info.value.status, info.value.body) == (404, "<html>not here</html>")


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind"),
    [
        (200, {"Content-Type": "text/html"}, b"<p>hi</p>", EndpointError),
        (200, {}, b"  <!DOCTYPE html><html></html>", EndpointError),
        (400, {"Content-Type": "text/html"}, b"<html>bad</html>", EndpointError),
        (405, {}, b"", EndpointError),
        (302, {"Location": "https://example.com/"}, b"", EndpointError),
        # A proxy's error page is HTML too, and still means "try again later".
        (502, {"Content-Type": "text/html"}, b"<html>Bad Gateway</html>", RetryableError),
        (401, {"Content-Type": "text/html"}, b"<html>no</html>", AuthError),
        (200, {"Content-Type": "application/json"}, b"{}", None),
    ],
)
def test_answers_that_are_not_the_api_are_endpoint_errors(
    status: int, headers: dict[str, str], body: bytes, kind: type[PipelinesError] | None
) -> None:
    err = classify(status, None, headers, body)
    assert (type(err) if err is not None else None) is kind


@pytest.mark.parametrize(
    "err",
    [
        RetryableError("r", status=503, body="b", retry_after_s=3.0),
        BadRequestError("b", status=400, body="{}", errors=["e"]),
        AuthError("a", status=401),
        PayloadTooLargeError("p"),
    ],
)
def test_errors_pickle_with_their_fields(err: PipelinesError) -> None:
    back = pickle.loads(pickle.dumps(err))

    assert type(back) is type(err)
    assert (str(back), back.__dict__) == (str(err), err.__dict__)


# -- classify (pure) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, None),
        (204, None),
        (400, BadRequestError),
        (401, AuthError),
        (403, AuthError),
        (404, EndpointError),
        (408, RetryableError),
        (409, FatalError),
        (413, PayloadTooLargeError),
        (422, FatalError),
        (429, RetryableError),
        (500, RetryableError),
        (503, RetryableError),
        (599, RetryableError),
        (301, EndpointError),
    ],
)
def test_classify_status(status: int, kind: type[PipelinesError] | None) -> None:
    err = classify(status, None, {}, b"")

    if kind is None:
        assert err is None
    else:
        assert type(err) is kind
        assert err is not None and err.status == status


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused"), RetryableError),
        (httpx.ReadTimeout("slow"), RetryableError),
        (httpx.ConnectTimeout("slow"), RetryableError),
        (httpx.RemoteProtocolError("hung up"), RetryableError),
        (httpx.ReadError("reset"), RetryableError),
        (httpx.UnsupportedProtocol("ftp"), FatalError),
        (httpx.LocalProtocolError("bad header"), FatalError),
        (ValueError("odd"), FatalError),
    ],
)
def test_classify_exception(exc: Exception, kind: type[PipelinesError]) -> None:
    err = classify(None, exc, None, b"")

    assert type(err) is kind
    assert err is not None and err.status is None


def test_classify_needs_a_status_or_an_exception() -> None:
    with pytest.raises(ValueError, match="status or an exception"):
        classify(None, None, None, b"")


def test_classify_400_parses_and_truncates_meta_errors() -> None:
    body = orjson.dumps({"meta": {"errors": ["x" * 3000] + [f"e{i}" for i in range(50)]}})

    err = classify(400, None, None, body)

    assert isinstance(err, BadRequestError)
    assert len(err.errors) == 20
    assert err.errors[0] == "x" * 500
    assert len(err.body) == 2048


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"meta":{"errors":"one"}}'])
def test_classify_400_without_a_usable_error_list(body: bytes) -> None:
    err = classify(400, None, None, body)

    assert isinstance(err, BadRequestError)
    assert err.errors == []


def test_classify_body_is_truncated_and_decoded_leniently() -> None:
    err = classify(502, None, None, b"\xff" + b"a" * 5000)

    assert err is not None
    assert err.body.startswith("\ufffd") and len(err.body) == 2048


def test_classify_reads_retry_after_case_insensitively() -> None:
    cases = ({"retry-after": "5"}, {"RETRY-AFTER": "5"}, httpx.Headers({"Retry-After": "5"}))
    for headers in cases:
        err = classify(429, None, headers, b"")
        assert isinstance(err, RetryableError) and err.retry_after_s == 5.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("1", 1.0),
        ("2.5", 2.5),
        ("0", 1.0),
        ("-3", 1.0),
        ("86400", 3600.0),
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        (format_datetime(NOW - timedelta(seconds=90), usegmt=True), 1.0),
        (format_datetime(NOW + timedelta(days=2), usegmt=True), 3600.0),
        ("Sat, 28 Nov 2026 12:00:30 GMT", 30.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


# -- backoff (pure) --------------------------------------------------------------------------


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    assert backoff_s(0, rng=lambda: 0.5) == 0.5
    assert backoff_s(3, rng=lambda: 0.5) == 4.0
    assert backoff_s(3, rng=lambda: 0.0) == 0.0
    assert backoff_s(20, rng=lambda: 0.5) == 300.0
    assert backoff_s(5000, rng=lambda: 0.5, cap_s=60.0) == 30.0  # no float overflow
    assert backoff_s(-1, rng=lambda: 0.5) == 0.5


@given(
    attempt=st.integers(min_value=-5, max_value=5000),
    u=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    base=st.floats(min_value=0.01, max_value=10.0),
    cap=st.floats(min_value=0.1, max_value=3600.0),
)
def test_backoff_stays_within_zero_and_its_ceiling(
    attempt: int, u: float, base: float, cap: float
) -> None:
    delay = backoff_s(attempt, base_s=base, cap_s=cap, rng=lambda: u)

    assert 0.0 <= delay <= min(cap, base * 2.0 ** min(max(attempt, 0), 64))


@given(
    seconds=st.integers(min_value=-(10**6), max_value=10**6),
    attempt=st.integers(min_value=0, max_value=100),
)
def test_retry_after_is_honoured_within_its_clamp(seconds: int, attempt: int) -> None:
    err = classify(503, None, {"Retry-After": str(seconds)}, b"")
    assert isinstance(err, RetryableError)

    delay = retry_delay_s(err, attempt, rng=lambda: 0.99)

    assert 1.0 <= delay <= 3600.0
    assert delay == min(max(float(seconds), 1.0), 3600.0)


@given(attempt=st.integers(min_value=0, max_value=100), u=st.floats(0.0, 1.0, exclude_max=True))
def test_without_retry_after_the_delay_is_the_backoff(attempt: int, u: float) -> None:
    err = RetryableError("x", status=500)

    assert retry_delay_s(err, attempt, lambda: u) == backoff_s(attempt, rng=lambda: u)
    assert 0.0 <= retry_delay_s(err, attempt, lambda: u) <= 600.0


def test_batch_body_concatenates_bytes() -> None:
    assert batch_body([b"{}", b"[1]"], "T") == b'{"batch":[{},[1]],"sentAt":"T"}'
