"""The Quay simulator's own behaviour and hooks (the recorded contract is test_quay_contract.py).

Talks to the simulator with a plain httpx client, not with ``function.quay``.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import functools
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.checks import Background, run_concurrently
from tests.env import wait_for
from tests.quaysim import (
    ADMIN_TOKEN,
    ALLSCOPES_TOKEN,
    EXPIRED_TOKEN,
    PASSWORD,
    READER_ADMIN_TOKEN,
    READONLY_TOKEN,
    USERNAME,
    QuaySimulator,
)

TOKENS = "/api/v1/user/apptoken"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sim() -> Iterator[QuaySimulator]:
    with QuaySimulator() as simulator:
        yield simulator
    assert not simulator.server_errors


def api(sim: QuaySimulator, token: str = ADMIN_TOKEN) -> httpx.Client:
    return httpx.Client(base_url=sim.base_url, headers={"Authorization": f"Bearer {token}"},
                        timeout=5)


def create(client: httpx.Client, title: str = "t") -> dict[str, object]:
    response = client.post(TOKENS, json={"title": title})
    assert response.status_code == 200, response.text
    token: dict[str, object] = response.json()["token"]
    return token


def epoch(date: object) -> float:
    assert isinstance(date, str)
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} -0000", date)
    return email.utils.mktime_tz(email.utils.parsedate_tz(date))  # type: ignore[arg-type]


def sign_in(sim: QuaySimulator, username: str = USERNAME,
            password: str = PASSWORD) -> tuple[httpx.Client, str]:
    """A cookie session as Quay's web UI makes it; returns the client and its CSRF token."""
    client = httpx.Client(base_url=sim.base_url, timeout=5)
    page = client.get("/")
    csrf = re.search(r"window\.__token = '([^']+)'", page.text)
    assert csrf is not None
    answer = client.post("/api/v1/signin", json={"username": username, "password": password},
                         headers={"X-CSRF-Token": csrf[1]})
    assert answer.status_code == 200, answer.text
    return client, answer.headers["X-Next-CSRF-Token"]


# -- tokens -----------------------------------------------------------------------------------

def test_token_shapes(sim: QuaySimulator) -> None:
    with api(sim) as client:
        first, second, empty = create(client, "same"), create(client, "same"), create(client, "")
        assert first["uuid"] != second["uuid"] and empty["title"] == ""
        for token in (first, second, empty):
            assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-"
                                r"[0-9a-f]{12}", str(token["uuid"]))
            assert re.fullmatch(r"[A-Z0-9]{120}", str(token["token_code"]))
            assert token["expiration"] is None and token["last_accessed"] is None
            assert abs(epoch(token["created"]) - time.time()) < 5
        listed = client.get(TOKENS).json()
        assert listed["only_expiring"] is None
        assert [t["uuid"] for t in listed["tokens"]] == [first["uuid"], second["uuid"],
                                                         empty["uuid"]]
        assert all("token_code" not in t for t in listed["tokens"])
        assert client.get(f"{TOKENS}/{first['uuid']}").json()["token"] == first
        extra = client.post(TOKENS, json={"title": "x", "expiration": "never", "foo": 1})
        assert extra.status_code == 200 and extra.json()["token"]["expiration"] is None
    assert [t["title"] for t in sim.tokens()] == ["same", "same", "", "x"]


@pytest.mark.parametrize(("body", "content_type", "status", "key"), [
    (b'{"title": 1}', "application/json", 400, "error_message"),
    (b"{}", "application/json", 400, "error_message"),
    (b"[]", "application/json", 400, "error_message"),
    (b"not json{", "application/json", 400, "message"),
    (b"", "application/json", 400, "message"),
    (b'{"title": "x"}', "text/plain", 415, "message"),
    (b'{"title": "x"}', "application/merge-patch+json", 200, "token"),
])
def test_bad_bodies(sim: QuaySimulator, body: bytes, content_type: str, status: int,
                    key: str) -> None:
    with api(sim) as client:
        answer = client.post(TOKENS, content=body, headers={"Content-Type": content_type})
    assert answer.status_code == status and key in answer.json()
    assert len(sim.tokens()) == (status == 200)


