"""QuayClient: recorded answers, transport failures, and the simulator over real HTTP.

1. Every recorded response the client can receive is served by ``httpx.MockTransport`` for the
   recorded request; the client returns the parsed value or raises the mapped error.
2. Every httpx failure is mapped to a Quay error; no httpx exception escapes.
3. Against ``tests.quaysim`` over HTTP(S): both auth modes, scopes, TLS, injected faults.
4. The registry calls (challenge, credential check): recorded answers, the realm rule, the
   challenge parser, and the simulator, including a SERVER_HOSTNAME other than the API host.
No credential (token, password, cookie, CSRF token, token code) may appear in an error.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from function.connection import Connection, parse_connection
from function.errors import (
    ConfigError,
    QuayAuthError,
    QuayError,
    QuayFeatureDisabled,
    QuayInvalidRequest,
    QuayNotFound,
    QuayTLSError,
    QuayTransient,
    QuayUnexpectedResponse,
    ReconcileError,
)
from function.model import Token
from function.quay import (
    CredentialCheck,
    QuayClient,
    RegistryChallenge,
    parse_challenges,
    realm_refusal,
)
from tests.checks import run_concurrently
from tests.quaysim import (
    ADMIN_TOKEN,
    ALLSCOPES_TOKEN,
    EXPIRED_TOKEN,
    PASSWORD,
    READONLY_TOKEN,
    REPOREAD_TOKEN,
    USERNAME,
    QuaySimulator,
)

TRANSCRIPTS = Path(__file__).resolve().parent / "data" / "quay-transcripts"
RECORDED_BASE = "http://127.0.0.1:18080"
ROBOT, ROBOT_PASSWORD = "robot", "Pa55-w0rd-for-the-robot!"
WRONG_PASSWORD = "not-the-right-password-1234"
FAR_FUTURE = "Expires=Fri, 01 Jan 2100 00:00:00 GMT"
UUID_SEGMENT = re.compile(r"/[0-9a-f]{8}-[0-9a-f-]{27}$")


def record(number: str) -> dict[str, Any]:
    (path,) = TRANSCRIPTS.glob(f"{number}-*.json")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def recorded_response(number: str, *, drop_headers: tuple[str, ...] = ()) -> httpx.Response:
    """The recorded answer; cookie expiry moved to 2100 so the jar keeps it on any date."""
    answer = record(number)["response"]
    headers: list[tuple[str, str]] = []
    for name, value in answer["headers"].items():
        if name.lower() in ("content-length", *drop_headers):
            continue
        for one in value if isinstance(value, list) else [value]:
            headers.append((name, re.sub(r"Expires=[^;]*", FAR_FUTURE, one)))
    body = answer["body"]
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return httpx.Response(answer["status"], headers=headers, content=content)


def bearer_of(number: str) -> str:
    scheme, _, token = record(number)["request"]["headers"].get("Authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" else ADMIN_TOKEN


def oauth(token: str = ADMIN_TOKEN, base_url: str = RECORDED_BASE, **extra: Any) -> Connection:
    return Connection(base_url, base_url.split("://")[1], token=token, **extra)


def login(username: str = USERNAME, password: str = PASSWORD, base_url: str = RECORDED_BASE,
          **extra: Any) -> Connection:
    return Connection(base_url, base_url.split("://")[1], username=username, password=password,
                      **extra)


def assert_clean(error: BaseException, *secrets: str) -> None:
    """No credential in the message or repr, and nothing of httpx leaks as the error type."""
    assert isinstance(error, ReconcileError), type(error)
    text = f"{error} {error!r}"
    for secret in (ADMIN_TOKEN, READONLY_TOKEN, REPOREAD_TOKEN, EXPIRED_TOKEN, ALLSCOPES_TOKEN,
                   ROBOT_PASSWORD, WRONG_PASSWORD, *secrets):
        assert secret not in text, f"credential in {text!r}"
    assert not re.search(r"[A-Z0-9]{120}", text), "a token code leaked"
    assert len(str(error)) < 600


# -- 1. recorded answers ----------------------------------------------------------------------

# What the client raises for each recorded error answer of an OAuth-mode call.
RECORDED_ERRORS: dict[str, type[QuayError]] = {
    **dict.fromkeys(["010", "011", "021", "022", "027", "028", "135"], QuayNotFound),
    **dict.fromkeys(["012", "013", "014", "015", "018", "019"], QuayInvalidRequest),
    "029": QuayFeatureDisabled,
    # 030-059 are auth failures, except 036 (GET /api/v1/user/ with user:read) and 058 (``bearer``).
    **{f"{n:03d}": QuayAuthError for n in range(30, 60) if n not in (36, 58)},
}
# Registry endpoints: not app-token API calls (section 4 replays 091-094, 097, 103 and 136).
NOT_CLIENT_CALLS = {"091", "092", "093", "094", "095", "096", "097", "098", "099", "100", "103",
                    "115", "136"}
SESSION_FILES = {f"{n:03d}" for n in (*range(60, 86), *range(122, 131))}
ONE_SHOT = sorted(
    path.name[:3] for path in TRANSCRIPTS.glob("*.json")
    if path.name[:3] not in NOT_CLIENT_CALLS | SESSION_FILES
)


def current_user(client: QuayClient) -> Any:
    """``GET /api/v1/user/`` through the client's request path (sign-in, session upkeep, error
    mapping). The function never asks who it acts for, so the client has no method for it; the
    recorded answers to it still prove how the client treats them."""
    return client._call("GET", "/api/v1/user/")["username"]


def call_for(number: str, client: QuayClient) -> Any:
    """The client call whose request the recording shows.

    A list with ``?expiring=`` is played as the plain list the client sends (it never asks for
    the expiring window): the recorded answer has the same shape and must parse the same way.
    """
    request = record(number)["request"]
    method, path = request["method"], request["path"].split("?")[0].rstrip("/")
    if path == "/api/v1/user":
        return current_user(client)
    if path == "/api/v1/user/apptoken" and method == "GET":
        return client.list_tokens()
    if path == "/api/v1/user/apptoken":
        body = request["body"]
        title = body["title"] if isinstance(body, dict) and isinstance(body.get("title"),
                                                                      str) else "mytoken"
        return client.create_token(title)
    uuid = path.rsplit("/", 1)[1]
    return client.get_token(uuid) if method == "GET" else client.revoke_token(uuid)


def expected_value(number: str) -> Any:
    body = record(number)["response"]["body"]
    if body == "":
        return None
    if "username" in body:
        return body["username"]
    if "tokens" in body:
        return [Token(t["uuid"], t["title"], t["created"] or "", t["expiration"] or "",
                      t["last_accessed"] or "") for t in body["tokens"]]
    t = body["token"]
    return Token(t["uuid"], t["title"], t["created"] or "", t["expiration"] or "",
                 t["last_accessed"] or "", t["token_code"])


@pytest.mark.parametrize("number", ONE_SHOT)
def test_recorded_answer(number: str) -> None:
    recorded = record(number)["request"]
    seen: list[httpx.Request] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.method == recorded["method"]
        assert request.url.path.rstrip("/") == recorded["path"].split("?")[0].rstrip("/")
        assert request.url.query == b"", "the client sends no query parameter"
        assert request.headers["authorization"] == f"Bearer {bearer_of(number)}"
        assert "mozilla" not in request.headers["user-agent"].lower()
        if request.method == "POST" and isinstance(recorded["body"], dict) and isinstance(
                recorded["body"].get("title"), str):
            assert json.loads(request.content) == {"title": recorded["body"]["title"]}
        return recorded_response(number)

    with QuayClient(oauth(bearer_of(number)), transport=httpx.MockTransport(serve)) as client:
        error_type = RECORDED_ERRORS.get(number)
        if error_type is None:
            assert call_for(number, client) == expected_value(number)
        else:
            with pytest.raises(error_type) as caught:
                call_for(number, client)
            assert_clean(caught.value)
            assert f"{recorded['method']} /api/v1/user" in str(caught.value)
        assert client.calls == len(seen) == 1


@pytest.mark.parametrize(("number", "fragment"), [
    ("031", "needs the user:admin scope"),
    ("043", "OAuth token was not accepted"),
    ("048", "OAuth token was not accepted"),
    ("042", "unknown, expired or revoked"),
    ("029", "FEATURE_APP_SPECIFIC_TOKENS"),
    ("012", "'title' is a required property"),
    ("014", "Did not attempt to load JSON data"),
    ("010", "Not Found"),
])
def test_recorded_error_messages_say_what_to_fix(number: str, fragment: str) -> None:
    transport = httpx.MockTransport(lambda request: recorded_response(number))
    with QuayClient(oauth(), transport=transport) as client, \
            pytest.raises(QuayError) as caught:
        call_for(number, client)
    assert fragment in str(caught.value)


class Script:
    """Serves recorded answers in order and checks the client's requests against them.

    A step is a file number, checked in full, or ``(number, False)`` to serve the answer to a
    request that only matches in method and path. The client must always send back the cookie
    of the last Set-Cookie it was given, and the recorded X-CSRF-Token.
    """

    def __init__(self, *steps: str | tuple[str, bool],
                 edit: Callable[[str, httpx.Response], httpx.Response] | None = None) -> None:
        self.steps = [(s, True) if isinstance(s, str) else s for s in steps]
        self.edit = edit
        self.cookie: str | None = None
        self.sent: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        assert self.steps, f"unexpected request {request.method} {request.url.path}"
        number, full = self.steps.pop(0)
        recorded = record(number)["request"]
        path = recorded["path"].split("?")[0]
        if not full:
            path = UUID_SEGMENT.sub("/<uuid>", path)
        assert (request.method, path) == (recorded["method"],
                                          UUID_SEGMENT.sub("/<uuid>", request.url.path)
                                          if not full else request.url.path)
        if self.cookie is not None:
            assert f"_csrf_token={self.cookie}" in request.headers.get("cookie", "")
        assert "authorization" not in request.headers
        if full and "X-CSRF-Token" in recorded["headers"]:
            assert request.headers.get("x-csrf-token") == recorded["headers"]["X-CSRF-Token"]
        if full and isinstance(recorded["body"], dict):
            assert json.loads(request.content) == recorded["body"]
        response = recorded_response(number)
        if self.edit is not None:
            response = self.edit(number, response)
        found = re.search(r"_csrf_token=([^;]*)", response.headers.get("set-cookie", ""))
        if found:
            self.cookie = found[1]
        return response

    def client(self, conn: Connection | None = None) -> QuayClient:
        return QuayClient(conn or login(), transport=httpx.MockTransport(self))

    def done(self) -> None:
        assert not self.steps, f"requests never sent: {self.steps}"


def test_session_sign_in_use_and_sign_out() -> None:
    script = Script("060", "066", "068", "069", "073", "075", "080")
    with script.client() as client:
        assert [t.title for t in client.list_tokens()] == ["mytoken", "", "extra"]
        created = client.create_token("session token")
        assert created == expected_value("069")
        assert client.get_token(created.uuid).code == created.code
        client.revoke_token(created.uuid)
        assert client.calls == 6
    script.done()
    assert client.calls == 7


def test_session_csrf_from_the_csrf_endpoint() -> None:
    def no_next_token(number: str, response: httpx.Response) -> httpx.Response:
        if number == "066":
            del response.headers["X-Next-CSRF-Token"]
        return response

    script = Script("060", "066", "079", "067", "080", edit=no_next_token)
    with script.client() as client:
        assert current_user(client) == "devtable"
    script.done()


def test_session_query_param_create_answer_is_parsed() -> None:
    script = Script("060", "066", ("072", False), "080")
    with script.client() as client:
        assert client.create_token("session token 4") == expected_value("072")
    script.done()


@pytest.mark.parametrize(("lost", "call", "again"), [
    ("065", "user", "067"),
    ("085", "list", "068"),
])
def test_session_lost_to_a_sign_out_elsewhere_signs_in_again(lost: str, call: str,
                                                             again: str) -> None:
    script = Script("060", "066", "068", (lost, False), ("060", False), ("066", False),
                    (again, False), "080")
    with script.client() as client:
        client.list_tokens()
        assert current_user(client) if call == "user" else client.list_tokens()
    script.done()


def test_session_lost_right_after_sign_in_is_transient() -> None:
    script = Script("060", "066", ("085", False), "080")
    with script.client() as client, pytest.raises(QuayTransient) as caught:
        client.list_tokens()
    assert "signed the same user out" in str(caught.value)
    assert_clean(caught.value)
    script.done()


def test_fresh_login_is_renewed_once_for_create() -> None:
    script = Script("122", "123", "124", "125", "129", ("124", False), ("080", False))
    with script.client() as client:
        assert client.create_token("fresh session token").title == "fresh session token"
        assert client.create_token("stale session token").uuid
    script.done()
    verify = script.sent[4]
    assert json.loads(verify.content) == {"password": PASSWORD}
    assert script.sent[5].headers["x-csrf-token"] == record("129")["response"]["headers"][
        "X-Next-CSRF-Token"]


def test_fresh_login_is_renewed_for_get_and_delete() -> None:
    script = Script("122", "123", ("127", False), ("129", False), ("112", False),
                    ("128", False), ("129", False), ("130", False), ("080", False))
    with script.client() as client:
        assert client.get_token("c939e111-8fc3-481a-9fa0-aa232ebd0a56").code
        client.revoke_token("c939e111-8fc3-481a-9fa0-aa232ebd0a56")
    script.done()


def test_fresh_login_verify_refused() -> None:
    script = Script("122", "123", "125", ("129", False), ("080", False),
                    edit=lambda n, r: recorded_response("082") if n == "129" else r)
    with script.client() as client, pytest.raises(QuayAuthError) as caught:
        client.create_token("stale session token")
    assert "rejected the password" in str(caught.value)
    script.done()


@pytest.mark.parametrize(("steps", "error", "fragment"), [
    (("081", ("082", False)), QuayAuthError, "rejected the username/password"),
    (("060", ("063", False)), QuayAuthError, "rejected the username/password"),
    (("081", ("083", False)), QuayTransient, "Retry-After 0"),
    (("060", ("064", False)), QuayInvalidRequest, "'password' is a required property"),
    (("060", ("061", False)), QuayAuthError, "CSRF token was invalid"),
    (("060", ("062", False)), QuayAuthError, "CSRF token was invalid"),
])
def test_sign_in_refused(steps: tuple[str | tuple[str, bool], ...], error: type[QuayError],
                         fragment: str) -> None:
    script = Script(*steps)
    password = WRONG_PASSWORD if "082" in steps[1] else ROBOT_PASSWORD
    with script.client(login(password=password)) as client, pytest.raises(error) as caught:
        client.list_tokens()
    assert fragment in str(caught.value)
    assert_clean(caught.value)
    script.done()  # no sign-out: never signed in


def test_sign_in_after_the_backoff() -> None:
    script = Script("081", "084", ("078", False), ("080", False))
    with script.client() as client:
        assert len(client.list_tokens()) == 4
    script.done()


@pytest.mark.parametrize(("answer", "call", "error", "fragment"), [
    ("070", "create", QuayAuthError, "(authorized: user devtable)"),
    ("071", "create", QuayAuthError, "CSRF token was invalid"),
    ("074", "revoke", QuayAuthError, "CSRF token was invalid"),
    ("077", "list", QuayInvalidRequest, "X-Requested-With"),
    ("076", "list", QuayUnexpectedResponse, "without a JSON object"),
])
def test_session_answers_mapped(answer: str, call: str, error: type[QuayError],
                                fragment: str) -> None:
    step = {"create": "069", "revoke": "075", "list": "068"}[call]
    script = Script("060", "066", (step, False), ("080", False),
                    edit=lambda n, r: recorded_response(answer) if n == step else r)
    with script.client() as client, pytest.raises(error) as caught:
        if call == "create":
            client.create_token("x")
        elif call == "revoke":
            client.revoke_token("107f3028-95ed-494e-970c-65896ea71c4e")
        else:
            client.list_tokens()
    assert fragment in str(caught.value)
    assert_clean(caught.value, record("066")["response"]["headers"]["X-Next-CSRF-Token"])
    script.done()


def test_every_transcript_is_exercised() -> None:
    used = set(ONE_SHOT) | NOT_CLIENT_CALLS
    used |= {"060", "061", "062", "063", "064", "065", "066", "067", "068", "069", "070", "071",
             "072", "073", "074", "075", "076", "077", "078", "079", "080", "081", "082", "083",
             "084", "085", "122", "123", "124", "125", "126", "127", "128", "129", "130"}
    recorded = {path.name[:3] for path in TRANSCRIPTS.glob("*.json")}
    assert len(recorded) == 124, f"expected the 124 transcripts in {TRANSCRIPTS}, found {len(recorded)}"
    assert recorded - used == set(), "transcripts no test plays"
    assert used - recorded == set(), "tests name transcripts that do not exist"


def test_session_list_on_a_stale_login_needs_no_verify() -> None:
    script = Script("122", "123", ("126", False), ("080", False))
    with script.client() as client:
        assert len(client.list_tokens()) == 3
    script.done()


# -- 2. transport failures and odd answers ----------------------------------------------------

def _cert_error() -> httpx.ConnectError:
    cause = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
                                            "verify failed: self-signed certificate")
    cause.verify_message = "self-signed certificate"
    try:
        raise httpx.ConnectError("certificate verify failed") from cause
    except httpx.ConnectError as error:
        return error


def _wrong_version() -> httpx.ConnectError:
    try:
        raise httpx.ConnectError("wrong version") from ssl.SSLError(1, "WRONG_VERSION_NUMBER")
    except httpx.ConnectError as error:
        return error


def _eof() -> httpx.ConnectError:
    try:
        raise httpx.ConnectError("eof") from ssl.SSLEOFError(8, "EOF occurred")
    except httpx.ConnectError as error:
        return error


@pytest.mark.parametrize(("raised", "error", "fragment"), [
    (httpx.ConnectError("[Errno 111] Connection refused"), QuayTransient, "cannot connect"),
    (httpx.ConnectTimeout("timed out"), QuayTransient, "within 10 s"),
    (httpx.ReadTimeout("timed out"), QuayTransient, "ReadTimeout"),
    (httpx.WriteTimeout("timed out"), QuayTransient, "WriteTimeout"),
    (httpx.PoolTimeout("timed out"), QuayTransient, "PoolTimeout"),
    (httpx.ReadError("[Errno 104] Connection reset by peer"), QuayTransient, "ReadError"),
    (httpx.WriteError("broken pipe"), QuayTransient, "WriteError"),
    (httpx.RemoteProtocolError("Server disconnected without sending a response."),
     QuayTransient, "RemoteProtocolError"),
    (httpx.LocalProtocolError("bad"), QuayTransient, "LocalProtocolError"),
    (httpx.ProxyError("407"), QuayTransient, "ProxyError"),
    (httpx.CloseError("close"), QuayTransient, "CloseError"),
    (_cert_error(), QuayTLSError, "set validateCerts to false"),
    (_wrong_version(), QuayTLSError, "check the scheme and port"),
    (_eof(), QuayTransient, "cannot connect"),
    (httpx.UnsupportedProtocol("ftp"), ConfigError, "not a usable URL"),
    (httpx.DecodingError("bad gzip"), QuayUnexpectedResponse, "DecodingError"),
    (httpx.TooManyRedirects("loop"), QuayUnexpectedResponse, "TooManyRedirects"),
    (httpx.InvalidURL("bad"), ConfigError, "not a usable URL"),
])
@pytest.mark.parametrize("session", [False, True], ids=["oauth", "session"])
def test_httpx_exceptions_are_mapped(raised: Exception, error: type[ReconcileError],
                                     fragment: str, session: bool) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise raised

    conn = login() if session else oauth()
    with QuayClient(conn, transport=httpx.MockTransport(fail)) as client, \
            pytest.raises(error) as caught:
        client.list_tokens()
    assert caught.value.__cause__ is raised
    assert not isinstance(caught.value, httpx.HTTPError)
    assert fragment in str(caught.value)
    assert ("GET /" if session else "GET /api/v1/user/apptoken") in str(caught.value)
    assert_clean(caught.value)


def _page(status: int, text: str, content_type: str = "text/html") -> httpx.Response:
    return httpx.Response(status, headers={"Content-Type": content_type}, text=text)


def _json(status: int, body: object, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


CODE = "A" * 120


@pytest.mark.parametrize(("call", "answer", "error", "fragment"), [
    ("list", _page(200, "<html><title>Log in</title></html>"), QuayUnexpectedResponse,
     "without a JSON object"),
    ("list", _json(200, {"items": []}), QuayUnexpectedResponse, "'tokens'"),
    ("list", _json(200, {"tokens": [{"uuid": "u", "title": 3, "created": None,
                                     "expiration": None, "last_accessed": None}]}),
     QuayUnexpectedResponse, "'title'"),
    ("list", _json(200, {"tokens": ["x"]}), QuayUnexpectedResponse, "not a JSON object"),
    ("list", _json(200, []), QuayUnexpectedResponse, "without a JSON object"),
    ("create", _json(200, {"token": {"uuid": "u", "title": "t", "created": None,
                                     "expiration": None, "last_accessed": None}}),
     QuayUnexpectedResponse, "'token_code'"),
    ("create", _json(200, {"token": {"uuid": "", "title": "t", "created": None,
                                     "expiration": None, "last_accessed": None,
                                     "token_code": CODE}}), QuayUnexpectedResponse, "empty uuid"),
    ("create", _json(200, {"token": {"uuid": "u", "title": "t", "created": 5,
                                     "expiration": None, "last_accessed": None,
                                     "token_code": CODE}}), QuayUnexpectedResponse, "'created'"),
    ("create", _page(200, f"token_code={CODE}&oops", "text/plain"), QuayUnexpectedResponse,
     "token_code=***&oops"),
    ("list", _page(502, "<html><head><title>502 Bad Gateway</title></head></html>"),
     QuayTransient, "502 Bad Gateway"),
    ("list", _page(500, "Internal Server Error", "text/plain"), QuayTransient, "500"),
    ("create", _page(503, ""), QuayTransient, "empty body"),
    ("list", _json(429, {"message": "slow down"}, **{"Retry-After": "7"}), QuayTransient,
     "Retry-After 7 s"),
    ("list", _page(404, "<html><title>Not Found</title></html>"), QuayFeatureDisabled,
     "FEATURE_APP_SPECIFIC_TOKENS"),
    ("revoke", _page(404, "<html><title>Not Found</title></html>"), QuayFeatureDisabled,
     "wrong path"),
    ("list", _page(302, ""), QuayUnexpectedResponse, "HTTP 302"),
    # not Quay's JSON: a short excerpt only (issue 18: the host may be anything)
    ("list", _page(418, "x" * 5000, "text/plain"), QuayUnexpectedResponse, "x" * 80 + "..."),
    ("create", _json(400, {"message": f"bad {CODE}"}), QuayInvalidRequest, "bad ***"),
    ("list", _json(409, {"error": "conflict"}), QuayUnexpectedResponse, "conflict"),
])
def test_unexpected_answers(call: str, answer: httpx.Response, error: type[QuayError],
                            fragment: str) -> None:
    with QuayClient(oauth(), transport=httpx.MockTransport(lambda r: answer)) as client, \
            pytest.raises(error) as caught:
        calls: dict[str, Callable[[], object]] = {
            "list": client.list_tokens, "create": lambda: client.create_token("t"), "revoke": lambda: client.revoke_token("u")}
        calls[call]()
    assert fragment in str(caught.value)
    assert_clean(caught.value, CODE)


def test_uuid_is_one_path_segment() -> None:
    seen: list[str] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(204)

    with QuayClient(oauth(), transport=httpx.MockTransport(serve)) as client:
        client.revoke_token("../../user/x y")
        with pytest.raises(ValueError, match="uuid"):
            client.revoke_token("")
    assert seen == ["/api/v1/user/apptoken/..%2F..%2Fuser%2Fx%20y"]


def test_base_url_path_prefix_is_kept() -> None:
    seen: list[str] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return recorded_response("004")

    conn = parse_connection({"host": "https://quay.example.com/quay/", "token": ADMIN_TOKEN},
                            secret_name="s")
    with QuayClient(conn, transport=httpx.MockTransport(serve)) as client:
        assert client.list_tokens() == []
    assert seen == ["https://quay.example.com/quay/api/v1/user/apptoken"]


def test_one_debug_line_per_request_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    script = Script("060", ("066", False), "068", "080")
    with caplog.at_level(logging.DEBUG, logger="function.quay"), \
            script.client(login(password=ROBOT_PASSWORD)) as client:
        client.list_tokens()
    lines = [r.getMessage() for r in caplog.records if r.name == "function.quay"]
    assert lines == [f"quay {m} -> 200 in {ms} ms" for m, ms in zip(
        ["GET /", "POST /api/v1/signin", "GET /api/v1/user/apptoken", "POST /api/v1/signout"],
        [re.search(r"in (\d+) ms", line)[1] for line in lines],  # type: ignore[index]
        strict=True)]
    for secret in (ROBOT_PASSWORD, record("066")["response"]["headers"]["X-Next-CSRF-Token"]):
        assert secret not in caplog.text


# -- 3. the simulator over real HTTP ----------------------------------------------------------

@pytest.fixture
def sim() -> Iterator[QuaySimulator]:
    with QuaySimulator(fresh_login_timeout=60) as simulator:
        simulator.add_user(ROBOT, ROBOT_PASSWORD)
        yield simulator
    assert not simulator.server_errors


@pytest.fixture(scope="module")
def tls_sim() -> Iterator[QuaySimulator]:
    with QuaySimulator(tls=True) as simulator:
        yield simulator
    assert not simulator.server_errors


def sim_secrets(sim: QuaySimulator) -> list[str]:
    with sim.state.lock:
        return [*(t.code for t in sim.state.app_tokens.values()),
                *(s.sid for s in sim.state.sessions.values()),
                *(s.csrf for s in sim.state.sessions.values() if s.csrf)]


def secret_conn(sim: QuaySimulator, **data: str) -> Connection:
    return parse_connection({"host": sim.base_url, **data}, secret_name="quay-credentials")


def test_oauth_create_list_get_revoke(sim: QuaySimulator) -> None:
    with QuayClient(secret_conn(sim, token=ADMIN_TOKEN)) as client:
        first = client.create_token("ci")
        second = client.create_token("ci")
        assert first.uuid != second.uuid and first.code and len(first.code) == 120
        listed = client.list_tokens()
        assert [t.uuid for t in listed] == [first.uuid, second.uuid]
        assert all(t.code == "" for t in listed)
        assert client.get_token(first.uuid).code == first.code
        client.revoke_token(first.uuid)
        with pytest.raises(QuayNotFound) as caught:
            client.revoke_token(first.uuid)
        assert_clean(caught.value, *sim_secrets(sim))
        with pytest.raises(QuayNotFound):
            client.get_token(first.uuid)
        assert client.calls == 7
    assert sim.calls_by_auth == {("POST", "oauth"): 2, ("GET", "oauth"): 3,
                                 ("DELETE", "oauth"): 2}
    assert "signout" not in sim.calls


def test_session_create_list_get_revoke(sim: QuaySimulator) -> None:
    with QuayClient(secret_conn(sim, username=ROBOT, password=ROBOT_PASSWORD)) as client:
        token = client.create_token("via session")
        assert client.list_tokens() == [Token(token.uuid, token.title, token.created,
                                                 token.expiration, token.last_accessed)]
        assert client.get_token(token.uuid).code == token.code
        client.revoke_token(token.uuid)
        assert client.calls == 6
    assert sim.calls == {"root": 1, "signin": 1, "create": 1, "list": 1, "get": 1, "revoke": 1,
                         "signout": 1}
    assert sim.tokens(ROBOT) == []


def test_session_fresh_login_renewed(sim: QuaySimulator) -> None:
    with QuayClient(secret_conn(sim, username=ROBOT, password=ROBOT_PASSWORD)) as client:
        token = client.create_token("before")
        sim.advance(61)
        assert client.list_tokens()  # lists need no fresh login
        assert client.get_token(token.uuid).uuid == token.uuid
        client.revoke_token(token.uuid)
    assert sim.calls["verify"] == 1 and sim.calls["signin"] == 1 and sim.calls["get"] == 2


def test_session_survives_a_sign_out_by_another_client(sim: QuaySimulator) -> None:
    conn = secret_conn(sim, username=ROBOT, password=ROBOT_PASSWORD)
    with QuayClient(conn) as first:
        first.list_tokens()
        with QuayClient(conn) as second:
            second.list_tokens()
        # The second client's sign-out ended every session of the user, the first one's too.
        assert first.create_token("still works").title == "still works"
    assert sim.calls["signin"] == 3 and sim.calls["signout"] == 2


def test_wrong_password_then_throttled(sim: QuaySimulator) -> None:
    with QuayClient(secret_conn(sim, username=ROBOT, password=WRONG_PASSWORD)) as client, \
            pytest.raises(QuayAuthError) as caught:
        client.list_tokens()
    assert "rejected the username/password" in str(caught.value)
    assert_clean(caught.value, *sim_secrets(sim))
    with QuayClient(secret_conn(sim, username=ROBOT, password=ROBOT_PASSWORD)) as client, \
            pytest.raises(QuayTransient) as throttled:
        client.list_tokens()
    assert "429" in str(throttled.value) and "Retry-After" in str(throttled.value)
    sim.advance(1)
    with QuayClient(secret_conn(sim, username=ROBOT, password=ROBOT_PASSWORD)) as client:
        assert client.list_tokens() == []


@pytest.mark.parametrize(("token", "call", "fragment"), [
    (READONLY_TOKEN, "create", "needs the user:admin scope"),
    (REPOREAD_TOKEN, "list", "needs the user:admin scope"),
    (EXPIRED_TOKEN, "list", "unknown, expired or revoked"),
    (EXPIRED_TOKEN, "create", "OAuth token was not accepted"),
    ("not-a-token", "revoke", "OAuth token was not accepted"),
])
def test_rejected_oauth_tokens(sim: QuaySimulator, token: str, call: str,
                               fragment: str) -> None:
    with QuayClient(secret_conn(sim, token=token)) as client, \
            pytest.raises(QuayAuthError) as caught:
        calls: dict[str, Callable[[], object]] = {
            "list": client.list_tokens, "create": lambda: client.create_token("x"),
            "revoke": lambda: client.revoke_token("00000000-0000-0000-0000-000000000000")}
        calls[call]()
    assert fragment in str(caught.value)
    assert_clean(caught.value, token, *sim_secrets(sim))
    assert sim.tokens() == []


def test_tls_verification_failure(tls_sim: QuaySimulator) -> None:
    with QuayClient(secret_conn(tls_sim, token=ADMIN_TOKEN)) as client, \
            pytest.raises(QuayTLSError) as caught:
        client.list_tokens()
    assert "set validateCerts to false" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert_clean(caught.value)


def test_tls_without_verification(tls_sim: QuaySimulator) -> None:
    conn = secret_conn(tls_sim, token=ADMIN_TOKEN, validateCerts="false")
    with QuayClient(conn) as client:
        assert isinstance(client.list_tokens(), list)


def test_tls_with_the_ca_trusted(tls_sim: QuaySimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    assert tls_sim.ca_path is not None
    monkeypatch.setenv("SSL_CERT_FILE", tls_sim.ca_path)
    with QuayClient(secret_conn(tls_sim, username=USERNAME, password=PASSWORD)) as client:
        assert isinstance(client.list_tokens(), list)


def test_https_to_a_plain_http_port_is_a_tls_error(sim: QuaySimulator) -> None:
    conn = parse_connection({"host": f"https://{sim.host}", "token": ADMIN_TOKEN},
                            secret_name="s")
    with QuayClient(conn) as client, pytest.raises(QuayTLSError) as caught:
        client.list_tokens()
    assert "check the scheme and port" in str(caught.value)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_injected_statuses_are_transient_and_create_nothing(sim: QuaySimulator,
                                                           status: int) -> None:
    sim.inject("create", statuses=[status])
    with QuayClient(secret_conn(sim, token=ADMIN_TOKEN)) as client:
        with pytest.raises(QuayTransient) as caught:
            client.create_token("x")
        assert str(status) in str(caught.value)
        assert sim.tokens() == []
        assert client.create_token("x").title == "x"


def test_dropped_connection_is_transient_and_creates_nothing(sim: QuaySimulator) -> None:
    sim.inject("create", drop=1)
    with QuayClient(secret_conn(sim, token=ADMIN_TOKEN)) as client:
        with pytest.raises(QuayTransient) as caught:
            client.create_token("x")
        assert_clean(caught.value)
        assert sim.tokens() == []
        client.create_token("x")
    assert len(sim.tokens()) == 1


def test_drop_after_create_leaves_the_token(sim: QuaySimulator) -> None:
    sim.inject("create", after=1)
    with QuayClient(secret_conn(sim, token=ADMIN_TOKEN)) as client:
        with pytest.raises(QuayTransient):
            client.create_token("orphan")
        assert [t.title for t in client.list_tokens()] == ["orphan"]


def test_hang_longer_than_the_timeout(sim: QuaySimulator) -> None:
    sim.inject("list", hang=5)
    started = time.monotonic()
    with QuayClient(secret_conn(sim, token=ADMIN_TOKEN, timeout="0.3")) as client:
        with pytest.raises(QuayTransient) as caught:
            client.list_tokens()
        assert time.monotonic() - started < 2
        assert "within 0.3 s" in str(caught.value)
        assert client.list_tokens() == []


def test_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conn = parse_connection({"host": f"http://127.0.0.1:{port}", "token": ADMIN_TOKEN},
                            secret_name="s")
    with QuayClient(conn) as client, pytest.raises(QuayTransient) as caught:
        client.list_tokens()
    assert "cannot connect" in str(caught.value)


def test_feature_disabled_and_wrong_path() -> None:
    with QuaySimulator(app_specific_tokens=False) as off:
        with QuayClient(secret_conn(off, token=ADMIN_TOKEN)) as client, \
                pytest.raises(QuayFeatureDisabled):
            client.list_tokens()
        conn = parse_connection({"host": f"{off.base_url}/quay", "token": ADMIN_TOKEN},
                                secret_name="s")
        with QuayClient(conn) as client, pytest.raises(QuayFeatureDisabled) as caught:
            client.list_tokens()
        assert "wrong path" in str(caught.value)


def test_sixteen_concurrent_clients(sim: QuaySimulator) -> None:
    def work(index: int) -> None:
        with QuayClient(secret_conn(sim, token=ADMIN_TOKEN)) as client:
            token = client.create_token(f"t{index}")
            assert token.uuid in {t.uuid for t in client.list_tokens()}

    run_concurrently(functools.partial(work, i) for i in range(16))
    assert sorted(t["title"] for t in sim.tokens()) == sorted(f"t{i}" for i in range(16))


def test_registry_login_with_a_created_token(sim: QuaySimulator) -> None:
    """The token the client returns works as a docker password ($app), and marks it used."""
    with QuayClient(secret_conn(sim, token=ADMIN_TOKEN)) as client:
        token = client.create_token("docker")
        basic = base64.b64encode(f"$app:{token.code}".encode()).decode()
        answer = httpx.get(f"{sim.base_url}/v2/auth", params={"account": "$app",
                                                              "service": sim.host},
                           headers={"Authorization": f"Basic {basic}"})
        assert answer.status_code == 200 and answer.json()["token"].count(".") == 2
        (listed,) = client.list_tokens()
        assert listed.last_accessed is not None


def test_bad_environment_and_hand_made_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
    with pytest.raises(QuayTLSError, match="SSL_CERT_FILE"):
        QuayClient(oauth(base_url="https://quay.example.com"))
    monkeypatch.delenv("SSL_CERT_FILE")
    with pytest.raises(ConfigError, match="not a usable URL"):
        QuayClient(Connection("http://quay:x", "quay:x", token=ADMIN_TOKEN))
    with QuayClient(Connection("", "", token=ADMIN_TOKEN)) as client, \
            pytest.raises(ConfigError, match="not a usable URL"):
        client.list_tokens()



# -- 4. the registry: challenge and credential check ------------------------------------------

RECORDED_REALM = f"{RECORDED_BASE}/v2/auth"
RECORDED_SERVICE = "127.0.0.1:18080"


def recorded_code(number: str) -> str:
    """The token code the recording sent as the ``$app`` password."""
    encoded = record(number)["request"]["headers"]["Authorization"].split()[1]
    return base64.b64decode(encoded).decode().split(":", 1)[1]


class Registry:
    """A MockTransport that serves one answer and records what the client sent."""

    def __init__(self, answer: httpx.Response | Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.sent: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return self.answer(request) if callable(self.answer) else self.answer

    def client(self, conn: Connection | None = None) -> QuayClient:
        return QuayClient(conn or oauth(), transport=httpx.MockTransport(self))


def assert_anonymous(request: httpx.Request) -> None:
    """Neither the OAuth token nor a session cookie goes to the registry endpoints."""
    assert "cookie" not in request.headers
    assert not request.headers.get("authorization", "").lower().startswith("bearer")
    assert "mozilla" not in request.headers["user-agent"].lower()


@pytest.mark.parametrize("number", ["091", "092"])
@pytest.mark.parametrize("session", [False, True], ids=["oauth", "session"])
def test_recorded_challenge(number: str, session: bool) -> None:
    registry = Registry(recorded_response(number))
    with registry.client(login() if session else oauth()) as client:
        assert client.registry_challenge() == RegistryChallenge(RECORDED_REALM, RECORDED_SERVICE)
        assert client.calls == 1
    (request,) = registry.sent  # no sign-in, no sign-out: the registry needs no session
    assert (request.method, str(request.url)) == ("GET", f"{RECORDED_BASE}/v2/")
    assert "authorization" not in request.headers
    assert_anonymous(request)


def test_challenge_is_read_at_the_root_of_a_path_prefixed_host() -> None:
    registry = Registry(recorded_response("091"))
    conn = parse_connection({"host": "https://quay.example.com:8443/quay/", "token": ADMIN_TOKEN},
                            secret_name="s")
    with registry.client(conn) as client:
        assert client.registry_challenge() is not None
    assert str(registry.sent[0].url) == "https://quay.example.com:8443/v2/"


def _challenge_answer(status: int, *values: str, body: str = "") -> httpx.Response:
    return httpx.Response(status, headers=[("WWW-Authenticate", v) for v in values], text=body)


@pytest.mark.parametrize(("answer", "expected"), [
    pytest.param(_challenge_answer(401, 'Bearer realm="https://q.example/v2/auth",service="q.example"'),
                 RegistryChallenge("https://q.example/v2/auth", "q.example"), id="quay"),
    pytest.param(_challenge_answer(401, 'bearer Service = "q.example" , REALM="https://q.example/a"'),
                 RegistryChallenge("https://q.example/a", "q.example"), id="case-and-spaces"),
    pytest.param(_challenge_answer(401, 'Basic realm="x"', 'Bearer realm="https://q.example/a"'),
                 RegistryChallenge("https://q.example/a", None), id="two-headers-no-service"),
    pytest.param(_challenge_answer(401, 'Basic abc==, Bearer realm="https://q.example/a",'
                                        'service="q",scope="repository:a/b:pull"'),
                 RegistryChallenge("https://q.example/a", "q"), id="token68-then-bearer"),
    pytest.param(_challenge_answer(401, 'Bearer realm="https://q.example/a",service=""'),
                 RegistryChallenge("https://q.example/a", None), id="empty-service"),
    pytest.param(_challenge_answer(200, body="true"), None, id="open-registry"),
    pytest.param(_page(404, "<html><title>404</title></html>"), None, id="no-registry"),
    pytest.param(_challenge_answer(401, 'Basic realm="Registry"'), None, id="basic-only"),
    pytest.param(_challenge_answer(401, "garbage\"here"), None, id="unparsable"),
])
def test_challenge_shapes(answer: httpx.Response, expected: RegistryChallenge | None) -> None:
    with Registry(answer).client() as client:
        assert client.registry_challenge() == expected


@pytest.mark.parametrize(("answer", "error", "fragment"), [
    pytest.param(_challenge_answer(401, 'Bearer service="q"'), QuayUnexpectedResponse,
                 "no http(s) realm", id="no-realm"),
    pytest.param(_challenge_answer(401, 'Bearer realm="/v2/auth"'), QuayUnexpectedResponse,
                 "no http(s) realm", id="relative-realm"),
    pytest.param(_challenge_answer(401, 'Bearer realm="ftp://q.example/a"'),
                 QuayUnexpectedResponse, "no http(s) realm", id="ftp-realm"),
    pytest.param(_page(503, "<html><title>Service Unavailable</title></html>"), QuayTransient,
                 "GET /v2/: Quay answered 503", id="503"),
    pytest.param(httpx.Response(429, headers={"Retry-After": "3"}, text="slow down"),
                 QuayTransient, "Retry-After 3", id="429"),
])
def test_challenge_failures(answer: httpx.Response, error: type[QuayError], fragment: str) -> None:
    with Registry(answer).client() as client, pytest.raises(error) as caught:
        client.registry_challenge()
    assert fragment in str(caught.value)
    assert_clean(caught.value)


@pytest.mark.parametrize(("raised", "error", "fragment"), [
    (httpx.ConnectError("[Errno 111] Connection refused"), QuayTransient, "cannot connect"),
    (httpx.ReadTimeout("timed out"), QuayTransient, "ReadTimeout"),
    (_cert_error(), QuayTLSError, "set validateCerts to false"),
])
def test_registry_transport_failures_are_mapped(raised: Exception, error: type[QuayError],
                                                fragment: str) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise raised

    code = recorded_code("093")
    with Registry(fail).client() as client:
        with pytest.raises(error) as caught:
            client.registry_challenge()
        assert fragment in str(caught.value) and "GET /v2/" in str(caught.value)
        with pytest.raises(error) as caught:
            client.check_credential(RECORDED_REALM, RECORDED_SERVICE, code)
        assert f"GET {RECORDED_REALM}" in str(caught.value)
        assert fragment in str(caught.value)
        assert caught.value.__cause__ is raised
        assert_clean(caught.value, code)
        assert client.calls == 2


def test_recorded_credential_accepted() -> None:
    """093: Basic ``$app:<code>`` at the realm, with account and service, as docker login."""
    registry = Registry(recorded_response("093"))
    code = recorded_code("093")
    with registry.client(login()) as client:
        check = client.check_credential(RECORDED_REALM, RECORDED_SERVICE, code)
        assert client.calls == 1
    assert check == CredentialCheck(True, f"GET {RECORDED_REALM}: the registry accepted the "
                                          "token (200)")
    (request,) = registry.sent
    assert request.url.path == "/v2/auth"
    assert dict(request.url.params) == {"account": "$app", "service": RECORDED_SERVICE}
    assert request.headers["authorization"] == record("093")["request"]["headers"]["Authorization"]
    assert_anonymous(request)


@pytest.mark.parametrize("number", ["097", "103", "136"])
def test_recorded_credential_refused(number: str) -> None:
    """A wrong (097), revoked (103) or expired (136) code: False with Quay's answer."""
    code = recorded_code(number)
    with Registry(recorded_response(number)).client() as client:
        check = client.check_credential(RECORDED_REALM, RECORDED_SERVICE, code)
    assert check == CredentialCheck(False, f"GET {RECORDED_REALM}: the registry refused the "
                                           "token (401 UNAUTHORIZED: Invalid token)")


