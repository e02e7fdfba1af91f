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
"""

from __future__ import annotations

import functools
import logging
import os
import re
import ssl
import time
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

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
from function.model import Token

__all__ = ["QuayClient"]

logger = logging.getLogger(__name__)

TOKENS_PATH = "/api/v1/user/apptoken"
# Not a browser User-Agent: Quay refuses those on GET without X-Requested-With (077).
USER_AGENT = "quay-dockertoken/0.1"
# How much of a body a message may quote.
EXCERPT = 200
_PAGE_TOKEN = re.compile(r"window\.__token\s*=\s*'([^']+)'")
# Token codes are 120 characters of [A-Z0-9]; never let one through in a message.
_CODE_LIKE = re.compile(r"[A-Z0-9]{40,}")
_TOKEN_KEYS = ("uuid", "title", "last_accessed", "created", "expiration")
_E = TypeVar("_E", bound=ReconcileError)


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
            if self._signed_in:
                self._signed_in = False
                try:
                    self._send("POST", "/api/v1/signout")
                # Signing out is courtesy; a failure must not hide the call's own outcome.
                except QuayError as error:
                    logger.debug("quay sign-out failed: %s", error)
        finally:
            self._http.close()

    # -- the API ------------------------------------------------------------------------------

    def list_tokens(self, *, expiring: bool = False) -> list[Token]:
        """All tokens of the user, expired ones included (Quay lists them until revoked)."""
        params = {"expiring": "true"} if expiring else None
        body = self._call("GET", TOKENS_PATH, params=params)
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

    def whoami(self) -> str:
        """The username the credentials act for (needs user:read or user:admin)."""
        body = self._call("GET", "/api/v1/user/")
        username = body.get("username")
        if not isinstance(username, str) or not username:
            raise self._shape_error("GET", "/api/v1/user/", body, "username")
        return username

    # -- requests -----------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, json: Any = None,
              params: dict[str, str] | None = None, expect_body: bool = True) -> dict[str, Any]:
        """One API call with session upkeep; returns the JSON object of a 2xx answer."""
        session_is_new = False
        if self._uses_session and not self._signed_in:
            self._sign_in()
            session_is_new = True
        response = self._send(method, path, json=json, params=params)
        if self._uses_session and response.status_code == 401:
            error_type = _error_type(response)
            if error_type == "fresh_login_required":
                self._verify_password()
                response = self._send(method, path, json=json, params=params)
            elif error_type == "invalid_token" and not session_is_new:
                # A sign-out of the same user elsewhere ends every session: sign in again once.
                self._signed_in = False
                self._sign_in()
                response = self._send(method, path, json=json, params=params)
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
              headers: dict[str, str] | None = None) -> httpx.Response:
        """Send one request; the boundary where httpx exceptions become Quay errors."""
        headers = dict(headers or {})
        if self._uses_session and self._csrf and method not in ("GET", "HEAD"):
            headers.setdefault("X-CSRF-Token", self._csrf)
        self.calls += 1
        started = time.monotonic()
        try:
            response = self._http.request(method, path, json=json, params=params,
                                          headers=headers)
        except (httpx.HTTPError, httpx.InvalidURL, httpx.CookieConflict,
                httpx.StreamError) as exc:
            logger.debug("quay %s %s -> %s after %.0f ms", method, path, type(exc).__name__,
                         (time.monotonic() - started) * 1000)
            raise self._scrubbed(_transport_error(exc, method, path, self._conn)) from exc
        logger.debug("quay %s %s -> %d in %.0f ms", method, path, response.status_code,
                     (time.monotonic() - started) * 1000)
        return response

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
            error = QuayAuthError(f"{where}: Quay answered 401 ({text}): {self._who()} was not "
                                  f"accepted{_scope_hint(path)}")
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
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise self._scrubbed(QuayUnexpectedResponse(
                f"{method} {path}: Quay answered {response.status_code} without a JSON object "
                f"({response.headers.get('Content-Type', 'no Content-Type')}): "
                f"{_excerpt(response.text)}"
            ))
        return body

    def _shape_error(self, method: str, path: str, body: dict[str, Any],
                     key: str) -> QuayUnexpectedResponse:
        return self._scrubbed(QuayUnexpectedResponse(
            f"{method} {path}: the answer has no valid {key!r} "
            f"(keys: {_excerpt(', '.join(sorted(map(str, body))))})"
        ))

    def _message(self, response: httpx.Response) -> str:
        """Quay's own error text: error_message/detail, error or message, else an excerpt."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            for key in ("error_message", "detail", "error", "message"):
                value = body.get(key)
                if isinstance(value, str) and value:
                    return _excerpt(value)
        title = re.search(r"<title>(.*?)</title>", response.text, re.IGNORECASE | re.DOTALL)
        if title is not None:
            return f"an HTML page titled {_excerpt(title[1])!r}"
        return _excerpt(response.text) or "empty body"

    def _who(self) -> str:
        if self._uses_session:
            return f"the signed-in session of user {self._conn.username!r}"
        return "the OAuth token of the connection Secret (unknown, expired or revoked)"

    def _scrubbed(self, error: _E) -> _E:
        """Remove any credential the message might have picked up from an echoed body."""
        message = str(error)
        cookies = [cookie.value for cookie in self._http.cookies.jar if cookie.value]
        for secret in (self._conn.token, self._conn.password, self._csrf, *cookies):
            if secret:
                message = message.replace(secret, "***")
        message = _CODE_LIKE.sub("***", message)
        return error if message == str(error) else type(error)(message)


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


def _field(response: httpx.Response, key: str) -> object:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get(key) if isinstance(body, dict) else None


def _error_type(response: httpx.Response) -> str | None:
    value = _field(response, "error_type")
    return value if isinstance(value, str) else None


def _scope_hint(path: str) -> str:
    if path == "/api/v1/user/":
        return " (this endpoint also answers 401 to a token without user:read or user:admin)"
    return ""


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT else flat[:EXCERPT] + "..."


def _transport_error(exc: Exception, method: str, path: str,
                     conn: Connection) -> QuayError | ConfigError:
    """Map an httpx exception to the Quay error that says whether a retry can help."""
    where = f"{method} {path}"
    host = conn.registry
    if isinstance(exc, httpx.TimeoutException):
        return QuayTransient(f"{where}: no answer from {host} within {conn.timeout:g} s "
                             f'({type(exc).__name__}); if Quay is just slow, raise the "timeout" key '
                             "of the connection Secret")
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


@functools.lru_cache(maxsize=8)
def _ssl_context(verify: bool, cafile: str | None, capath: str | None) -> ssl.SSLContext:
    """One TLS context per setting, shared by all clients: loading the CA bundle is slow.

    ``cafile``/``capath`` are SSL_CERT_FILE/SSL_CERT_DIR, which httpx honours; they are part
    of the cache key so that changing them takes effect.
    """
    return httpx.create_ssl_context(verify=verify)