def test_users_see_only_their_tokens(sim: QuaySimulator) -> None:
    with api(sim, READER_ADMIN_TOKEN) as reader, api(sim) as devtable:
        theirs = create(reader, "reader's")
        assert devtable.get(f"{TOKENS}/{theirs['uuid']}").status_code == 404
        assert devtable.delete(f"{TOKENS}/{theirs['uuid']}").status_code == 404
        assert devtable.get(TOKENS).json()["tokens"] == []
        assert reader.delete(f"{TOKENS}/{theirs['uuid']}").status_code == 204
        assert reader.delete(f"{TOKENS}/{theirs['uuid']}").status_code == 404


def test_expiration_and_expiring_window() -> None:
    with QuaySimulator(token_expiration=100) as sim, api(sim) as client:
        token = create(client)
        assert epoch(token["expiration"]) - epoch(token["created"]) == 100
        # The window is ceil(10% of the lifetime) = 10 s.
        for query in ("true", "1", "yes"):
            answer = client.get(TOKENS, params={"expiring": query}).json()
            assert answer == {"tokens": [], "only_expiring": True}
        assert client.get(TOKENS, params={"expiring": "false"}).json()["only_expiring"] is False
        assert client.get(TOKENS, params={"expiring": "0"}).json()["only_expiring"] is False
        sim.advance(91)
        assert len(client.get(TOKENS, params={"expiring": "true"}).json()["tokens"]) == 1
        sim.advance(10)
        assert client.get(TOKENS, params={"expiring": "true"}).json()["tokens"] == []
        assert len(client.get(TOKENS).json()["tokens"]) == 1  # expired, still listed
        assert client.get(f"{TOKENS}/{token['uuid']}").status_code == 404
        assert client.delete(f"{TOKENS}/{token['uuid']}").status_code == 204
        assert sim.tokens() == []


def test_default_expiring_window_is_four_weeks_times_ten_percent(sim: QuaySimulator) -> None:
    now = sim.state.now()
    sim.state.create_token(USERNAME, "soon", expiration=now + 241920, use_config=False)
    sim.state.create_token(USERNAME, "later", expiration=now + 241922, use_config=False)
    with api(sim) as client:
        answer = client.get(TOKENS, params={"expiring": "true"}).json()
    assert [t["title"] for t in answer["tokens"]] == ["soon"]


def test_seeded_quay_testdata() -> None:
    with QuaySimulator(seed_quay_testdata=True, token_expiration=60) as sim, api(sim) as client:
        (seeded,) = client.get(TOKENS).json()["tokens"]
    assert seeded["title"] == "some app" and seeded["expiration"] is None


def test_touch_sets_last_accessed(sim: QuaySimulator) -> None:
    with api(sim) as client:
        token = create(client)
        sim.touch(str(token["uuid"]))
        (listed,) = client.get(TOKENS).json()["tokens"]
    assert abs(epoch(listed["last_accessed"]) - time.time()) < 5


# -- authentication ---------------------------------------------------------------------------

@pytest.mark.parametrize(("authorization", "method", "status"), [
    (f"bearer {ADMIN_TOKEN}", "GET", 200),
    (f"BEARER {ADMIN_TOKEN}", "GET", 200),
    (f"Token {ADMIN_TOKEN}", "GET", 401),
    (f"Bearer {EXPIRED_TOKEN}", "GET", 401),
    (f"Bearer {EXPIRED_TOKEN}", "POST", 403),
    ("Basic ZGV2dGFibGU6cGFzc3dvcmQ=", "GET", 401),
    ("Basic ZGV2dGFibGU6cGFzc3dvcmQ=", "DELETE", 403),
    (f"Bearer {READONLY_TOKEN}", "GET", 403),
    (f"Bearer {READONLY_TOKEN}", "DELETE", 403),
    (f"Bearer {ALLSCOPES_TOKEN}", "GET", 200),
    ("", "GET", 401),
    ("", "POST", 403),
])
def test_auth_outcomes(sim: QuaySimulator, authorization: str, method: str,
                       status: int) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    path = f"{TOKENS}/00000000-0000-0000-0000-000000000000" if method == "DELETE" else TOKENS
    answer = httpx.request(method, f"{sim.base_url}{path}", headers=headers,
                           json={"title": "x"} if method == "POST" else None)
    assert answer.status_code == status
    if status == 403 and "Bearer" in authorization and "userread" in authorization:
        assert answer.json()["error_type"] == "insufficient_scope"
    elif status == 403:
        assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
        assert answer.text == '{"error": "CSRF token was invalid or missing."}'


