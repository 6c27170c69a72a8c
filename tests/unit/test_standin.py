"""The Pipelines stand-in answers like the documented API, records what it accepts, and injects
faults in order; these are real HTTP requests over loopback."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.pipelines_standin import Fault, PipelinesStandIn, as_fault, call_problem

KEY = "wk-standin"
# What the docs say the real API does (/work/shared/docs/pipelines-api.md), written here as
# literals: neither the bridge's constants nor the stand-in's own are what these tests check
# against. Section 3: "One call 32 KB", "One batch 500 KB in total, and 32 KB per call inside
# it"; KB is read as 1024 bytes, as Customer.io's Python client does (`MAX_MSG_SIZE = 32<<10`).
CALL_LIMIT = 32 * 1024
BATCH_LIMIT = 500 * 1024
# Section 3, the 401 response's text.
UNAUTHORIZED = "Unauthorized request. Make sure that you provided the right credentials."


def _auth(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def track(i: int = 0, **extra: Any) -> dict[str, Any]:
    call = {"type": "track", "userId": f"u{i}", "event": "Order Completed", "messageId": f"m{i}"}
    return call | extra


@pytest.fixture
def standin() -> Iterator[PipelinesStandIn]:
    with PipelinesStandIn(write_keys={KEY}) as s:
        yield s


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as c:
        yield c


def post(
    http: httpx.Client,
    standin: PipelinesStandIn,
    endpoint: str,
    body: Any,
    *,
    key: str = KEY,
    strict: bool = True,
    content_type: str = "application/json",
) -> httpx.Response:
    headers = {"Authorization": _auth(key), "Content-Type": content_type}
    if strict:
        headers["X-Strict-Mode"] = "1"
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return http.post(f"{standin.url}/{endpoint}", content=content, headers=headers)


def errors_of(resp: httpx.Response) -> list[str]:
    errors = resp.json()["meta"]["errors"]
    assert isinstance(errors, list)
    return errors


# -- documented behaviour --------------------------------------------------------------------


def test_valid_batch_is_accepted_and_recorded_in_order(
    standin: PipelinesStandIn, http: httpx.Client
) -> None:
    resp = post(http, standin, "batch", {"batch": [track(1), track(2)], "sentAt": "x"})

    assert (resp.status_code, resp.content) == (200, b"{}")
    assert standin.message_ids() == ["m1", "m2"]
    assert [r.write_key for r in standin.records] == [KEY, KEY]
    assert standin.requests == 1
    assert standin.request_call_counts == [2]


def test_empty_batch_is_valid(standin: PipelinesStandIn, http: httpx.Client) -> None:
    assert post(http, standin, "batch", {"batch": []}).status_code == 200
    assert standin.calls == []


def test_single_call_endpoints_set_the_type(standin: PipelinesStandIn, http: httpx.Client) -> None:
    post(http, standin, "identify", {"userId": "7", "traits": {"plan": "x"}})
    post(http, standin, "track", {"anonymousId": "a", "event": "Cart Viewed"})

    assert [c["type"] for c in standin.calls] == ["identify", "track"]


@pytest.mark.parametrize("key", ["wrong-key", ""])
def test_strict_bad_key_is_401(standin: PipelinesStandIn, http: httpx.Client, key: str) -> None:
    resp = post(http, standin, "batch", {"batch": [track()]}, key=key)

    assert resp.status_code == 401
    assert errors_of(resp) == [UNAUTHORIZED]
    assert standin.calls == []


def test_missing_authorization_is_401(standin: PipelinesStandIn, http: httpx.Client) -> None:
    resp = http.post(
        f"{standin.url}/batch",
        content=b'{"batch":[]}',
        headers={"Content-Type": "application/json", "X-Strict-Mode": "1"},
    )
    assert resp.status_code == 401


def test_strict_missing_type_rejects_the_whole_batch(
    standin: PipelinesStandIn, http: httpx.Client
) -> None:
    bad = track(2)
    del bad["type"]

    resp = post(http, standin, "batch", {"batch": [track(1), bad]})

    assert resp.status_code == 400
    assert errors_of(resp) == ["batch[1]: type is required in a batch call"]
    assert standin.calls == []  # the valid call is not accepted either
    assert standin.dropped == []  # a strict rejection is an answer, not a silent drop


@pytest.mark.parametrize(
    ("endpoint", "body", "error"),
    [
        ("track", {"userId": "1"}, "track needs event"),
        ("identify", {"traits": {}}, "identify needs userId or anonymousId"),
        ("page", {"userId": ""}, "page needs userId or anonymousId"),
        ("alias", {"userId": "1"}, "alias needs previousId and userId"),
        ("alias", {"previousId": "0"}, "alias needs previousId and userId"),
    ],
)
def test_strict_single_call_validation(
    standin: PipelinesStandIn, http: httpx.Client, endpoint: str, body: Any, error: str
) -> None:
    resp = post(http, standin, endpoint, body)

    assert resp.status_code == 400
    assert errors_of(resp) == [error]


def test_valid_alias_is_accepted(standin: PipelinesStandIn, http: httpx.Client) -> None:
    resp = post(http, standin, "alias", {"previousId": "guest@example.com", "userId": "42"})

    assert resp.status_code == 200
    assert standin.calls == [{"previousId": "guest@example.com", "userId": "42", "type": "alias"}]


def test_alias_inside_a_batch_is_refused_unless_allowed(http: httpx.Client) -> None:
    alias = {"type": "alias", "previousId": "a", "userId": "b"}
    with PipelinesStandIn(write_keys={KEY}) as strict_one:
        resp = post(http, strict_one, "batch", {"batch": [alias]})
        assert resp.status_code == 400
        assert errors_of(resp) == ["batch[0]: alias is not allowed in a batch"]
    with PipelinesStandIn(write_keys={KEY}, allow_alias_in_batch=True) as lenient:
        assert post(http, lenient, "batch", {"batch": [alias]}).status_code == 200


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        (b"{not json", "application/json", "request body is not valid JSON"),
        (b'{"calls":[]}', "application/json", 'body must be {"batch": [...]}'),
        (b"[]", "application/json", 'body must be {"batch": [...]}'),
        (b'{"batch":[]}', "text/plain", "Content-Type must be application/json"),
    ],
)
def test_strict_malformed_request_is_400(
    standin: PipelinesStandIn, http: httpx.Client, body: bytes, content_type: str, error: str
) -> None:
    resp = post(http, standin, "batch", body, content_type=content_type)

    assert resp.status_code == 400
    assert errors_of(resp) == [error]


def test_unknown_paths_and_methods(standin: PipelinesStandIn, http: httpx.Client) -> None:
    assert post(http, standin, "delete", {"userId": "1"}).status_code == 404
    assert http.get(f"{standin.url}/batch").status_code == 404
    assert http.put(f"{standin.url}/batch", content=b"{}").status_code == 405
    assert standin.requests == 0


def test_permissive_mode_answers_200_and_drops_only_invalid_calls(
    standin: PipelinesStandIn, http: httpx.Client
) -> None:
    bad = {"type": "track", "userId": "1", "messageId": "no-event"}

    resp = post(http, standin, "batch", {"batch": [track(1), bad]}, strict=False)

    assert (resp.status_code, resp.content) == (200, b"{}")
    assert standin.message_ids() == ["m1"]
    assert [(d.reason, d.call) for d in standin.dropped] == [("track needs event", bad)]


def test_permissive_mode_drops_a_request_with_a_bad_key(
    standin: PipelinesStandIn, http: httpx.Client
) -> None:
    # The docs: without X-Strict-Mode every error, 401 included, becomes a 200.
    resp = post(http, standin, "batch", {"batch": [track()]}, key="wrong", strict=False)

    assert resp.status_code == 200
    assert standin.calls == []
    assert [d.reason for d in standin.dropped] == [UNAUTHORIZED]


def test_oversize_request_strict_413_permissive_dropped(http: httpx.Client) -> None:
    big = {"batch": [track(i, properties={"pad": "x" * 400}) for i in range(5)]}
    with PipelinesStandIn(write_keys={KEY}, max_request_bytes=1000) as s:
        resp = post(http, s, "batch", big)
        assert resp.status_code == 413
        assert "over the 1000 byte limit" in errors_of(resp)[0]
        assert s.dropped == []

        assert post(http, s, "batch", big, strict=False).status_code == 200
        assert s.calls == []
        assert len(s.dropped) == 5


def test_oversize_status_200_restores_the_documented_silent_drop(http: httpx.Client) -> None:
    with PipelinesStandIn(write_keys={KEY}, oversize_status=200) as s:
        call = track(1, properties={"pad": "x" * (33 * 1024)})
        resp = post(http, s, "batch", {"batch": [track(0), call]})

        assert resp.status_code == 200
        assert s.calls == []
        assert [d.call["messageId"] for d in s.dropped if d.call] == ["m0", "m1"]


def test_a_call_over_32_kb_makes_the_request_413_in_strict_mode(
    standin: PipelinesStandIn, http: httpx.Client
) -> None:
    call = track(1, properties={"pad": "x" * (33 * 1024)})

    resp = post(http, standin, "batch", {"batch": [track(0), call]})

    assert resp.status_code == 413
    assert errors_of(resp)[0].startswith("call 1 is ")
    assert standin.calls == []


def test_request_without_content_length_is_refused(standin: PipelinesStandIn) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"batch":[]}'

    with httpx.Client() as c:
        resp = c.post(f"{standin.url}/batch", content=chunks())
    assert resp.status_code == 411


# -- the documented limits, at their exact boundaries ------------------------------------------


def sized_call(size: int, i: int = 1, *, kind: str | None = "track") -> dict[str, Any]:
    """A call whose compact JSON is exactly `size` bytes (with its `type` when `kind`)."""
    call = track(i, properties={"pad": ""})
    if kind is None:
        del call["type"]
    call["properties"]["pad"] = "x" * (size - len(orjson.dumps(call)))
    assert len(orjson.dumps(call)) == size
    return call


def sized_batch(size: int) -> bytes:
    """A /v1/batch body of exactly `size` bytes, made of calls under the per-call limit."""
    calls = [sized_call(30_000, i) for i in range(size // 30_000)]
    body = orjson.dumps({"batch": calls})
    calls[-1] = sized_call(30_000 + size - len(body), len(calls) - 1)
    body = orjson.dumps({"batch": calls})
    assert len(body) == size
    return body


def test_a_call_of_32_kb_is_accepted_and_one_byte_more_is_refused(
    standin: PipelinesStandIn, http: httpx.Client
) -> None:
    at_limit, over = sized_call(CALL_LIMIT, 1), sized_call(CALL_LIMIT + 1, 2)

    assert post(http, standin, "batch", {"batch": [at_limit]}).status_code == 200
    refused = post(http, standin, "batch", {"batch": [track(3), over]})
    assert refused.status_code == 413
    assert errors_of(refused) == [f"call 1 is {CALL_LIMIT + 1} bytes, over the 32768 byte limit"]
    # Permissive mode: 200, and the request does not go through (nothing of it is accepted).
    assert post(http, standin, "batch", {"batch": [track(4), over]}, strict=False).content == b"{}"
    assert standin.message_ids() == ["m1"]
    assert [d.call["messageId"] for d in standin.dropped if d.call] == ["m4", "m2"]


def test_a_single_call_request_over_32_kb_is_refused(
    standin: PipelinesStandIn, http: httpx.Client
) -> None:
    # On /v1/track the request is the call; the endpoint sets `type`, so it is left out here.
    at_limit = orjson.dumps(sized_call(CALL_LIMIT, 1, kind=None))
    assert post(http, standin, "track", at_limit).status_code == 200
    over = orjson.dumps(sized_call(CALL_LIMIT + 1, 2, kind=None))
    assert post(http, standin, "track", over).status_code == 413
    # What counts is the request's size, not the size of the call once re-serialised.
    padded = orjson.dumps(track(3)) + b" " * CALL_LIMIT
    assert post(http, standin, "track", padded).status_code == 413
    assert standin.message_ids() == ["m1"]


def test_a_batch_of_500_kb_is_accepted_and_one_byte_more_is_refused(
    standin: PipelinesStandIn, http: httpx.Client
) -> None:
    assert post(http, standin, "batch", sized_batch(BATCH_LIMIT)).status_code == 200
    accepted = len(standin.calls)
    refused = post(http, standin, "batch", sized_batch(BATCH_LIMIT + 1))
    assert refused.status_code == 413
    assert errors_of(refused) == [f"request is {BATCH_LIMIT + 1} bytes, over the 512000 byte limit"]
    assert post(http, standin, "batch", sized_batch(BATCH_LIMIT + 1), strict=False).content == b"{}"
    assert len(standin.calls) == accepted


# -- the documented authentication, strict mode and answers ------------------------------------


def _basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


@pytest.mark.parametrize(
    "authorization",
    [
        _basic(b"wrong-key:"),
        _basic(b":" + KEY.encode()),  # the key as the password
        _basic(KEY.encode() + b":a-password"),  # the docs: the password is empty
        _basic(KEY.encode()),  # no colon: not `KEY:`
        "Bearer " + KEY,
        "Basic %%%",
        "",
    ],
    ids=["wrong-key", "key-as-password", "password", "no-colon", "bearer", "not-base64", "empty"],
)
def test_only_basic_auth_with_the_key_and_an_empty_password_is_accepted(
    standin: PipelinesStandIn, http: httpx.Client, authorization: str
) -> None:
    headers = {"Content-Type": "application/json", "X-Strict-Mode": "1"}
    if authorization:
        headers["Authorization"] = authorization
    body = orjson.dumps({"batch": [track()]})

    resp = http.post(f"{standin.url}/batch", content=body, headers=headers)

    assert (resp.status_code, resp.json()) == (401, {"meta": {"errors": [UNAUTHORIZED]}})
    headers["Authorization"] = _basic(KEY.encode() + b":")
    assert http.post(f"{standin.url}/batch", content=body, headers=headers).status_code == 200
    assert standin.message_ids() == ["m0"]


@pytest.mark.parametrize("value", ["true", "0", "yes", "", "11"])
def test_strict_mode_is_only_x_strict_mode_1(
    standin: PipelinesStandIn, http: httpx.Client, value: str
) -> None:
    # The docs: "If the header is absent or has any other value, the API is in permissive
    # mode: it logs the error but returns HTTP 200".
    headers = {"Authorization": _auth(KEY), "Content-Type": "application/json"}
    body = orjson.dumps({"batch": [{"type": "track", "userId": "1"}]})

    loose = http.post(
        f"{standin.url}/batch", content=body, headers=headers | {"X-Strict-Mode": value}
    )
    strict = http.post(
        f"{standin.url}/batch", content=body, headers=headers | {"X-Strict-Mode": "1"}
    )

    assert (loose.status_code, loose.content) == (200, b"{}")
    assert (strict.status_code, strict.json()) == (
        400,
        {"meta": {"errors": ["batch[0]: track needs event"]}},
    )


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ({"type": "identify", "traits": {}}, "identify needs userId or anonymousId"),
        ({"type": "track", "event": "E"}, "track needs userId or anonymousId"),
        ({"type": "track", "anonymousId": "a"}, "track needs event"),
        ({"type": "page", "name": "Home"}, "page needs userId or anonymousId"),
        ({"type": "screen", "userId": ""}, "screen needs userId or anonymousId"),
        ({"userId": "1", "event": "E"}, "type is required in a batch call"),
        ({"type": "delete", "userId": "1"}, "unknown type 'delete'"),
        (["not", "a", "call"], "call must be a JSON object"),
    ],
)
def test_strict_mode_refuses_a_batch_for_one_call_missing_a_required_field(
    standin: PipelinesStandIn, http: httpx.Client, call: Any, error: str
) -> None:
    resp = post(http, standin, "batch", {"batch": [track(1), call]})

    assert (resp.status_code, resp.json()) == (400, {"meta": {"errors": [f"batch[1]: {error}"]}})
    assert standin.calls == []


@pytest.mark.parametrize(
    "call",
    [
        {"type": "identify", "anonymousId": "a"},
        {"type": "track", "userId": "1", "event": "E"},
        {"type": "page", "userId": "1"},
        {"type": "screen", "anonymousId": "a"},
        {"type": "group"},  # the docs require nothing of a group call
    ],
)
def test_calls_with_the_documented_required_fields_are_accepted(
    standin: PipelinesStandIn, http: httpx.Client, call: dict[str, Any]
) -> None:
    resp = post(http, standin, "batch", {"batch": [call]})

    assert (resp.status_code, resp.content) == (200, b"{}")
    assert standin.calls == [call]


@pytest.mark.parametrize("body", [b'{"batch": {}}', b'{"batch": null}', b'{"batch": "x"}'])
def test_a_batch_that_is_not_a_list_is_400(
    standin: PipelinesStandIn, http: httpx.Client, body: bytes
) -> None:
    resp = post(http, standin, "batch", body)

    assert (resp.status_code, errors_of(resp)) == (400, ['body must be {"batch": [...]}'])


def test_single_call_endpoints_set_the_type_of_their_call(
    standin: PipelinesStandIn, http: httpx.Client
) -> None:
    # "the single-request endpoints set it for you": a call posted to /v1/track is a track.
    resp = post(http, standin, "track", {"type": "identify", "userId": "1", "event": "E"})

    assert resp.status_code == 200
    assert [c["type"] for c in standin.calls] == ["track"]


@pytest.mark.parametrize("content_type", ["application/jsonp", "application/json-seq", ""])
def test_content_type_must_be_application_json(
    standin: PipelinesStandIn, http: httpx.Client, content_type: str
) -> None:
    resp = post(http, standin, "batch", {"batch": [track()]}, content_type=content_type)
    ok = post(
        http, standin, "batch", {"batch": [track()]}, content_type="Application/JSON; charset=utf-8"
    )

    assert resp.status_code == 400
    assert ok.status_code == 200


# -- call_problem (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "kind", "problem"),
    [
        ({"type": "identify", "userId": "1"}, None, None),
        ({"type": "identify", "anonymousId": "a"}, None, None),
        ({"type": "group"}, None, None),
        ({"type": "screen"}, None, "screen needs userId or anonymousId"),
        ({"type": "nope", "userId": "1"}, None, "unknown type 'nope'"),
        ({"userId": "1"}, None, "type is required in a batch call"),
        ("not an object", None, "call must be a JSON object"),
        ({"userId": 0, "event": "E"}, "track", None),
        (
            {"userId": None, "anonymousId": "", "event": "E"},
            "track",
            "track needs userId or anonymousId",
        ),
    ],
)
def test_call_problem(call: object, kind: str | None, problem: str | None) -> None:
    assert call_problem(call, kind) == problem


# -- faults ----------------------------------------------------------------------------------


def test_scripted_faults_apply_in_order_then_normal_service(
    standin: PipelinesStandIn, http: httpx.Client
) -> None:
    standin.script(500, (429, {"Retry-After": "1"}), Fault(503, body=b'{"x":1}'))
    body = {"batch": [track()]}

    first = post(http, standin, "batch", body)
    second = post(http, standin, "batch", body)
    third = post(http, standin, "batch", body)
    fourth = post(http, standin, "batch", body)

    assert [r.status_code for r in (first, second, third, fourth)] == [500, 429, 503, 200]
    assert second.headers["Retry-After"] == "1"
    assert third.content == b'{"x":1}'
    assert errors_of(first) == ["stand-in fault 500"]
    assert standin.message_ids() == ["m0"]  # only the last one got through
    assert standin.outcomes == {"500": 1, "429": 1, "503": 1, "200": 1}


def test_drop_before_accepts_nothing_and_drop_after_accepts_then_hangs_up(
    standin: PipelinesStandIn, http: httpx.Client
) -> None:
    standin.script("drop_before", "drop_after")

    with pytest.raises(httpx.RemoteProtocolError):
        post(http, standin, "batch", {"batch": [track(1)]})
    assert standin.calls == []
    with pytest.raises(httpx.RemoteProtocolError):
        post(http, standin, "batch", {"batch": [track(2)]})
    assert standin.message_ids() == ["m2"]
    assert standin.outcomes == {"drop_before": 1, "drop_after": 1}


def test_faults_do_not_touch_the_control_surface(
    standin: PipelinesStandIn, http: httpx.Client
) -> None:
    standin.script(500)
    base = standin.url.removesuffix("/v1")

    assert http.get(f"{base}/_standin/stats").json()["pending_faults"] == 1


def test_fault_rate_is_reproducible_with_a_seed(http: httpx.Client) -> None:
    def run(seed: int) -> list[str]:
        labels = []
        with PipelinesStandIn(write_keys={KEY}, fault_rate=0.5, seed=seed) as s:
            for i in range(30):
                try:
                    resp = post(http, s, "batch", {"batch": [track(i)]})
                    labels.append(str(resp.status_code))
                except httpx.TransportError:
                    labels.append("drop")
        return labels

    first, again = run(1), run(1)

    assert first == again
    assert "200" in first
    assert set(first) - {"200"}  # some faults happened


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        (500, Fault(500)),
        ("drop_after", Fault(action="drop_after")),
        ("503", Fault(503)),
        ((429, {"Retry-After": "2"}), Fault(429, {"Retry-After": "2"})),
        ((502, None, "oops"), Fault(502, {}, b"oops")),
        ({"action": "drop_before"}, Fault(action="drop_before")),
        ({"status": 429, "headers": {"Retry-After": "1"}}, Fault(429, {"Retry-After": "1"})),
    ],
)
def test_as_fault(spec: Any, fault: Fault) -> None:
    assert as_fault(spec) == fault


@pytest.mark.parametrize("spec", ["explode", True, {"action": "explode"}, 1.5])
def test_as_fault_refuses_unknown_specs(spec: Any) -> None:
    with pytest.raises(ValueError, match="fault"):
        as_fault(spec)


def test_delay_is_added_to_every_answer(http: httpx.Client) -> None:
    with PipelinesStandIn(write_keys={KEY}, delay_s=1.0) as s, pytest.raises(httpx.ReadTimeout):
        http.post(
            f"{s.url}/batch",
            content=b'{"batch":[]}',
            headers={"Authorization": _auth(KEY), "Content-Type": "application/json"},
            timeout=0.2,
        )


# -- records, wait_for, reset, concurrency ---------------------------------------------------


def test_wait_for_wakes_when_calls_arrive(standin: PipelinesStandIn, http: httpx.Client) -> None:
    timer = threading.Timer(0.05, post, (http, standin, "batch", {"batch": [track(1), track(2)]}))
    timer.start()
    try:
        assert standin.wait_for(2, timeout_s=5.0)
    finally:
        timer.join()
    assert not standin.wait_for(3, timeout_s=0.05)


def test_reset_forgets_records_counters_and_faults(
    standin: PipelinesStandIn, http: httpx.Client
) -> None:
    post(http, standin, "batch", {"batch": [track()]})
    standin.script(500)

    standin.reset()

    assert (standin.calls, standin.requests, standin.connections) == ([], 0, 0)
    assert post(http, standin, "batch", {"batch": [track()]}).status_code == 200


def test_concurrent_requests_are_all_recorded(standin: PipelinesStandIn) -> None:
    def worker(w: int) -> None:
        with httpx.Client() as c:
            for i in range(25):
                calls = [track(w * 1000 + i), track(w * 1000 + 500 + i)]
                post(c, standin, "batch", {"batch": calls})

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert standin.requests == 200
    assert len(set(standin.message_ids())) == 400
    assert standin.connections == 8


def test_stop_hangs_up_open_keep_alive_connections(http: httpx.Client) -> None:
    s = PipelinesStandIn(write_keys={KEY}).start()
    assert post(http, s, "batch", {"batch": []}).status_code == 200
    url = s.url

    s.stop()
    s.stop()  # idempotent

    with pytest.raises(httpx.TransportError):
        http.post(f"{url}/batch", content=b"{}", headers={"Authorization": _auth(KEY)})


# -- control surface -------------------------------------------------------------------------


def test_control_endpoints(standin: PipelinesStandIn, http: httpx.Client) -> None:
    base = standin.url.removesuffix("/v1") + "/_standin"
    post(http, standin, "batch", {"batch": [track(1), track(2)]})
    post(http, standin, "batch", {"batch": [track(3, event="")]}, strict=False)

    stats = http.get(f"{base}/stats").json()
    assert stats["requests"] == 2
    assert stats["calls"] == 2
    assert stats["dropped"] == 1
    assert stats["statuses"] == {"200": 2}
    assert [c["messageId"] for c in http.get(f"{base}/calls", params={"since": 1}).json()] == ["m2"]
    assert http.get(f"{base}/calls", params={"since": "x"}).status_code == 400

    config = http.post(
        f"{base}/config", json={"delay_s": 0.01, "fault_rate": 0.0, "write_keys": ["k2"]}
    ).json()
    assert config["write_keys"] == ["k2"]
    assert post(http, standin, "batch", {"batch": []}, key="k2").status_code == 200
    assert post(http, standin, "batch", {"batch": []}).status_code == 401

    assert http.post(f"{base}/script", json={"faults": [502, "drop_before"]}).status_code == 200
    assert post(http, standin, "batch", {"batch": []}, key="k2").status_code == 502
    assert http.post(f"{base}/script", json={"faults": ["nope"]}).status_code == 400
    assert http.post(f"{base}/config", content=b"[1]").status_code == 400

    assert http.post(f"{base}/reset").status_code == 200
    assert http.get(f"{base}/stats").json()["requests"] == 0
    assert http.get(f"{base}/nothing").status_code == 404


def test_main_runs_as_a_separate_process(http: httpx.Client) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.pipelines_standin",
            "--port",
            "0",
            "--write-key",
            KEY,
            "--delay-ms",
            "1",
            "--fault-rate",
            "0",
            "--seed",
            "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        resp = http.post(
            f"{url}/batch",
            content=orjson.dumps({"batch": [track()]}),
            headers={"Authorization": _auth(KEY), "Content-Type": "application/json"},
        )
        assert resp.status_code == 200
        assert http.get(url.removesuffix("/v1") + "/_standin/stats").json()["calls"] == 1
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