CODE_B64 = base64.b64encode(f"$app:{CODE}".encode()).decode()


@pytest.mark.parametrize(("answer", "ok", "fragment"), [
    pytest.param(_json(200, {"token": "a.b.c"}), True, "accepted the token (200)", id="ok"),
    pytest.param(_json(200, {"nothing": 1}), False, "200 without a token", id="200-no-token"),
    pytest.param(_page(200, "<html><title>Login</title></html>"), False, "200 without a token",
                 id="200-html"),
    pytest.param(_json(403, {"errors": [{"code": "DENIED", "message": "namespace disabled"}]}),
                 False, "refused the token (403 DENIED: namespace disabled)", id="403"),
    pytest.param(_page(404, "not here"), False, "did not accept the token (404 not here)",
                 id="404"),
    pytest.param(_json(401, {"errors": [{"code": "UNAUTHORIZED", "message": f"bad {CODE}"}]}),
                 False, "(401 UNAUTHORIZED: bad ***)", id="echoed-code-scrubbed"),
    pytest.param(_json(400, {"error": f"bad header Basic {CODE_B64}"}), False,
                 "(400 bad header Basic ***)", id="echoed-basic-scrubbed"),
    pytest.param(httpx.Response(302, headers={"Location": "https://elsewhere.example/"}), False,
                 "did not accept the token (302", id="redirect-not-followed"),
])
def test_credential_answers(answer: httpx.Response, ok: bool, fragment: str) -> None:
    registry = Registry(answer)
    with registry.client() as client:
        check = client.check_credential(RECORDED_REALM, RECORDED_SERVICE, CODE)
    assert check.ok is ok
    assert fragment in check.detail
    assert CODE not in check.detail and CODE_B64 not in check.detail
    assert len(registry.sent) == 1