def test_added_users_and_tokens(sim: QuaySimulator) -> None:
    sim.add_user("alice", "alice-pw", email="alice@example.com")
    admin = sim.add_oauth_token("alice", "user:admin")
    reader = sim.add_oauth_token("alice", "user:read", token="alice-read-token")
    expired = sim.add_oauth_token("alice", "user:admin", expired=True)
    assert reader == "alice-read-token" and len(admin) == 40
    with api(sim, admin) as client:
        create(client, "alice's")
        me = client.get("/api/v1/user/").json()
        assert me["username"] == "alice" and me["email"] == "alice@example.com"
    with api(sim, reader) as client:
        assert set(client.get("/api/v1/user/").json()) == {"anonymous", "username", "avatar",
                                                           "organizations"}
        assert client.get(TOKENS).status_code == 403
    with api(sim, expired) as client:
        assert client.get(TOKENS).status_code == 401
    assert [t["title"] for t in sim.tokens("alice")] == ["alice's"]
    assert sim.tokens() == []
    _, csrf = sign_in(sim, "alice", "alice-pw")
    assert csrf


def test_session_flow_and_csrf(sim: QuaySimulator) -> None:
    client = httpx.Client(base_url=sim.base_url, timeout=5)
    page = client.get("/")
    assert page.headers["Set-Cookie"].startswith("_csrf_token=")
    stale = re.search(r"window\.__token = '([^']+)'", page.text)
    assert stale is not None
    signin = {"username": USERNAME, "password": PASSWORD}
    assert client.post("/api/v1/signin", json=signin).status_code == 403
    no_cookie = httpx.post(f"{sim.base_url}/api/v1/signin", json=signin,
                           headers={"X-CSRF-Token": stale[1]})
    assert no_cookie.status_code == 403
    answer = client.post("/api/v1/signin", json=signin, headers={"X-CSRF-Token": stale[1]})
    assert answer.status_code == 200 and "Expires=" in answer.headers["Set-Cookie"]
    csrf = answer.headers["X-Next-CSRF-Token"]
    assert client.get(TOKENS).status_code == 200
    assert client.get("/csrf_token").json() == {"csrf_token": csrf}
    assert csrf in client.get("/").text
    assert client.post(TOKENS, json={"title": "x"},
                       headers={"X-CSRF-Token": stale[1]}).status_code == 403
    refused = client.post(TOKENS, json={"title": "x"})
    assert refused.json() == {"error": "CSRF token was invalid or missing. "
                                       "(authorized: user devtable)"}
    assert client.post(TOKENS, json={"title": "q"},
                       params={"_csrf_token": csrf}).status_code == 200
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0"}
    assert client.get(TOKENS, headers=browser).status_code == 400
    assert client.get(TOKENS, headers={**browser, "X-Requested-With": "XMLHttpRequest"}
                      ).status_code == 200
    assert client.post("/api/v1/signout", headers={"X-CSRF-Token": csrf}).json() == {
        "success": True}
    assert client.get(TOKENS).status_code == 401
    assert sim.calls["signin"] == 3 and sim.calls["signout"] == 1


def test_fresh_login_and_verify() -> None:
    with QuaySimulator(fresh_login_timeout=5) as sim:
        client, csrf = sign_in(sim)
        headers = {"X-CSRF-Token": csrf}
        token = client.post(TOKENS, json={"title": "x"}, headers=headers).json()["token"]
        sim.advance(6)
        for answer in (client.post(TOKENS, json={"title": "y"}, headers=headers),
                       client.get(f"{TOKENS}/{token['uuid']}"),
                       client.delete(f"{TOKENS}/{token['uuid']}", headers=headers)):
            assert answer.status_code == 401
            assert answer.json()["error_type"] == "fresh_login_required"
        assert client.get(TOKENS).status_code == 200
        wrong = client.post("/api/v1/signin/verify", json={"password": "nope"}, headers=headers)
        assert wrong.status_code == 403 and wrong.json()["invalidCredentials"] is True
        sim.advance(2)  # past the login backoff of the failed verify
        verified = client.post("/api/v1/signin/verify", json={"password": PASSWORD},
                               headers=headers)
        assert verified.status_code == 200
        headers = {"X-CSRF-Token": verified.headers["X-Next-CSRF-Token"]}
        assert client.delete(f"{TOKENS}/{token['uuid']}", headers=headers).status_code == 204
        with api(sim) as oauth:  # OAuth never needs a fresh login
            sim.advance(100)
            assert oauth.post(TOKENS, json={"title": "z"}).status_code == 200


