"""The sender check (function/auth.py) as pure logic, with a TokenReview stand-in: what costs a
TokenReview, what is cached, what fails closed. On the real API server with real tokens:
tests/test_trust_boundaries.py."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from function import auth
from function.auth import Settings, Verifier
from function.errors import KubeTransient

AUD = "quay-dockertoken"
TRUSTED = "system:serviceaccount:quay-system:dockertoken-resync"
NOW = 1_800_000_000.0


def jwt(aud: object = AUD, exp: object = NOW + 600) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part({'aud': aud, 'exp': exp, 'sub': 'x'})}.c2ln"


class Reviews:
    def __init__(self, status: Mapping[str, Any] | Exception) -> None:
        self.status, self.asked = status, 0

    def __call__(self, token: str, audience: str) -> Mapping[str, Any]:
        self.asked += 1
        assert audience == AUD
        if isinstance(self.status, Exception):
            raise self.status
        return self.status


def verifier(reviews: Reviews, clock: list[float] | None = None, **env: str) -> Verifier:
    settings = Settings.from_env({"SENDER_IDENTITIES": TRUSTED, **env})
    now = clock or [NOW]
    return Verifier(settings, reviews, clock=lambda: now[0])


OK = {"authenticated": True, "audiences": [AUD], "user": {"username": TRUSTED}}


@pytest.mark.parametrize(("header", "why"), [
    (None, "no bearer token"), ("", "no bearer token"), ("Basic abc", "no bearer token"),
    ("Bearer ", "no bearer token"), ("Bearer not-a-jwt", "not a JWT"),
    (f"Bearer {jwt(aud='other')}", "not for audience"),
    (f"Bearer {jwt(aud=['other', 'more'])}", "not for audience"),
    (f"Bearer {jwt(exp=NOW - 1)}", "expired"), (f"Bearer {jwt(exp='soon')}", "expired"),
    ("Bearer " + "a" * 20000, "too long"),
])
def test_junk_is_refused_without_asking_the_api_server(header: str | None, why: str) -> None:
    reviews = Reviews(OK)
    verdict = verifier(reviews).check(header)
    assert verdict.status == 401 and why in verdict.message
    assert reviews.asked == 0


def test_a_trusted_sender_costs_one_review_a_minute() -> None:
    reviews, clock = Reviews(OK), [NOW]
    check = verifier(reviews, clock)
    token = f"Bearer {jwt(aud=['x', AUD])}"
    assert [check.check(token).status for _ in range(5)] == [0] * 5
    assert reviews.asked == 1
    clock[0] += auth.CACHE_SECONDS + 1
    assert check.check(token).status == 0 and reviews.asked == 2


@pytest.mark.parametrize(("status", "code"), [
    ({"authenticated": False, "error": "invalid bearer token"}, 401),
    ({"authenticated": True, "audiences": ["other"], "user": {"username": TRUSTED}}, 401),
    ({"authenticated": True, "audiences": [AUD], "user": {"username": "system:serviceaccount:x:y"}}, 403),
])
def test_the_api_servers_verdict_decides_and_is_cached(status: dict[str, Any], code: int) -> None:
    reviews = Reviews(status)
    check = verifier(reviews)
    token = f"Bearer {jwt()}"
    assert check.check(token).status == code and check.check(token).status == code
    assert reviews.asked == 1


def test_an_api_server_outage_is_503_and_not_cached() -> None:
    reviews = Reviews(KubeTransient("down"))
    check = verifier(reviews)
    assert check.check(f"Bearer {jwt()}").status == 503
    reviews.status = OK
    assert check.check(f"Bearer {jwt()}").status == 0


def test_a_verdict_never_outlives_the_token() -> None:
    reviews, clock = Reviews(OK), [NOW]
    check = verifier(reviews, clock)
    token = f"Bearer {jwt(exp=NOW + 10)}"
    assert check.check(token).status == 0
    clock[0] += 11
    assert check.check(token).status == 401 and reviews.asked == 1


@pytest.mark.parametrize(("env", "enabled"), [
    ({}, True), ({"SENDER_AUTH": "tokenreview"}, True), ({"SENDER_AUTH": "off"}, False),
    ({"SENDER_AUTH": " OFF "}, False), ({"SENDER_AUTH": "of"}, True), ({"SENDER_AUTH": "disabled"}, True),
])
def test_the_check_is_on_unless_explicitly_off(env: dict[str, str], enabled: bool) -> None:
    assert Settings.from_env(env).enabled is enabled


def test_with_no_trusted_identity_every_sender_is_refused() -> None:
    reviews = Reviews(OK)
    check = Verifier(Settings.from_env({}), reviews)
    verdict = check.check(f"Bearer {jwt()}")
    assert verdict.status == 401 and "SENDER_IDENTITIES" in verdict.message and reviews.asked == 0


def test_off_lets_everything_through() -> None:
    assert verifier(Reviews(OK), SENDER_AUTH="off").check(None).status == 0


def test_the_resync_command_sends_its_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("projected-token\n")
    sender = auth.sender_auth({"RESYNC_TOKEN_FILE": str(path)})
    assert sender is not None and auth.sender_auth({}) is None
    seen: list[str] = []

    def sink(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(204)

    transport = httpx.MockTransport(sink)
    with httpx.Client(transport=transport, auth=sender) as client:
        client.post("http://sink/")
    assert seen == ["Bearer projected-token"]