@pytest.mark.parametrize("answer", [
    _page(503, f"upstream said {CODE}"),
    httpx.Response(429, text="slow down"),
])
def test_credential_check_unavailable_is_transient(answer: httpx.Response) -> None:
    with Registry(answer).client() as client, pytest.raises(QuayTransient) as caught:
        client.check_credential(RECORDED_REALM, RECORDED_SERVICE, CODE)
    assert f"GET {RECORDED_REALM}: Quay answered" in str(caught.value)
    assert_clean(caught.value, CODE, CODE_B64)


# (realm, base_url, service) -> None when the code may be sent there, else a fragment of why not.
REALMS = [
    pytest.param("http://127.0.0.1:18080/v2/auth", RECORDED_BASE, RECORDED_SERVICE, None,
                 id="api-host"),
    pytest.param("https://quay.example.com/v2/auth", "https://quay.example.com", None, None,
                 id="api-host-no-service"),
    pytest.param("https://QUAY.example.com:443/v2/auth", "https://quay.example.com/quay", None,
                 None, id="default-port-and-case"),
    pytest.param("https://registry.example.com/v2/auth", "https://quay.example.com",
                 "registry.example.com", None, id="announced-registry-host"),
    pytest.param("https://registry.example.com:5000/v2/auth", "https://quay.example.com",
                 "registry.example.com:5000", None, id="announced-registry-host-port"),
    pytest.param("https://quay.example.com/v2/auth", "http://quay.example.com:443", None, None,
                 id="upgrade-to-https"),
    pytest.param("https://evil.example.net/v2/auth", "https://quay.example.com",
                 "quay.example.com", "evil.example.net:443 is not quay.example.com:443 (",
                 id="third-party-host"),
    pytest.param("https://quay.example.com:8443/v2/auth", "https://quay.example.com",
                 "quay.example.com", "quay.example.com:8443 is not", id="other-port"),
    pytest.param("https://registry.example.com:5000/v2/auth", "https://quay.example.com",
                 "registry.example.com",
                 "registry.example.com:5000 is neither quay.example.com:443 nor registry.example.com:443",
                 id="registry-host-other-port"),
    pytest.param("http://quay.example.com/v2/auth", "https://quay.example.com", None,
                 "downgrade", id="downgrade-to-http"),
    pytest.param("https://user:pw@quay.example.com/v2/auth", "https://quay.example.com", None,
                 "user info", id="userinfo"),
    pytest.param("/v2/auth", "https://quay.example.com", None, "not an absolute", id="relative"),
    pytest.param("https://quay.example.com:99999/v2/auth", "https://quay.example.com", None,
                 "not a valid URL", id="bad-port"),
    pytest.param("https://quay.example.com.evil.example.net/v2/auth",
                 "https://quay.example.com", None, "is not quay.example.com:443", id="suffix-trick"),
]