def test_sign_out_ends_every_session_of_the_user(sim: QuaySimulator) -> None:
    first, _ = sign_in(sim)
    second, csrf = sign_in(sim)
    assert first.get(TOKENS).status_code == 200
    second.post("/api/v1/signout", headers={"X-CSRF-Token": csrf})
    assert first.get(TOKENS).status_code == 401
    assert second.get(TOKENS).status_code == 401


def test_login_backoff(sim: QuaySimulator) -> None:
    client = httpx.Client(base_url=sim.base_url, timeout=5)
    csrf = re.search(r"window\.__token = '([^']+)'", client.get("/").text)
    assert csrf is not None
    headers = {"X-CSRF-Token": csrf[1]}

    def attempt(password: str) -> httpx.Response:
        return client.post("/api/v1/signin", headers=headers,
                           json={"username": USERNAME, "password": password})

    assert attempt("wrong").status_code == 403
    throttled = attempt(PASSWORD)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "0"
    assert throttled.text == "Too many login attempts. \nPlease reset your Quay password and " \
                             "try again."
    sim.advance(0.6)
    assert attempt("wrong").status_code == 403
    sim.advance(1.0)  # two failures: 1.5 s
    assert attempt(PASSWORD).status_code == 429
    sim.advance(0.6)
    assert attempt(PASSWORD).status_code == 200


def test_whoami_views(sim: QuaySimulator) -> None:
    with api(sim) as admin, api(sim, READONLY_TOKEN) as reader, \
            api(sim, ALLSCOPES_TOKEN) as everything:
        full = admin.get("/api/v1/user/").json()
        assert full["email"] == "jschorr@devtable.com" and "super_user" not in full
        assert not full["organizations"][0]["is_org_admin"]
        assert reader.get("/api/v1/user/").json()["organizations"][0] == {
            "name": "buynlarge", "avatar": full["organizations"][0]["avatar"],
            "can_create_repo": False, "public": False}
        assert everything.get("/api/v1/user/").json()["organizations"][0]["is_org_admin"]
    session, _ = sign_in(sim)
    assert session.get("/api/v1/user/").json()["super_user"] is True


# -- registry ---------------------------------------------------------------------------------

