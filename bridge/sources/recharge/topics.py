"""Recharge's webhook topics: the ones it documents, and a topic read from a body. Pure.

Recharge sends no documented topic header, so a delivery's topic comes from the path the
webhook was registered with (one path per topic), else from the body's wrapper key
(`infer_topic`), which names the resource but not always the action.
"""

from __future__ import annotations

import re
from typing import Any

# The envelope topic of a Recharge webhook is "recharge/<resource>/<action>": the `Sources`
# router sends it to the Recharge source by this prefix.
PREFIX = "recharge"

# Every topic Recharge documents (API 2021-11; `charge/success` is the legacy name of
# `charge/paid`). Only these name metric counters: a path or header cannot invent labels.
TOPICS = frozenset(
    {
        "subscription/created",
        "subscription/updated",
        "subscription/activated",
        "subscription/cancelled",
        "subscription/deleted",
        "subscription/skipped",
        "subscription/unskipped",
        "subscription/swapped",
        "subscription/paused",
        "charge/created",
        "charge/updated",
        "charge/paid",
        "charge/success",
        "charge/failed",
        "charge/max_retries_reached",
        "charge/upcoming",
        "charge/refunded",
        "charge/uncaptured",
        "charge/deleted",
        "customer/created",
        "customer/updated",
        "customer/activated",
        "customer/deactivated",
        "customer/payment_method_updated",
        "customer/deleted",
        "order/created",
        "order/processed",
        "order/cancelled",
        "order/upcoming",
        "order/payment_captured",
        "order/updated",
        "order/deleted",
        "order/success",
        "address/created",
        "address/updated",
        "onetime/created",
        "onetime/updated",
        "onetime/deleted",
        "checkout/created",
        "checkout/updated",
        "checkout/completed",
        "checkout/processed",
        "plan/created",
        "plan/updated",
        "plan/deleted",
        "bundle_selection/created",
        "bundle_selection/updated",
        "bundle_selection/deleted",
        "async_batch/processed",
        "store/updated",
        "recharge/uninstalled",
    }
)

# What a topic must look like to be queued ("<resource>/<action>", as Recharge writes them).
TOPIC_PATTERN = re.compile(r"[a-z0-9_]{1,64}/[a-z0-9_]{1,64}")

# Wrapper keys in the order they are tried. `customer` comes last: it is also the key of the
# customer a subscription's or charge's `included_objects` adds beside the resource.
_WRAPPERS = (
    "subscription",
    "charge",
    "order",
    "onetime",
    "address",
    "checkout",
    "plan",
    "bundle_selection",
    "async_batch",
    "store",
    "customer",
)
# A charge's status says which of the mapped charge topics its body was sent for.
_CHARGE_TOPICS = {"success": "charge/paid", "error": "charge/failed"}


def infer_topic(body: dict[str, Any]) -> str | None:
    """The topic a body's wrapper key implies, or None when it has none (pure, never raises).

    `subscription` -> subscription/updated and `customer` -> customer/updated (their status is
    then the body's own); `charge` -> charge/paid or charge/failed by its `status` (success,
    error), else charge/updated; any other wrapper -> "<resource>/updated", which the bridge
    does not map (acknowledged, ignored).
    """
    for resource in _WRAPPERS:
        value = body.get(resource)
        if not isinstance(value, dict):
            continue
        if resource == "charge":
            status = value.get("status")
            key = status.strip().lower() if isinstance(status, str) else ""
            return _CHARGE_TOPICS.get(key, "charge/updated")
        return f"{resource}/updated"
    return None


def metric_topic(topic: str | None) -> str:
    """The envelope topic a counter may name: a documented one, else "recharge/other"."""
    return f"{PREFIX}/{topic}" if topic in TOPICS else f"{PREFIX}/other"