@pytest.mark.parametrize(("realm", "base_url", "service", "refused"), REALMS)
def test_realm_rule(realm: str, base_url: str, service: str | None, refused: str | None) -> None:
    why = realm_refusal(realm, base_url, service)
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why


def test_refused_realm_gets_nothing_sent() -> None:
    registry = Registry(_json(200, {"token": "a.b.c"}))
    with registry.client() as client, pytest.raises(QuayUnexpectedResponse) as caught:
        client.check_credential("https://evil.example.net/v2/auth", RECORDED_SERVICE, CODE)
    assert registry.sent == [] and client.calls == 0
    assert "'https://evil.example.net/v2/auth', which is not sent the token" in str(caught.value)
    assert_clean(caught.value, CODE)
    with registry.client() as client, pytest.raises(ValueError, match="code"):
        client.check_credential(RECORDED_REALM, RECORDED_SERVICE, "")


@pytest.mark.parametrize(("header", "expected"), [
    pytest.param('Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"',
                 [("newauth", {"realm": "apps", "type": "1", "title": 'Login to "apps"'}),
                  ("basic", {"realm": "simple"})], id="rfc9110-example"),
    pytest.param('Bearer realm="a,b",error="invalid_token",realm="ignored"',
                 [("bearer", {"realm": "a,b", "error": "invalid_token"})], id="comma-in-quotes"),
    pytest.param('Bearer realm="a" service="b"', [("bearer", {"realm": "a", "service": "b"})],
                 id="missing-comma-tolerated"),
    pytest.param("Basic YWxhZGRpbjpvcGVuc2VzYW1l", [("basic", {})], id="token68"),
    pytest.param('Bearer realm="a", "oops', [("bearer", {"realm": "a"})], id="stops-at-garbage"),
    pytest.param("", [], id="empty"),
])
def test_challenge_parser(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    assert parse_challenges(header) == expected


def test_registry_calls_against_the_simulator(sim: QuaySimulator) -> None:
    with QuayClient(secret_conn(sim, token=ADMIN_TOKEN)) as client:
        token = client.create_token("verified")
        assert token.code is not None
        sim.reset_counters()
        challenge = client.registry_challenge()
        assert challenge == RegistryChallenge(f"{sim.base_url}/v2/auth", sim.host)
        check = client.check_credential(challenge.realm, challenge.service, token.code)
        assert check.ok, check.detail
        assert sim.calls == {"v2": 1, "v2_auth": 1} and client.calls == 3
        wrong = client.check_credential(challenge.realm, challenge.service,
                                        token.code[:-4] + "XXXX")
        assert wrong == CredentialCheck(False, f"GET {sim.base_url}/v2/auth: the registry "
                                               "refused the token (401 UNAUTHORIZED: "
                                               "Invalid token)")
        (listed,) = client.list_tokens()
        assert listed.last_accessed is not None  # the check is a real registry login
        client.revoke_token(token.uuid)
        revoked = client.check_credential(challenge.realm, challenge.service, token.code)
        assert not revoked.ok and "Invalid token" in revoked.detail
        assert token.code not in f"{check} {wrong} {revoked}"
    assert sim.calls_by_auth[("GET", "anonymous")] == 1
    assert sim.calls_by_auth[("GET", "registry")] == 3


def test_expired_token_is_refused_by_the_simulator(sim: QuaySimulator) -> None:
    sim.token_expiration = 30
    with QuayClient(secret_conn(sim, token=ADMIN_TOKEN)) as client:
        token = client.create_token("short")
        assert token.code is not None
        challenge = client.registry_challenge()
        assert challenge is not None
        assert client.check_credential(challenge.realm, challenge.service, token.code).ok
        sim.advance(31)
        late = client.check_credential(challenge.realm, challenge.service, token.code)
        assert not late.ok and "Invalid token" in late.detail


def test_registry_calls_never_sign_in(sim: QuaySimulator) -> None:
    with QuayClient(secret_conn(sim, username=ROBOT, password=ROBOT_PASSWORD)) as client:
        challenge = client.registry_challenge()
        assert challenge is not None
        check = client.check_credential(challenge.realm, challenge.service, CODE)
        assert not check.ok
    assert sim.calls == {"v2": 1, "v2_auth": 1}  # no GET /, sign-in or sign-out
    assert ROBOT_PASSWORD not in check.detail


def test_server_hostname_other_than_the_api_host(sim: QuaySimulator) -> None:
    """SERVER_HOSTNAME ``localhost:<port>`` while the API is used as ``127.0.0.1:<port>``: the
    challenge announces it and the realm on it is followed (it is the announced registry)."""
    sim.server_hostname = f"localhost:{sim.port}"
    with QuayClient(secret_conn(sim, token=ADMIN_TOKEN)) as client:
        token = client.create_token("renamed")
        assert token.code is not None
        challenge = client.registry_challenge()
        assert challenge == RegistryChallenge(f"http://localhost:{sim.port}/v2/auth",
                                              f"localhost:{sim.port}")
        assert challenge.service != secret_conn(sim, token=ADMIN_TOKEN).registry
        check = client.check_credential(challenge.realm, challenge.service, token.code)
        assert check.ok, check.detail
        # The same realm without the announced service is a host the code may not go to.
        with pytest.raises(QuayUnexpectedResponse, match=r"is not 127\.0\.0\.1"):
            client.check_credential(challenge.realm, None, token.code)


def test_registry_over_tls(tls_sim: QuaySimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    assert tls_sim.ca_path is not None
    monkeypatch.setenv("SSL_CERT_FILE", tls_sim.ca_path)
    with QuayClient(secret_conn(tls_sim, token=ADMIN_TOKEN)) as client:
        challenge = client.registry_challenge()
        assert challenge == RegistryChallenge(f"{tls_sim.base_url}/v2/auth", tls_sim.host)
        token = client.create_token("tls")
        assert token.code is not None
        assert client.check_credential(challenge.realm, challenge.service, token.code).ok
        client.revoke_token(token.uuid)


def test_registry_debug_lines_carry_no_code(sim: QuaySimulator,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with QuayClient(secret_conn(sim, token=ADMIN_TOKEN)) as client:
        token = client.create_token("logged")
        assert token.code is not None
        with caplog.at_level(logging.DEBUG, logger="function.quay"):
            challenge = client.registry_challenge()
            assert challenge is not None
            client.check_credential(challenge.realm, challenge.service, token.code)
    lines = [r.getMessage() for r in caplog.records if r.name == "function.quay"]
    assert [re.sub(r"\d+ ms", "N ms", line) for line in lines] == [
        "quay GET /v2/ -> 401 in N ms", f"quay GET {sim.base_url}/v2/auth -> 200 in N ms"]
    basic = base64.b64encode(f"$app:{token.code}".encode()).decode()
    assert token.code not in caplog.text and basic not in caplog.text


def test_a_foreign_host_is_quoted_short_and_printable_only() -> None:
    """Issue 18: the host is the tenant's choice (an internal service, a metadata endpoint): its
    answer is read back through status only as a short excerpt of printable ASCII."""
    page = "<html>\x1b[31m" + "internal-secret-" * 50 + "</html>"
    transport = httpx.MockTransport(lambda request: httpx.Response(
        200, content=page.encode(), headers={"Content-Type": "text/html"}))
    with QuayClient(Connection("https://q", "q", token="oauth"), transport=transport) as client, \
            pytest.raises(QuayUnexpectedResponse) as caught:
        client.list_tokens()
    excerpt = str(caught.value).split("(text/html): ", 1)[1]
    assert len(excerpt) <= 83 and "\x1b" not in excerpt and excerpt.endswith("...")
    assert excerpt.count("internal-secret-") < 5