def basic(user: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


def test_registry_login_with_an_app_token() -> None:
    with QuaySimulator(token_expiration=30) as sim, api(sim) as client:
        token = create(client)
        code = str(token["token_code"])
        auth = client.get("/v2/auth", params={"account": "$app", "service": sim.host,
                                              "scope": "repository:devtable/simple:pull"},
                          headers=basic("$app", code))
        assert auth.status_code == 200
        jwt = auth.json()["token"]
        bearer = {"Authorization": f"Bearer {jwt}"}
        assert httpx.get(f"{sim.base_url}/v2/", headers=bearer).text == "true"
        tags = httpx.get(f"{sim.base_url}/v2/devtable/simple/tags/list", headers=bearer)
        assert tags.json() == {"name": "devtable/simple", "tags": ["latest", "prod"]}
        assert httpx.get(f"{sim.base_url}/v2/").status_code == 401
        assert client.get("/v2/auth", headers=basic("$app", "X" * 120)).status_code == 401
        assert client.get("/v2/auth", headers=basic("$oauthtoken", ADMIN_TOKEN)
                          ).status_code == 200
        assert client.get(TOKENS).json()["tokens"][0]["last_accessed"] is not None
        sim.advance(31)
        assert client.get("/v2/auth", headers=basic("$app", code)).status_code == 401


def challenge(url: str) -> httpx.Response:
    answer = httpx.get(f"{url}/v2/", timeout=5)
    assert answer.status_code == 401
    return answer


def test_registry_challenge_as_recorded(sim: QuaySimulator) -> None:
    """091: no auth on /v2/ gives 401, body ``true``, realm and service from SERVER_HOSTNAME."""
    answer = challenge(sim.base_url)
    assert sim.server_hostname == sim.host
    assert answer.headers["WWW-Authenticate"] == (
        f'Bearer realm="{sim.base_url}/v2/auth",service="{sim.host}"')
    assert answer.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert answer.text == "true"
    assert sim.calls == {"v2": 1}
    assert sim.calls_by_auth == {("GET", "anonymous"): 1}


def test_registry_auth_answers(sim: QuaySimulator) -> None:
    """093/097/103: 200 with a JWT for a live code, 401 ``Invalid token`` otherwise."""
    with api(sim) as client:
        code = str(create(client)["token_code"])
        uuid = str(client.get(TOKENS).json()["tokens"][0]["uuid"])
    params = {"account": "$app", "service": sim.host}
    ok = httpx.get(f"{sim.base_url}/v2/auth", params=params, headers=basic("$app", code))
    assert ok.status_code == 200 and set(ok.json()) == {"token"}
    assert ok.headers["Cache-Control"] == "no-cache, no-store, must-revalidate"
    refused = {"errors": [{"code": "UNAUTHORIZED", "detail": {}, "message": "Invalid token"}]}
    for wrong in (code[:-4] + "XXXX", ""):
        answer = httpx.get(f"{sim.base_url}/v2/auth", params=params, headers=basic("$app", wrong))
        assert answer.status_code == 401 and answer.json() == refused
        assert answer.headers["WWW-Authenticate"] == challenge(sim.base_url).headers[
            "WWW-Authenticate"]
    with api(sim) as client:
        assert client.delete(f"{TOKENS}/{uuid}").status_code == 204
    revoked = httpx.get(f"{sim.base_url}/v2/auth", params=params, headers=basic("$app", code))
    assert revoked.status_code == 401 and revoked.json() == refused


def test_server_hostname_differs_from_the_api_host() -> None:
    """SERVER_HOSTNAME is announced in the realm, the service and the JWT audience only."""
    with QuaySimulator(server_hostname="registry.example.test:5000") as sim, api(sim) as client:
        answer = challenge(sim.base_url)
        assert answer.headers["WWW-Authenticate"] == (
            'Bearer realm="http://registry.example.test:5000/v2/auth",'
            'service="registry.example.test:5000"')
        assert sim.registry_url == "http://registry.example.test:5000"
        code = str(create(client)["token_code"])
        jwt = httpx.get(f"{sim.base_url}/v2/auth", headers=basic("$app", code),
                        params={"service": "registry.example.test:5000"}).json()["token"]
        payload = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert claims["aud"] == "registry.example.test:5000"
        # The API keeps answering with the request's host in its error type URLs.
        error = client.get(f"{TOKENS}/unknown").json()
        assert error["type"] == f"{sim.base_url}/api/v1/error/not_found"


def test_server_hostname_set_at_runtime_makes_a_reachable_realm() -> None:
    """``localhost:<port>`` once the port is known: a realm on another name of the same server."""
    with QuaySimulator() as sim, api(sim) as client:
        sim.server_hostname = f"localhost:{sim.port}"
        header = challenge(sim.base_url).headers["WWW-Authenticate"]
        realm = re.fullmatch(r'Bearer realm="([^"]+)",service="([^"]+)"', header)
        assert realm is not None and realm[2] == f"localhost:{sim.port}"
        assert realm[1] == f"http://localhost:{sim.port}/v2/auth"
        code = str(create(client)["token_code"])
        assert httpx.get(realm[1], params={"service": realm[2]},
                         headers=basic("$app", code)).status_code == 200
        sim.server_hostname = None
        assert sim.host in challenge(sim.base_url).headers["WWW-Authenticate"]


def test_token_expiration_set_at_runtime() -> None:
    """APP_SPECIFIC_TOKEN_EXPIRATION changes for new tokens only, as after a Quay restart."""
    with QuaySimulator() as sim, api(sim) as client:
        assert sim.token_expiration is None
        forever = create(client, "forever")
        sim.token_expiration = 30
        short = create(client, "short")
        assert forever["expiration"] is None
        assert epoch(short["expiration"]) - epoch(short["created"]) == 30
        # The ?expiring window follows the setting: ceil(30 s * 10%) = 3 s.
        sim.advance(27.5)
        assert [t["title"] for t in client.get(TOKENS, params={"expiring": "true"}
                                               ).json()["tokens"]] == ["short"]
        sim.advance(3)
        assert httpx.get(f"{sim.base_url}/v2/auth", headers=basic(
            "$app", str(short["token_code"]))).status_code == 401
        assert httpx.get(f"{sim.base_url}/v2/auth", headers=basic(
            "$app", str(forever["token_code"]))).status_code == 200
        sim.token_expiration = None
        assert create(client, "again")["expiration"] is None
        for bad in (0, -1.0):
            with pytest.raises(ValueError, match="token_expiration"):
                sim.token_expiration = bad


# -- hooks: counters, costs, faults -----------------------------------------------------------

def test_counters_and_costs() -> None:
    with QuaySimulator(oauth_request_cost=0.05, session_request_cost=0.02) as sim:
        with api(sim) as client:
            create(client)
            client.get(TOKENS)
        session, _ = sign_in(sim)
        session.get(TOKENS)
        assert sim.calls == {"create": 1, "list": 2, "root": 1, "signin": 1}
        assert sim.calls_by_auth == {("POST", "oauth"): 1, ("GET", "oauth"): 1,
                                     ("GET", "anonymous"): 1, ("POST", "anonymous"): 1,
                                     ("GET", "session"): 1}
        assert sim.total_calls == 5
        assert sim.simulated_cpu_seconds == pytest.approx(0.12)
        sim.reset_counters()
        assert sim.calls == {} and sim.calls_by_auth == {} and sim.simulated_cpu_seconds == 0


def test_injected_statuses_in_order_then_normal(sim: QuaySimulator) -> None:
    sim.inject("create", statuses=[503, 502, 500])
    with api(sim) as client:
        answers = [client.post(TOKENS, json={"title": "x"}) for _ in range(4)]
    assert [a.status_code for a in answers] == [503, 502, 500, 200]
    assert "nginx" in answers[0].text and answers[0].headers["Content-Type"] == "text/html"
    assert "Internal Server Error" in answers[2].text
    assert len(sim.tokens()) == 1
    assert sim.calls["create"] == 4


def test_injected_delay_drop_hang_after(sim: QuaySimulator) -> None:
    with api(sim) as client:
        sim.inject("list", delay=0.2)
        started = time.monotonic()
        client.get(TOKENS)
        assert time.monotonic() - started >= 0.2
        sim.clear_faults()
        sim.inject("create", drop=2)
        for _ in range(2):
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                client.post(TOKENS, json={"title": "x"})
        assert sim.tokens() == []
        sim.inject("create", after=1)
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            client.post(TOKENS, json={"title": "kept"})
        assert [t["title"] for t in sim.tokens()] == ["kept"]
        sim.inject("*", hang=3, times=1)
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            client.get(TOKENS, timeout=0.3)
        assert time.monotonic() - started < 2
        assert client.get(TOKENS).status_code == 200


def test_held_request_waits_for_the_release(sim: QuaySimulator) -> None:
    """``hold``: the request is counted and kept in flight, the operation not yet performed,
    other requests are served meanwhile; after ``release`` it is served, and the hold is spent."""
    sim.inject("create", hold=True)
    with api(sim) as client, api(sim) as other:
        answer = Background(lambda: client.post(TOKENS, json={"title": "held"}))
        sim.wait_held("create")
        assert sim.held("create") == sim.held() == 1 and sim.held("list") == 0
        assert sim.calls["create"] == 1 and sim.tokens() == []
        assert other.get(TOKENS).json()["tokens"] == []  # not held: served at once
        assert not answer.done()
        assert sim.release("create") == 1
        assert answer.result(timeout=5).status_code == 200
        assert [t["title"] for t in sim.tokens()] == ["held"] and sim.held() == 0
        assert other.post(TOKENS, json={"title": "free"}).status_code == 200
    with pytest.raises(TimeoutError, match=r"'create' request\(s\) not held within 0.1 s; held now: none"):
        sim.wait_held("create", timeout=0.1)


def test_holds_by_count_with_other_faults_and_a_client_that_gave_up(sim: QuaySimulator) -> None:
    sim.inject("*", hold=True, times=2)
    sim.inject("create", statuses=[503])
    with api(sim) as client, api(sim) as other:
        first = Background(lambda: client.post(TOKENS, json={"title": "x"}))
        second = Background(lambda: other.get(TOKENS))
        sim.wait_held(count=2)
        assert sim.held("create") == sim.held("list") == 1
        assert sim.release("list") == 1
        assert second.result(timeout=5).status_code == 200
        assert sim.held() == 1 and not first.done()
        assert sim.release() == 1
        assert first.result(timeout=5).status_code == 503  # released, then the fault armed with it
        assert sim.tokens() == []
        # a client that gave up while held: the operation is performed all the same
        sim.inject("create", hold=True)
        with pytest.raises(httpx.ReadTimeout):
            client.post(TOKENS, json={"title": "late"}, timeout=0.3)
        sim.wait_held("create")
        assert sim.release() == 1
        wait_for(lambda: [t["title"] for t in sim.tokens()] == ["late"], timeout=5,
                 what="the late creation")


def test_clear_faults_and_stop_release_held_requests() -> None:
    sim = QuaySimulator().start()
    sim.inject("list", hold=True, times=3)
    with api(sim) as client:
        third = Background(lambda: client.get(TOKENS))
        sim.wait_held("list")
        sim.clear_faults()
        assert third.result(timeout=5).status_code == 200
        assert sim.held() == 0 and client.get(TOKENS).status_code == 200  # disarmed
        sim.inject("list", hold=True)
        stuck = Background(lambda: client.get(TOKENS))
        sim.wait_held("list")
        started = time.monotonic()
        sim.stop()
        assert time.monotonic() - started < 2
        with pytest.raises(httpx.HTTPError):
            stuck.result(timeout=5)


def test_stop_does_not_wait_for_hanging_or_idle_connections() -> None:
    sim = QuaySimulator().start()
    idle = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)
    idle.request("GET", "/")
    idle.getresponse().read()
    sim.inject("list", hang=30, hold=True)  # held until stop, then hanging

    def wait_for_an_answer() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{sim.base_url}{TOKENS}",
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)

    hanging = threading.Thread(target=wait_for_an_answer, daemon=True)
    hanging.start()
    sim.wait_held("list")  # the request is inside the simulator
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 2
    hanging.join(timeout=5)
    assert not hanging.is_alive()
    idle.close()


