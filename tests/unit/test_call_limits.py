"""Calls over Pipelines' 32 KB are trimmed of optional data before they would be dead-lettered.

The limit is written here as the documented literal (../shared/docs/pipelines-api.md: "One call:
32 KB"), not imported from the product.
"""

from __future__ import annotations

import orjson
import pytest

from bridge.delivery.calls import InvalidCall, validate_call

DOC_MAX_CALL_BYTES = 32 * 1024


def track(items: int, **extra: object) -> dict[str, object]:
    return {
        "type": "track",
        "messageId": "m1",
        "userId": "42",
        "event": "order_completed",
        "properties": {
            "order_id": "1001",
            "value": 12.5,
            "currency": "EUR",
            "items": [
                {"product_id": str(i), "name": "n" * 200, "quantity": 1} for i in range(items)
            ],
            **extra,
        },
    }


def test_a_call_within_the_limit_is_sent_as_it_is() -> None:
    call = track(10)
    assert validate_call(call) == orjson.dumps(call)


def test_a_call_over_the_limit_loses_item_tail_and_says_so() -> None:
    call = track(400)
    assert len(orjson.dumps(call)) > DOC_MAX_CALL_BYTES
    sent = orjson.loads(validate_call(call))
    assert len(orjson.dumps(sent)) <= DOC_MAX_CALL_BYTES
    props = sent["properties"]
    assert 0 < len(props["items"]) < 400
    assert props["items"] == call["properties"]["items"][: len(props["items"])]  # type: ignore[index]
    assert props["items_truncated"] is True
    assert (props["order_id"], props["value"], props["currency"]) == ("1001", 12.5, "EUR")
    assert call["properties"]["items"].__len__() == 400  # type: ignore[index]  # input untouched


def test_large_optional_fields_go_before_the_call_is_refused() -> None:
    call = track(1, note="x" * 40_000, checkout_url="https://s.example/" + "y" * 500)
    sent = orjson.loads(validate_call(call))
    assert "note" not in sent["properties"]
    assert sent["properties"]["checkout_url"].startswith("https://")  # small ones stay
    assert sent["properties"]["order_id"] == "1001"


def test_an_identify_over_the_limit_keeps_its_person() -> None:
    call = {
        "type": "identify",
        "messageId": "m2",
        "userId": "42",
        "traits": {"email": "a@b.co", "notes": "z" * 40_000},
    }
    sent = orjson.loads(validate_call(call))
    assert sent["traits"] == {"email": "a@b.co"} and sent["userId"] == "42"


def test_a_call_too_large_without_its_options_is_refused() -> None:
    call = track(0)
    call["userId"] = "u" * 40_000
    with pytest.raises(InvalidCall, match="32 KB"):
        validate_call(call)
