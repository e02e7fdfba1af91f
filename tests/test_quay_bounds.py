"""Every Quay exchange is bounded (issue 18): a wall-clock deadline per request (connect, send and
every read together), a budget for all requests of one pass, and a byte cap on replies. The host
is the tenant's choice: these hosts answer too slowly, or too much, over real TCP."""

from __future__ import annotations

import time

import httpx
import pytest

from function import quay
from function.connection import Connection, parse_connection
from function.errors import QuayTransient, QuayUnexpectedResponse
from function.quay import QuayClient
from tests.hostile_host import HostileHost, elapsed

TOKEN = "oauth-token-for-the-bounds-test"


def client(url: str, timeout: float) -> QuayClient:
    return QuayClient(Connection(url, url.split("//")[1], token=TOKEN, timeout=timeout))


@pytest.mark.parametrize("mode", ["trickle-headers", "trickle-body"])
def test_a_trickling_host_is_cut_off_at_the_request_deadline(mode: str) -> None:
    """A byte every 0.3 s never trips a 1 s per-read timeout (httpx's own): the deadline of the
    whole request does, whether the host trickles its status line or its body."""
    with HostileHost(mode, interval=0.3) as host, client(host.url, 1.0) as quay_client:
        started = time.monotonic()
        with pytest.raises(QuayTransient) as caught:
            quay_client.list_tokens()
        took = elapsed(started)
    assert 0.9 <= took < 2.5, took
    message = str(caught.value)
    assert "no complete answer" in message and "within 1 s" in message and TOKEN not in message


def test_an_endless_reply_is_given_up_at_the_byte_cap() -> None:
    with HostileHost("flood") as host, client(host.url, 30.0) as quay_client:
        started = time.monotonic()
        with pytest.raises(QuayUnexpectedResponse) as caught:
            quay_client.list_tokens()
        took = elapsed(started)
    assert took < 10, took
    assert f"larger than {quay.MAX_REPLY_BYTES} bytes" in str(caught.value)


def test_the_cap_holds_for_a_real_token_list() -> None:
    """4 MiB is ~10,000 tokens with 255-character titles: a big real list fits."""
    tokens = [{"uuid": f"{i:036d}", "title": "t" * 255, "last_accessed": None,
               "created": "Wed, 01 Jan 2026 00:00:00 -0000",
               "expiration": "Thu, 01 Jan 2026 00:00:00 -0000"} for i in range(9000)]
    body = httpx.Response(200, json={"tokens": tokens}).content
    assert len(body) < quay.MAX_REPLY_BYTES
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    with QuayClient(Connection("https://q", "q", token=TOKEN), transport=transport) as quay_client:
        assert len(quay_client.list_tokens()) == 9000


def test_the_pass_budget_bounds_all_requests_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each request gets its timeout, but never past the pass's budget; once it is spent, no
    request is even attempted."""
    monkeypatch.setattr(quay, "PASS_BUDGET_SECONDS", 1.6)
    with HostileHost("trickle-body", interval=0.3) as host, client(host.url, 1.0) as quay_client:
        started = time.monotonic()
        with pytest.raises(QuayTransient):
            quay_client.list_tokens()
        with pytest.raises(QuayTransient):
            quay_client.get_token("abc")  # 0.6 s left of the budget
        assert 1.5 <= elapsed(started) < 2.6
        connections = host.connections
        with pytest.raises(QuayTransient) as caught:
            quay_client.revoke_token("abc")
        assert host.connections == connections  # not even a connection
        assert "budget" in str(caught.value)


def test_the_timeout_key_is_capped() -> None:
    conn = parse_connection({"host": "quay.example.com", "token": TOKEN, "timeout": "1e9"},
                            secret_name="quay-credentials")
    assert conn.timeout == 60.0