# -- HTTP ---------------------------------------------------------------------------------------

def test_keep_alive_and_gunicorn_headers(sim: QuaySimulator) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)
    for _ in range(3):
        conn.request("GET", TOKENS, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200
        assert response.getheader("Server") == "gunicorn"
        assert response.getheader("Connection") == "keep-alive"
        assert int(response.getheader("Content-Length") or -1) == len(body)
    conn.request("DELETE", f"{TOKENS}/x", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert conn.getresponse().read()
    conn.close()
    assert sim.total_calls == 4


def test_trailing_slash_and_unknown_paths(sim: QuaySimulator) -> None:
    with api(sim) as client:
        for path in (f"{TOKENS}/", "/nope"):
            answer = client.get(path)
            assert answer.status_code == 404
            assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
            assert "window.__token" in answer.text
        assert client.put(TOKENS).status_code == 405


def test_concurrent_requests(sim: QuaySimulator) -> None:
    def work(index: int) -> None:
        with api(sim) as client:
            for step in range(10):
                create(client, f"{index}-{step}")
                assert client.get(TOKENS).status_code == 200

    run_concurrently(functools.partial(work, i) for i in range(16))
    assert len(sim.tokens()) == 160 and sim.total_calls == 320


def test_tls_mode() -> None:
    with QuaySimulator(tls=True) as sim:
        assert sim.base_url.startswith("https://") and sim.ca_path and sim.cert_path
        context = ssl.create_default_context(cafile=sim.ca_path)
        with httpx.Client(verify=context) as client:
            assert client.get(f"{sim.base_url}{TOKENS}",
                              headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
                              ).status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{sim.base_url}/")
        # A client that never completes the handshake does not block others.
        with socket.create_connection(("127.0.0.1", sim.port)):
            assert httpx.get(f"{sim.base_url}/", verify=context).status_code == 200
    assert not sim.server_errors


def test_feature_disabled() -> None:
    with QuaySimulator(app_specific_tokens=False) as sim, api(sim) as client:
        answer = client.get(TOKENS)
        assert answer.status_code == 404 and "window.__token" in answer.text
        assert client.get("/api/v1/user/").status_code == 200


def test_standalone_command() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.quaysim", "--port", "0",
                             "--expiration", "3600"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]
        base_url = lines[0].split()[-1]
        assert base_url.startswith("http://127.0.0.1:")
        assert ADMIN_TOKEN in lines[1] and "devtable / password" in lines[3]
        answer = httpx.post(f"{base_url}{TOKENS}", json={"title": "cli"},
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert answer.json()["token"]["expiration"] is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
