"""The Quay application-token API client: every request the function makes to Quay.

``apply.py`` opens one :class:`QuayClient` per reconcile pass, on the first call it needs.
It authenticates with the connection's OAuth token, or signs in with username/password the way
Quay's web UI does (CSRF page token, session cookie, ``X-Next-CSRF-Token``). Every failure
leaves as a :mod:`function.errors` Quay error: transport errors are mapped in
:func:`_transport_error`, statuses in :meth:`QuayClient._raise_for_status`. Messages carry
Quay's own error text and the method and path, never a credential.

A 404 with Quay's JSON ``not_found`` body is :class:`QuayNotFound` (unknown token). Any other 404
(Quay's HTML page, a proxy's) means the endpoint itself is missing: application tokens are
disabled (FEATURE_APP_SPECIFIC_TOKENS) or ``host`` carries a wrong path; that is
:class:`QuayFeatureDisabled`, never "not found", so a cleanup cannot mistake it for "revoked".

Two registry calls prove a token works as a pull credential, one request each, neither
carrying the connection's OAuth token or session cookie: :meth:`QuayClient.registry_challenge`
reads the ``WWW-Authenticate`` challenge of ``GET /v2/`` (Quay announces its SERVER_HOSTNAME
there), and :meth:`QuayClient.check_credential` logs in at the announced realm with
``$app:<code>`` as ``docker login`` does. The realm is announced by the server, so the code is
sent only to a realm on the host of ``host`` or on the announced registry host, over https or
the scheme of ``host`` (never downgraded): see :func:`realm_refusal`.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpcore
import httpx

from function.connection import Connection
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
from function.logs import excerpt
from function.model import APP_USERNAME, CODE_LIKE, Token

__all__ = ["CredentialCheck", "QuayClient", "RegistryChallenge", "parse_challenges", "realm_refusal"]

logger = logging.getLogger(__name__)

TOKENS_PATH = "/api/v1/user/apptoken"
# Not a browser User-Agent: Quay refuses those on GET without X-Requested-With (077).
USER_AGENT = "quay-dockertoken/0.1"
# How much of a body a message may quote: of Quay's JSON error text (logs.EXCERPT), and of
# anything else.
FOREIGN_EXCERPT = 80
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
# A tenant chooses the host, and so how (and how slowly) it answers. Every request ends by a
# wall-clock deadline: the connection's timeout (10 s by default, capped at 60 s: connection.py)
# for connect, send and every read together, and all requests of one reconcile pass by
# PASS_BUDGET_SECONDS together, so one pass holds an event (and a worker thread) at most ~60 s
# whatever the host does. httpx's own timeout applies to each read alone: a host trickling a
# byte per second would never trip it.
PASS_BUDGET_SECONDS = 60.0
# Replies are read as a stream and given up past this size (decoded). The largest real reply is
# the token list (GET /api/v1/user/apptoken, never paginated): ~400 bytes per token with a
# 255-character title, so 4 MiB holds ~10,000 such tokens (~25,000 with short titles), far more
# than one user has, while ten threads reading that much stay within the pod's 256 Mi.
MAX_REPLY_BYTES = 4 * 1024 * 1024
_PAGE_TOKEN = re.compile(r"window\.__token\s*=\s*'([^']+)'")
_TOKEN_KEYS = ("uuid", "title", "last_accessed", "created", "expiration")
_E = TypeVar("_E", bound=ReconcileError)
# RFC 9110 ``WWW-Authenticate``: challenges ``scheme [token68 | #auth-param]``, comma-separated.
_AUTH_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_SEPARATORS = re.compile(r"[\s,]*")
_AUTH_SCHEME = re.compile(rf"({_AUTH_TOKEN})(?=[\s,]|$)")
_AUTH_PARAM = re.compile(rf'({_AUTH_TOKEN})[ \t]*=[ \t]*(?:"((?:[^"\\]|\\.)*)"|({_AUTH_TOKEN}))'
                         r"(?=[\s,]|$)")
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*[ \t]*(?=,|$)")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class RegistryChallenge:
    """The Bearer challenge of ``GET /v2/``: where to log in, and the registry's own name.

    ``service`` is Quay's SERVER_HOSTNAME (``host[:port]``), the name image references and
    ``.dockerconfigjson`` use; None when the registry announced none.
    """

    realm: str
    service: str | None


@dataclass(frozen=True)
class CredentialCheck:
    """Whether the registry accepted a token code; ``detail`` is the registry's answer, scrubbed."""

    ok: bool
    detail: str


