"""A MULTI's replies read back (`resp.exec_results`): EXEC's list, or the first error."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from bridge.store.resp import exec_results


class _Refused(redis.ResponseError):
    """An error reply of a kind of its own (hiredis makes them of the reader's error class)."""


def test_the_replies_of_a_transaction_that_went_through_are_execs() -> None:
    replies: list[Any] = [b"OK", b"QUEUED", b"QUEUED", [1, None, b"OK"]]
    assert exec_results(replies) == [1, None, b"OK"]
    assert exec_results([b"OK", []]) == []


def test_the_first_refused_command_is_raised() -> None:
    first, second = redis.ResponseError("WRONGTYPE one"), _Refused("two")
    with pytest.raises(redis.ResponseError) as raised:
        exec_results([b"OK", b"QUEUED", first, b"QUEUED", second, redis.ResponseError("EXECABORT")])
    assert raised.value is first


def test_the_first_failed_command_inside_exec_is_raised() -> None:
    first, second = _Refused("one"), redis.ResponseError("two")
    with pytest.raises(redis.ResponseError) as raised:
        exec_results([b"OK", b"QUEUED", b"QUEUED", b"QUEUED", [1, first, b"x", second]])
    assert raised.value is first


def test_an_aborted_transaction_is_a_watch_error() -> None:
    with pytest.raises(redis.WatchError):
        exec_results([b"OK", b"QUEUED", None])
    refused = redis.ResponseError("EXECABORT")
    with pytest.raises(redis.ResponseError) as raised:
        exec_results([b"OK", b"QUEUED", refused])
    assert raised.value is refused
