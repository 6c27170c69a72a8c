"""Slot routing on a Redis Cluster (bridge/store/cluster.py), without a server: the CRC16 slot
of a key's hash tag (the cluster specification's examples), the key a command is routed by,
and the redirections read from error replies. tests/integration/test_redis_cluster.py checks
the slots against a real cluster's CLUSTER KEYSLOT."""

from __future__ import annotations

import itertools

import pytest
import redis

from bridge.config.settings import ConfigError, load_settings
from bridge.store.cluster import (
    RETRY_WAIT_MAX_S,
    command_key,
    key_slot,
    node_urls,
    redirection,
    retry_waits,
)
from bridge.store.facade import SHOPS_KEY, Keys


def test_the_specifications_examples() -> None:
    assert key_slot("123456789") == 0x31C3 % 16384  # CRC16/XMODEM's check value
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
    assert key_slot("foo{}{bar}") != key_slot("bar")  # an empty tag: the whole key
    assert key_slot("foo{}{bar}") == key_slot(b"foo{}{bar}")
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")  # the tag is "{bar"
    assert key_slot("foo{bar}{zap}") == key_slot("bar")  # the first tag only


def test_every_key_of_a_shop_is_in_its_slot_and_process_wide_keys_are_not() -> None:
    k = Keys("a-shop.myshopify.com")
    slot = key_slot("a-shop.myshopify.com")
    for key in (k.inbound, k.outbox, k.seen("w"), k.state("cart:t"), k.held("h"), k.dlq):
        assert key_slot(key) == slot
    assert key_slot(SHOPS_KEY) == key_slot("cb:shops") != slot


def test_commands_are_routed_by_their_first_key() -> None:
    assert command_key(("RPUSH", "cb:{s}:in", b"x")) == "cb:{s}:in"
    assert command_key(("EVAL", "return 1", 2, "cb:{s}:in:work", "cb:{s}:in:tries")) == (
        "cb:{s}:in:work"
    )
    assert command_key(("EVAL", "return 1", 0)) is None
    assert command_key(("MULTI",)) is None
    assert command_key((b"exec",)) is None


def test_redirections_are_read_from_error_replies() -> None:
    assert redirection(redis.ResponseError("MOVED 3999 127.0.0.1:6381")) == (
        "MOVED",
        "127.0.0.1:6381",
    )
    assert redirection(redis.ResponseError("ASK 3999 127.0.0.1:6381")) == ("ASK", "127.0.0.1:6381")
    assert redirection(redis.ResponseError("TRYAGAIN Multiple keys request during rehashing"))
    assert redirection(redis.ResponseError("WRONGTYPE Operation against a key")) is None
    assert redirection(b"MOVED 1 x:1") is None


def test_waits_before_a_refused_command_goes_again_double_up_to_a_ceiling() -> None:
    waits = list(itertools.islice(retry_waits(), 8))
    assert waits[:4] == [0.02, 0.04, 0.08, 0.16]
    assert waits[-1] == RETRY_WAIT_MAX_S == 0.5
    assert all(b >= a for a, b in itertools.pairwise(waits))


def test_data_redis_url_names_one_node_or_several() -> None:
    assert node_urls("redis://a:7000") == ["redis://a:7000"]
    assert node_urls(" redis://a:7000 , rediss://b:7001,") == ["redis://a:7000", "rediss://b:7001"]
    base = {"shopify_webhook_secret": "s", "pipelines_write_key": "k"}
    ok = load_settings(**base, data_redis_url="redis://a:7000,redis://b:7001")
    assert ok.data_redis_url == "redis://a:7000,redis://b:7001"
    with pytest.raises(ConfigError, match="DATA_REDIS_URL"):
        load_settings(**base, data_redis_url="redis://a:7000,b:7001")  # the second lacks a scheme