class QuayClient:
    """Application-token calls for the connection's user; not thread-safe.

    With username/password it signs in on the first call, re-verifies the password once on
    ``fresh_login_required``, signs in again once if the session was ended by a sign-out
    elsewhere (Quay ends every session of a user on sign-out), and signs out on exit.
    """

    def __init__(self, conn: Connection, *, transport: httpx.BaseTransport | None = None) -> None:
        self.calls = 0
        self._conn = conn
        self._uses_session = not conn.token
        self._csrf: str | None = None
        self._signed_in = False
        headers = {"User-Agent": USER_AGENT}
        if conn.token:
            headers["Authorization"] = f"Bearer {conn.token}"
        cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
        try:
            context = _ssl_context(conn.validate_certs, cafile, capath)
        # A broken SSL_CERT_FILE/SSL_CERT_DIR cannot heal by retrying.
        except OSError as exc:
            raise QuayTLSError(f"cannot load the CA certificates of SSL_CERT_FILE={cafile!r} "
                               f"SSL_CERT_DIR={capath!r}: {exc}") from exc
        # every request of this client (one reconcile pass) ends by its deadline: see _Deadline
        self._deadline = _Deadline(time.monotonic() + PASS_BUDGET_SECONDS)
        if transport is None:
            transport = httpx.HTTPTransport(verify=context)
            pool: Any = transport._pool  # httpcore.ConnectionPool: reads and writes go through it
            pool._network_backend = _DeadlineBackend(pool._network_backend, self._deadline)
        try:
            self._http = httpx.Client(
                base_url=conn.base_url, headers=headers, timeout=httpx.Timeout(conn.timeout),
                verify=context, transport=transport, follow_redirects=False,
            )
        # parse_connection validates host; this guards hand-built Connections.
        except httpx.InvalidURL as exc:
            raise ConfigError(f"host {conn.base_url!r} is not a usable URL ({exc})") from exc

    def __enter__(self) -> QuayClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if self._signed_in and self._deadline.budget_left() > 0:
                self._signed_in = False
                try:
                    self._send("POST", "/api/v1/signout")
                # Signing out is courtesy; a failure must not hide the call's own outcome.
                except QuayError as error:
                    logger.debug("quay sign-out failed: %s", error)
        finally:
            self._http.close()

    # -- the API ------------------------------------------------------------------------------

    def list_tokens(self) -> list[Token]:
        """All tokens of the user, expired ones included (Quay lists them until revoked)."""
        body = self._call("GET", TOKENS_PATH)
        tokens = body.get("tokens")
        if not isinstance(tokens, list):
            raise self._shape_error("GET", TOKENS_PATH, body, "tokens")
        return [_parse_token(item, with_code=False, where=f"GET {TOKENS_PATH}")
                for item in tokens]

    def create_token(self, title: str) -> Token:
        """Create a token (the only call that creates); Quay allows duplicate titles."""
        body = self._call("POST", TOKENS_PATH, json={"title": title})
        return _parse_token(body.get("token"), with_code=True, where=f"POST {TOKENS_PATH}")

    def get_token(self, uuid: str) -> Token:
        """One unexpired token with its code; QuayNotFound if unknown, expired or not ours."""
        path = _token_path(uuid)
        body = self._call("GET", path)
        return _parse_token(body.get("token"), with_code=True, where=f"GET {path}")

    def revoke_token(self, uuid: str) -> None:
        """Revoke a token (expired ones too); QuayNotFound if unknown or already revoked."""
        self._call("DELETE", _token_path(uuid), expect_body=False)

    # -- the registry -------------------------------------------------------------------------

    def registry_challenge(self) -> RegistryChallenge | None:
        """``GET /v2/`` at the root of the host, without credentials (one request, 091).

        Returns the Bearer challenge's realm and service; None when the answer carries no
        Bearer challenge (a registry open to anonymous pulls, no registry at that address, or
        a Basic-only challenge). A Bearer challenge without a usable realm is
        QuayUnexpectedResponse; 429/5xx and transport failures are QuayTransient.
        """
        url = f"{self._root}/v2/"
        where = "GET /v2/"
        response = self._send("GET", url, anonymous=True, where=where)
        if response.status_code == 429 or response.status_code >= 500:
            self._raise_for_status(response, "GET", "/v2/")
        values = response.headers.get_list("WWW-Authenticate")
        bearer = next((params for scheme, params in parse_challenges(", ".join(values))
                       if scheme == "bearer"), None)
        if bearer is None:
            logger.debug("quay %s: no Bearer challenge (HTTP %d)", where, response.status_code)
            return None
        realm = bearer.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
            raise self._scrubbed(QuayUnexpectedResponse(
                f"{where}: the registry's Bearer challenge has no http(s) realm "
                f"(WWW-Authenticate: {excerpt(', '.join(values))})"
            ))
        return RegistryChallenge(realm=realm, service=bearer.get("service") or None)

    def check_credential(self, realm: str, service: str | None, code: str) -> CredentialCheck:
        """Log in at ``realm`` with Basic ``$app:<code>`` as ``docker login`` does (one request).

        ok is True when the registry answers 200 with a token (093), False when it refuses
        (401 ``Invalid token`` for a wrong, revoked or expired code: 097, 103, 136) or answers
        anything else a retry would not change; ``detail`` quotes its answer, never the code.
        A realm that :func:`realm_refusal` refuses is QuayUnexpectedResponse, and nothing is
        sent; 429/5xx and transport failures are QuayTransient (nothing was learnt).
        """
        if not code:
            raise ValueError("a token code is required")
        refusal = realm_refusal(realm, self._conn.base_url, service)
        if refusal is not None:
            raise self._scrubbed(QuayUnexpectedResponse(
                f"the registry announced the realm {excerpt(realm)!r}, which is not sent the "
                f"token: {refusal}"
            ), code)
        parts = urlsplit(realm)
        where = f"GET {parts.scheme}://{parts.netloc}{parts.path or '/'}"
        params = {"account": APP_USERNAME}
        if service:
            params["service"] = service
        basic = base64.b64encode(f"{APP_USERNAME}:{code}".encode()).decode()
        try:
            response = self._send("GET", realm, params=params, anonymous=True, where=where,
                                  headers={"Authorization": f"Basic {basic}"})
        except QuayError as error:
            raise self._scrubbed(error, code, basic) from error.__cause__
        status = response.status_code
        if status == 429 or status >= 500:
            try:
                self._raise_for_status(response, "GET", where.removeprefix("GET "))
            except QuayError as error:
                raise self._scrubbed(error, code, basic) from None
        answer = self._scrub_text(_registry_message(
            response, lambda text: self._scrub_text(text, code, basic)), code, basic)
        if status == 200 and _has_registry_token(response):
            return CredentialCheck(True, f"{where}: the registry accepted the token (200)")
        if status == 200:
            return CredentialCheck(False, f"{where}: the registry answered 200 without a token "
                                          f"({answer})")
        refused = "refused the token" if status in (401, 403) else "did not accept the token"
        return CredentialCheck(False, f"{where}: the registry {refused} ({status} {answer})")

    @property
    def _root(self) -> str:
        """``scheme://host[:port]`` of ``host``: the registry API lives at the root (/v2/)."""
        parts = urlsplit(self._conn.base_url)
        return f"{parts.scheme}://{parts.netloc}"

    # -- requests -----------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, json: Any = None,
              expect_body: bool = True) -> dict[str, Any]:
        """One API call with session upkeep; returns the JSON object of a 2xx answer."""
        session_is_new = False
        if self._uses_session and not self._signed_in:
            self._sign_in()
            session_is_new = True
        response = self._send(method, path, json=json)
        if self._uses_session and response.status_code == 401:
            error_type = _error_type(response)
            if error_type == "fresh_login_required":
                self._verify_password()
                response = self._send(method, path, json=json)
            elif error_type == "invalid_token" and not session_is_new:
                # A sign-out of the same user elsewhere ends every session: sign in again once.
                self._signed_in = False
                self._sign_in()
                response = self._send(method, path, json=json)
            if response.status_code == 401 and _error_type(response) == "invalid_token":
                # The password was just accepted, so the session itself was lost: a race.
                raise QuayTransient(
                    f"{method} {path}: Quay forgot the session right after sign-in: another "
                    "client signed the same user out, or a proxy drops the session cookie"
                )
        self._raise_for_status(response, method, path)
        if not expect_body:
            return {}
        return self._json_object(response, method, path)

    def _send(self, method: str, path: str, *, json: Any = None,
              params: dict[str, str] | None = None,
              headers: dict[str, str] | None = None, anonymous: bool = False,
              where: str | None = None) -> httpx.Response:
        """Send one request; the boundary where httpx exceptions become Quay errors.

        ``anonymous`` (the registry calls): neither the OAuth token nor the session cookie is
        sent, only the ``headers`` given; ``where`` then names the request in logs and errors.
        """
        headers = dict(headers or {})
        if self._uses_session and self._csrf and method not in ("GET", "HEAD") \
                and not anonymous:
            headers.setdefault("X-CSRF-Token", self._csrf)
        label = (where or f"{method} {path}").removeprefix(f"{method} ")
        self.calls += 1
        started = time.monotonic()
        try:
            request = self._http.build_request(method, path, json=json, params=params,
                                               headers=headers)
            if anonymous:
                request.headers.pop("Cookie", None)
                if "Authorization" not in headers:
                    request.headers.pop("Authorization", None)
            self._deadline.start(self._conn.timeout)
            response = self._http.send(request, stream=True)
            try:
                self._read_capped(response, method, label)
            finally:
                response.close()
        except (httpx.HTTPError, httpx.InvalidURL, httpx.CookieConflict,
                httpx.StreamError, _OutOfTime) as exc:
            logger.debug("quay %s %s -> %s after %.0f ms", method, label, type(exc).__name__,
                         (time.monotonic() - started) * 1000)
            host = urlsplit(path).netloc if "://" in path else None
            raise self._scrubbed(_transport_error(exc, method, label, self._conn,
                                                  host=host)) from exc
        logger.debug("quay %s %s -> %d in %.0f ms", method, label, response.status_code,
                     (time.monotonic() - started) * 1000)
        return response

    def _read_capped(self, response: httpx.Response, method: str, label: str) -> None:
        """Read the reply as a stream, at most MAX_REPLY_BYTES (decoded), within the deadline."""
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                raise self._scrubbed(QuayUnexpectedResponse(
                    f"{method} {label}: the answer is larger than {MAX_REPLY_BYTES} bytes, more than "
                    "any Quay token list; is host a Quay server?"))
            chunks.append(chunk)
            self._deadline.check()
        # what response.read() would have stored: .text and .json() work as usual
        response._content = b"".join(chunks)

    # -- web sign-in (username/password) ------------------------------------------------------

    def _sign_in(self) -> None:
        """GET / for the CSRF token and cookie, then POST /api/v1/signin (060, 066)."""
        page = self._send("GET", "/")
        self._raise_for_status(page, "GET", "/")
        match = _PAGE_TOKEN.search(page.text)
        if match is None:
            raise QuayUnexpectedResponse(
                "GET /: the page has no window.__token (CSRF token); is host the Quay web root?"
            )
        where = "POST /api/v1/signin"
        response = self._send("POST", "/api/v1/signin", headers={"X-CSRF-Token": match[1]},
                              json={"username": self._conn.username,
                                    "password": self._conn.password})
        if response.status_code == 403 and _field(response, "invalidCredentials") is True:
            raise QuayAuthError(
                f"{where}: Quay rejected the username/password of the connection Secret "
                f"({self._message(response)})"
            )
        if response.status_code == 404:
            raise QuayFeatureDisabled(
                f"{where}: Quay offers no username/password sign-in (FEATURE_DIRECT_LOGIN off or "
                "external authentication); use an OAuth token with the user:admin scope"
            )
        self._raise_for_status(response, "POST", "/api/v1/signin")
        self._csrf = response.headers.get("X-Next-CSRF-Token") or self._fetch_csrf()
        self._signed_in = True

    def _fetch_csrf(self) -> str:
        """The session's CSRF token when sign-in did not send X-Next-CSRF-Token (079)."""
        response = self._send("GET", "/csrf_token")
        self._raise_for_status(response, "GET", "/csrf_token")
        token = self._json_object(response, "GET", "/csrf_token").get("csrf_token")
        if not isinstance(token, str) or not token:
            raise QuayUnexpectedResponse("GET /csrf_token: the answer has no csrf_token")
        return token

    def _verify_password(self) -> None:
        """Renew a stale login (FRESH_LOGIN_TIMEOUT) with POST /api/v1/signin/verify (129)."""
        where = "POST /api/v1/signin/verify"
        response = self._send("POST", "/api/v1/signin/verify",
                              json={"password": self._conn.password})
        if response.status_code == 403 and _field(response, "invalidCredentials") is True:
            raise QuayAuthError(f"{where}: Quay rejected the password of the connection Secret "
                                f"({self._message(response)})")
        self._raise_for_status(response, "POST", "/api/v1/signin/verify")
        self._csrf = response.headers.get("X-Next-CSRF-Token") or self._csrf

    # -- answers ------------------------------------------------------------------------------

    def _raise_for_status(self, response: httpx.Response, method: str, path: str) -> None:
        """Map a non-2xx answer to the Quay error that says what to do about it."""
        status = response.status_code
        if 200 <= status < 300:
            return
        where = f"{method} {path}"
        text = self._message(response)
        error_type = _error_type(response)
        error: QuayError
        if status in (400, 415):
            error = QuayInvalidRequest(f"{where}: Quay answered {status}: {text}")
        elif status == 401:
            error = QuayAuthError(f"{where}: Quay answered 401 ({text}): {self._who()} was not accepted")
        elif status == 403 and error_type == "insufficient_scope":
            error = QuayAuthError(f"{where}: Quay answered 403 ({text}): the OAuth token lacks "
                                  "a scope; the token needs the user:admin scope")
        elif status == 403 and "CSRF" in text and not self._uses_session:
            error = QuayAuthError(
                f"{where}: Quay answered 403 ({text}): the OAuth token was not accepted "
                "(unknown, expired or revoked), so Quay fell back to cookie auth and its CSRF check"
            )
        elif status == 403:
            error = QuayAuthError(f"{where}: Quay answered 403 ({text}): {self._who()} was "
                                  "refused")
        elif status == 404 and error_type == "not_found":
            error = QuayNotFound(f"{where}: Quay answered 404 ({text})")
        elif status == 404:
            error = QuayFeatureDisabled(
                f"{where}: Quay has no such endpoint (404, {text}); application tokens may be "
                "disabled (FEATURE_APP_SPECIFIC_TOKENS) or host may include a wrong path"
            )
        elif status == 429:
            retry = response.headers.get("Retry-After")
            after = f", Retry-After {retry} s" if retry else ""
            error = QuayTransient(f"{where}: Quay answered 429 (too many requests{after}): {text}")
        elif status >= 500:
            error = QuayTransient(f"{where}: Quay answered {status}: {text}")
        else:
            error = QuayUnexpectedResponse(f"{where}: Quay answered HTTP {status}: {text}")
        raise self._scrubbed(error)

    def _json_object(self, response: httpx.Response, method: str, path: str) -> dict[str, Any]:
        body = _json(response)
        if not isinstance(body, dict):
            raise self._scrubbed(QuayUnexpectedResponse(
                f"{method} {path}: Quay answered {response.status_code} without a JSON object "
                f"({response.headers.get('Content-Type', 'no Content-Type')}): "
                f"{_foreign(self._scrub_text(response.text))}"
            ))
        return body

    def _shape_error(self, method: str, path: str, body: dict[str, Any],
                     key: str) -> QuayUnexpectedResponse:
        return self._scrubbed(QuayUnexpectedResponse(
            f"{method} {path}: the answer has no valid {key!r} "
            f"(keys: {excerpt(', '.join(sorted(map(str, body))))})"
        ))

    def _message(self, response: httpx.Response) -> str:
        """Quay's own error text: error_message/detail, error or message, else an excerpt."""
        body = _json(response)
        if isinstance(body, dict):
            for key in ("error_message", "detail", "error", "message"):
                value = body.get(key)
                if isinstance(value, str) and value:
                    return excerpt(value)
        title = re.search(r"<title>(.*?)</title>", response.text, re.IGNORECASE | re.DOTALL)
        if title is not None:
            return f"an HTML page titled {_foreign(self._scrub_text(title[1]))!r}"
        return _foreign(self._scrub_text(response.text)) or "empty body"

    def _who(self) -> str:
        if self._uses_session:
            return f"the signed-in session of user {self._conn.username!r}"
        return "the OAuth token of the connection Secret (unknown, expired or revoked)"

    def _scrubbed(self, error: _E, *extra: str) -> _E:
        """Remove any credential the message might have picked up from an echoed body."""
        message = self._scrub_text(str(error), *extra)
        return error if message == str(error) else type(error)(message)

    def _scrub_text(self, text: str, *extra: str) -> str:
        """``text`` without the connection's credentials, cookies, ``extra`` or code-like runs."""
        cookies = [cookie.value for cookie in self._http.cookies.jar if cookie.value]
        for secret in (self._conn.token, self._conn.password, self._csrf, *cookies, *extra):
            if secret:
                text = text.replace(secret, "***")
        return CODE_LIKE.sub("***", text)


