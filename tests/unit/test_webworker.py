"""Request framing of the web's event loop (bridge/web/server.py): where a request ends, fed
byte by byte as a trickling client would, and what is handed over as it stands."""

from __future__ import annotations

import pytest

from bridge.web.server import Framing

HEAD = b"POST /webhooks/shopify HTTP/1.1\r\nHost: x\r\n"


def fed(request: bytes, max_body: int = 1000, step: int = 1) -> tuple[int | None, int, Framing]:
    """Feed `request` `step` bytes at a time; (end, bytes fed when it was found, framing)."""
    framing = Framing(max_body, max_head=200)
    for n in range(step, len(request) + step, step):
        end = framing.end(request[:n])
        if end is not None:
            return end, min(n, len(request)), framing
    return None, len(request), framing


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        HEAD + b'Content-Length: 9\r\n\r\n{"a": 12}',
        HEAD + b"content-length:  0 \r\n\r\n",
        HEAD + b'Transfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n',
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n0\r\nX-T: 1\r\n\r\n",
    ],
)
def test_a_complete_request_ends_where_it_ends(request_bytes: bytes) -> None:
    found, at, framing = fed(request_bytes + b"GET /next HTTP/1.1\r\n\r\n")
    # Found at its last byte, not a byte earlier; the next request is left for the next read.
    assert (found, at) == (len(request_bytes), len(request_bytes))
    assert not framing.as_is


def test_a_trickled_body_is_never_complete() -> None:
    assert fed(HEAD + b"Content-Length: 1000\r\n\r\n" + b"x" * 9)[0] is None
    chunked = HEAD + b"Transfer-Encoding: chunked\r\n\r\n10\r\n" + b"x" * 9
    assert fed(chunked)[0] is None
    assert fed(b"POST /webhooks/shopify HTTP/1.1\r\nHost: x")[0] is None


@pytest.mark.parametrize(
    "request_bytes",
    [
        HEAD + b"Content-Length: 1001\r\n\r\n{",  # announced over the body limit
        HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n",
        HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        HEAD + b"Content-Length: -5\r\n\r\n",
        HEAD + b"Content-Length: 0x10\r\n\r\n",
        HEAD + b"Transfer-Encoding: gzip\r\n\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n3e9\r\n",  # a chunk over the body limit
        HEAD + b"no colon here\r\n\r\n",
        HEAD + b"X-Long: " + b"a" * 300,  # a header block past max_head and no end in sight
    ],
)
def test_what_cannot_be_framed_is_handed_over_at_once(request_bytes: bytes) -> None:
    end, at, framing = fed(request_bytes)
    assert framing.as_is
    assert end == at  # everything read so far, without waiting for more


def test_an_expect_100_continue_is_noticed() -> None:
    request = HEAD + b"Expect: 100-Continue\r\nContent-Length: 5\r\n\r\n"
    end, _, framing = fed(request)
    assert end is None and framing.expects_continue
    assert fed(request + b"{}   ")[0] == len(request) + 5


def test_large_reads_frame_the_same() -> None:
    request = HEAD + b"Content-Length: 900\r\n\r\n" + b"x" * 900
    assert fed(request, step=4096)[0] == len(request)


def test_a_chunk_arriving_in_pieces_counts_once_towards_the_body_limit() -> None:
    # 600 bytes under a limit of 1 000, fed 100 bytes at a time: re-parsed at each piece, it
    # would pass the limit if counted each time.
    request = HEAD + b"Transfer-Encoding: chunked\r\n\r\n258\r\n" + b"x" * 600 + b"\r\n0\r\n\r\n"
    end, at, framing = fed(request, step=100)
    assert (end, at) == (len(request), len(request))
    assert not framing.as_is
    # Two such chunks are 1 200 bytes: over the limit, handed over.
    twice = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + (b"258\r\n" + b"x" * 600 + b"\r\n") * 2
    assert fed(twice, step=100)[2].as_is