class _OutOfTime(httpx.TimeoutException):
    """The request's deadline (or the pass's budget) passed while its reply was being read."""


class _Deadline:
    """When the current request must be over; shared by a QuayClient and its network streams."""

    def __init__(self, budget_ends: float) -> None:
        self.budget_ends, self.when = budget_ends, budget_ends

    def start(self, timeout: float) -> None:
        """A new request: ``timeout`` seconds from now, never past the pass's budget."""
        if self.budget_left() <= 0:
            raise _OutOfTime(f"the {PASS_BUDGET_SECONDS:g} s budget of this pass's Quay requests is spent")
        self.when = min(time.monotonic() + timeout, self.budget_ends)

    def budget_left(self) -> float:
        return self.budget_ends - time.monotonic()

    def check(self) -> None:
        if time.monotonic() >= self.when:
            raise _OutOfTime("the request's deadline passed while the reply was being read")

    def bound(self, timeout: float | None, error: type[Exception]) -> float:
        """``timeout`` for one socket operation, shortened to what is left; ``error`` when none."""
        left = self.when - time.monotonic()
        if left <= 0:
            raise error("the request's deadline passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read, write and TLS handshake ends by the request's deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._stream, self._deadline = stream, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._deadline.bound(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._deadline.bound(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        stream = self._stream.start_tls(ssl_context, server_hostname,
                                        self._deadline.bound(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(stream, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, with every connection's operations bounded by the deadline."""

    def __init__(self, backend: httpcore.NetworkBackend, deadline: _Deadline) -> None:
        self._backend, self._deadline = backend, deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(host, port,
                                           self._deadline.bound(timeout, httpcore.ConnectTimeout),
                                           local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        stream = self._backend.connect_unix_socket(
            path, self._deadline.bound(timeout, httpcore.ConnectTimeout), socket_options)
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def parse_challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """The challenges of a ``WWW-Authenticate`` value: (scheme lower-cased, params).

    Follows RFC 9110 section 11.6.1: several challenges may share one value, separated by
    commas; parameter names are case-insensitive (lower-cased here, the first of a repeated
    name wins), values are tokens or quoted strings (backslash escapes removed); a token68
    (``Basic abc==``) is skipped. Parsing stops at the first thing that fits no rule, keeping
    what came before.
    """
    challenges: list[tuple[str, dict[str, str]]] = []
    pos, end = 0, len(header)
    while True:
        pos = _SEPARATORS.match(header, pos).end()  # type: ignore[union-attr]
        if pos >= end:
            return challenges
        param = _AUTH_PARAM.match(header, pos) if challenges else None
        if param is not None:
            name = param[1].lower()
            value = re.sub(r"\\(.)", r"\1", param[2]) if param[2] is not None else param[3]
            challenges[-1][1].setdefault(name, value)
            pos = param.end()
            continue
        scheme = _AUTH_SCHEME.match(header, pos)
        if scheme is None:
            return challenges
        challenges.append((scheme[1].lower(), {}))
        pos = scheme.end()
        after = pos + len(header[pos:]) - len(header[pos:].lstrip(" \t"))
        token68 = _TOKEN68.match(header, after)
        if token68 is not None and after > pos and _AUTH_PARAM.match(header, after) is None:
            pos = token68.end()


def realm_refusal(realm: str, base_url: str, service: str | None) -> str | None:
    """Why the token code must not be sent to ``realm``; None when it may.

    The realm comes from the server's answer, so it is followed only to where the code is
    already meant to go: the host (and port) of ``host`` in the connection Secret, or the
    registry host the same answer announced as ``service`` (Quay's SERVER_HOSTNAME, from
    which Quay builds its realm). The scheme must be https, or the scheme of ``host`` (an
    https Quay never has the code sent in clear). No user info, no fragment.
    """
    try:
        parts, base = urlsplit(realm), urlsplit(base_url)
        port = parts.port
    except ValueError:
        return "it is not a valid URL"
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return "it is not an absolute http(s) URL"
    if "@" in parts.netloc or parts.fragment:
        return "it carries user info or a fragment"
    if scheme != "https" and scheme != base.scheme.lower():
        return f"its scheme {scheme} would downgrade the {base.scheme} of host"
    here = (parts.hostname.lower(), port or _DEFAULT_PORTS[scheme])
    allowed = [_host_port(base.netloc, base.scheme.lower())]
    if service:
        allowed.append(_host_port(service, scheme))
    if here not in allowed:
        names = list(dict.fromkeys(f"{h}:{p}" for h, p in allowed if h))
        which = " nor ".join(names) if len(names) > 1 else f"{names[0] if names else '?'}"
        return (f"its host {here[0]}:{here[1]} is {'neither' if len(names) > 1 else 'not'} "
                f"{which} (the host of host, or the registry host the challenge announced)")
    return None


def _host_port(netloc: str, scheme: str) -> tuple[str, int]:
    """(host lower-cased, port with the scheme's default) of ``host[:port]``; ("", 0) if bad."""
    try:
        parts = urlsplit(f"//{netloc}")
        return (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        return "", 0


def _registry_message(response: httpx.Response, scrub: Callable[[str], str]) -> str:
    """The registry's error text: ``errors[0]`` code and message (097), else an excerpt."""
    body = _json(response)
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            text = ": ".join(str(first[k]) for k in ("code", "message") if first.get(k))
            if text:
                return excerpt(text)
        for key in ("error", "message", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return excerpt(value)
    return _foreign(scrub(response.text)) or "empty body"


def _has_registry_token(response: httpx.Response) -> bool:
    body = _json(response)
    return isinstance(body, dict) and isinstance(body.get("token"), str) and bool(body["token"])


def _token_path(uuid: str) -> str:
    if not uuid:
        raise ValueError("a token uuid is required")
    return f"{TOKENS_PATH}/{quote(uuid, safe='')}"


def _parse_token(item: object, *, with_code: bool, where: str) -> Token:
    """Validate one token object; QuayUnexpectedResponse names the key, never a value."""
    if not isinstance(item, dict):
        raise QuayUnexpectedResponse(f"{where}: a token entry is not a JSON object")
    keys = (*_TOKEN_KEYS, "token_code") if with_code else _TOKEN_KEYS
    for key in keys:
        value = item.get(key, ...)
        nullable = key not in ("uuid", "title", "token_code")
        if not (isinstance(value, str) or (nullable and value is None)):
            raise QuayUnexpectedResponse(f"{where}: token key {key!r} is missing or not a "
                                         f"{'string or null' if nullable else 'string'}")
    if not item["uuid"]:
        raise QuayUnexpectedResponse(f"{where}: a token has an empty uuid")
    return Token(uuid=item["uuid"], title=item["title"], created=item["created"] or "",
                 expiration=item["expiration"] or "", last_accessed=item["last_accessed"] or "",
                 code=item["token_code"] if with_code else "")


def _json(response: httpx.Response) -> object:
    """The body as JSON; None when it is not JSON."""
    try:
        return response.json()
    # not JSON (an HTML error page, a proxy's text): the callers fall back to the text
    except ValueError:
        return None


def _field(response: httpx.Response, key: str) -> object:
    body = _json(response)
    return body.get(key) if isinstance(body, dict) else None


def _error_type(response: httpx.Response) -> str | None:
    value = _field(response, "error_type")
    return value if isinstance(value, str) else None


def _foreign(text: str) -> str:
    """A body that is not Quay's JSON: the host may be anything a tenant points at (an internal
    service, a metadata endpoint), and status is read by others, so quote a short excerpt of
    printable ASCII only (FOREIGN_EXCERPT characters), enough to recognise the page. Callers
    scrub credentials first (a cut inside one would leave a piece no exact match finds)."""
    flat = " ".join(_UNPRINTABLE.sub("?", text).split())
    return flat if len(flat) <= FOREIGN_EXCERPT else flat[:FOREIGN_EXCERPT] + "..."


def _transport_error(exc: Exception, method: str, path: str, conn: Connection, *,
                     host: str | None = None) -> QuayError | ConfigError:
    """Map an httpx exception to the Quay error that says whether a retry can help.

    ``host``: the host the request went to when it is not the one of ``host`` (a realm).
    """
    where = f"{method} {path}"
    host = host or conn.registry
    if isinstance(exc, httpx.TimeoutException):
        return QuayTransient(f"{where}: no complete answer from {host} within {conn.timeout:g} s "
                             f"({type(exc).__name__}: {exc}); if Quay is just slow, raise the "
                             '"timeout" key of the connection Secret (at most 60 s is used)')
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
        return ConfigError(f"{where}: host {conn.base_url!r} is not a usable URL ({exc})")
    if isinstance(exc, httpx.ConnectError):
        tls = _cause(exc, ssl.SSLError)
        if isinstance(tls, ssl.SSLCertVerificationError):
            reason = tls.verify_message or str(tls)
            return QuayTLSError(
                f"{where}: the certificate of {host} did not verify ({reason}); set "
                "validateCerts to false in the connection Secret, or trust the CA that signed it"
            )
        if tls is not None and not isinstance(tls, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return QuayTLSError(f"{where}: the TLS handshake with {host} failed ({tls}); "
                                "check the scheme and port of host")
        return QuayTransient(f"{where}: cannot connect to {host} ({exc or type(exc).__name__}); "
                             'check the "host" key of the connection Secret and that Quay is up')
    if isinstance(exc, httpx.TransportError):
        return QuayTransient(f"{where}: the connection to {host} failed "
                             f"({type(exc).__name__}: {exc})")
    return QuayUnexpectedResponse(f"{where}: {type(exc).__name__}: {exc}")


def _cause(exc: BaseException, kind: type[ssl.SSLError]) -> ssl.SSLError | None:
    """The first ``kind`` in the __cause__/__context__ chain of ``exc``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


_ssl_lock = threading.Lock()


def _ssl_context(verify: bool, cafile: str | None, capath: str | None) -> ssl.SSLContext:
    """One TLS context per setting, shared by all clients: loading the CA bundle is slow (~20 ms
    of CPU), so it is loaded once even when the first clients are made at the same time (a
    resync plan lists ten connections at once: ten loads would cost its planning 0.2 s).

    ``cafile``/``capath`` are SSL_CERT_FILE/SSL_CERT_DIR, which httpx honours; they are part
    of the cache key so that changing them takes effect.
    """
    with _ssl_lock:
        return _load_ssl_context(verify, cafile, capath)


@functools.lru_cache(maxsize=8)
def _load_ssl_context(verify: bool, cafile: str | None, capath: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context(verify=verify)
