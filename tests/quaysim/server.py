"""The Quay simulator: a real HTTP(S) server on loopback, stdlib only, with test hooks.

Tests and benchmarks start a :class:`QuaySimulator` and point the client at ``sim.base_url``.
HTTP details follow gunicorn (HTTP/1.1 keep-alive, Content-Length, ``Server: gunicorn``);
``api.py`` holds Quay's behaviour and ``state.py`` its data.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import ssl
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.quaysim import tls, views
from tests.quaysim.api import Api, Request
from tests.quaysim.faults import Faults
from tests.quaysim.state import OAuthToken, State, User

logger = logging.getLogger(__name__)

USERNAME = "devtable"
PASSWORD = "password"
READER_USERNAME = "reader"
# The six OAuth tokens of the contract README, inserted by the recording's setup.
ADMIN_TOKEN = "useradmin00000000000secret00000000000001"
REPOREAD_TOKEN = "reporead000000000000secret00000000000002"
READONLY_TOKEN = "userread000000000000secret00000000000003"
EXPIRED_TOKEN = "expiredadmin00000000secret00000000000004"
ALLSCOPES_TOKEN = "allscopes00000000000secret00000000000005"
READER_ADMIN_TOKEN = "readeradmin000000000secret00000000000006"
ALL_SCOPES = "repo:read repo:write repo:admin repo:create user:read user:admin org:admin"
_TEN_YEARS = 10 * 365 * 24 * 3600
# Idle keep-alive connections are closed after this; gunicorn's default is 2 s, but a long
# value keeps client pools warm across slow test steps.
_IDLE_TIMEOUT = 60.0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = _IDLE_TIMEOUT
    # TCP_NODELAY: without it, Nagle plus the client's delayed ACK add 40 ms to small answers.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("quaysim: " + format, *args)

    def do_GET(self) -> None:
        try:
            self.server.sim._serve(self)
        except OSError:
            # The client went away mid-request: nothing to answer.
            self.close_connection = True

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def read_request(self) -> Request:
        parts = urlsplit(self.path)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = self._read_chunked()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}; {value}" if key == "cookie" and key in headers \
                else value
        return Request(self.command, parts.path, parse_qs(parts.query, keep_blank_values=True),
                       headers, body)

    def _read_chunked(self) -> bytes:
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        return b"".join(chunks)

    def write(self, reply: views.Reply) -> None:
        """Head and body in one write, as gunicorn does (no Nagle/delayed-ACK stall)."""
        self.log_request(reply.status)
        head = [f"{self.protocol_version} {reply.status} {self.responses[reply.status][0]}",
                "Server: gunicorn", f"Date: {self.date_time_string()}", "Connection: keep-alive"]
        if reply.content_type is not None:
            head.append(f"Content-Type: {reply.content_type}")
        if reply.status != 204:
            head.append(f"Content-Length: {len(reply.body)}")
        head.extend(f"{name}: {value}" for name, value in reply.headers)
        body = b"" if self.command == "HEAD" or reply.status == 204 else reply.body
        self.wfile.write("\r\n".join([*head, "", ""]).encode("latin-1") + body)

    def drop(self) -> None:
        """Reset the connection without answering (SO_LINGER 0 sends RST on close)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], sim: QuaySimulator,
                 context: ssl.SSLContext | None) -> None:
        self.sim = sim
        self.context = context
        self.open_connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        conn = request
        if self.context is not None:
            # The TLS handshake runs here, in the connection's thread, not in accept().
            try:
                request.settimeout(10)
                conn = self.context.wrap_socket(request, server_side=True)
            except (OSError, ValueError):
                return
        with self.conn_lock:
            self.open_connections.add(conn)
        try:
            _Handler(conn, client_address, self)
        finally:
            with self.conn_lock:
                self.open_connections.discard(conn)
            if conn is not request:
                conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if error is not None and not isinstance(error, (OSError, ValueError)):
            self.sim.server_errors.append(error)

    def close_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.open_connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class QuaySimulator:
    """A Quay stand-in over real HTTP on loopback; see tests/quaysim/__init__.py for the hooks."""

    def __init__(self, tls: bool = False, token_expiration: float | None = None,
                 fresh_login_timeout: float = 600, seed_quay_testdata: bool = False,
                 oauth_request_cost: float = 0.0, session_request_cost: float = 0.0, *,
                 app_specific_tokens: bool = True, port: int = 0,
                 server_hostname: str | None = None) -> None:
        self.tls = tls
        self._server_hostname = server_hostname
        self.oauth_request_cost = oauth_request_cost
        self.session_request_cost = session_request_cost
        self.app_specific_tokens = app_specific_tokens
        self.state = State(token_expiration=token_expiration,
                           fresh_login_timeout=fresh_login_timeout)
        self.faults = Faults()
        self.server_errors: list[BaseException] = []
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._api: Api | None = None
        self._seed(seed_quay_testdata)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> QuaySimulator:
        context = None
        if self.tls:
            files = tls.cert_files()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(files.cert, files.key)
        self._server = _Server(("127.0.0.1", self._port), self, context)
        self._api = Api(self.state, base_url=self.base_url, host=self.host,
                        server_hostname=self.server_hostname,
                        app_specific_tokens=self.app_specific_tokens)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"quaysim-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.faults.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> QuaySimulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("QuaySimulator is not started")
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        """``host:port`` as a client puts it in the connection Secret (without scheme)."""
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def server_hostname(self) -> str:
        """Quay's ``SERVER_HOSTNAME``: the registry name ``/v2/`` announces (default: ``host``).

        Quay builds the challenge's realm from it too (``PREFERRED_URL_SCHEME://SERVER_HOSTNAME``
        + ``/v2/auth``), so a different value must still reach this server for the realm to
        work, e.g. ``localhost:<port>`` while the API is used as ``127.0.0.1:<port>``.
        """
        return self._server_hostname or self.host

    @server_hostname.setter
    def server_hostname(self, name: str | None) -> None:
        """Change SERVER_HOSTNAME at runtime (None: back to ``host``), e.g. to a name that only
        exists once the port is known."""
        self._server_hostname = name
        if self._api is not None:
            self._api.set_server_hostname(self.server_hostname)

    @property
    def registry_url(self) -> str:
        """``PREFERRED_URL_SCHEME://SERVER_HOSTNAME``: where the challenge's realm points."""
        return f"{'https' if self.tls else 'http'}://{self.server_hostname}"

    @property
    def token_expiration(self) -> float | None:
        """APP_SPECIFIC_TOKEN_EXPIRATION in seconds (None: tokens never expire)."""
        with self.state.lock:
            return self.state.token_expiration

    @token_expiration.setter
    def token_expiration(self, seconds: float | None) -> None:
        """Change APP_SPECIFIC_TOKEN_EXPIRATION at runtime, as a Quay restart with a new config
        would: tokens created from now on get it; existing tokens keep their expiration."""
        if seconds is not None and not seconds > 0:
            raise ValueError(f"token_expiration must be a positive number of seconds or None, "
                             f"not {seconds!r}")
        with self.state.lock:
            self.state.token_expiration = seconds

    @property
    def ca_path(self) -> str | None:
        """PEM of the CA that signed the HTTPS certificate (None without ``tls``)."""
        return str(tls.cert_files().ca) if self.tls else None

    @property
    def cert_path(self) -> str | None:
        """PEM of the server certificate chain (None without ``tls``)."""
        return str(tls.cert_files().cert) if self.tls else None

    # -- data helpers -------------------------------------------------------------------------

    def add_user(self, username: str, password: str = PASSWORD, *, email: str | None = None,
                 superuser: bool = False) -> None:
        self.state.add_user(User(username, password, email or f"{username}@example.com",
                                 superuser=superuser))

    def add_oauth_token(self, username: str, scopes: str = "user:admin", *,
                        token: str | None = None, expired: bool = False) -> str:
        """Create an OAuth access token for ``username`` with space-separated ``scopes``."""
        value = token or f"simtoken{secrets.token_hex(16)}"
        lifetime = -3600 if expired else _TEN_YEARS
        return self.state.add_oauth(OAuthToken(value, username, frozenset(scopes.split()),
                                               self.state.now() + lifetime))

    def tokens(self, username: str = USERNAME) -> list[dict[str, Any]]:
        """The user's app tokens (expired ones too), as the get-one view with ``token_code``."""
        with self.state.lock:
            return [views.token_view(t, include_code=True)
                    for t in self.state.app_tokens.values() if t.owner == username]

    def touch(self, token_uuid: str) -> None:
        """Mark a token used, as a registry login with it would (sets ``last_accessed``)."""
        self.state.touch(token_uuid)

    def advance(self, seconds: float) -> None:
        """Move the simulator's clock forward (token expiry, fresh login, login backoff)."""
        with self.state.lock:
            self.state.clock_offset += seconds

    # -- counters and faults ------------------------------------------------------------------

    @property
    def calls(self) -> dict[str, int]:
        """Requests per endpoint name: list, create, get, revoke, whoami, signin, ..."""
        with self.state.lock:
            return dict(self.state.calls)

    @property
    def calls_by_auth(self) -> dict[tuple[str, str], int]:
        """Requests per (method, auth kind): oauth, session, registry or anonymous."""
        with self.state.lock:
            return dict(self.state.calls_by_auth)

    @property
    def total_calls(self) -> int:
        with self.state.lock:
            return sum(self.state.calls.values())

    @property
    def simulated_cpu_seconds(self) -> float:
        with self.state.lock:
            return self.state.simulated_cpu_seconds

    def reset_counters(self) -> None:
        """Zero ``calls``, ``calls_by_auth`` and ``simulated_cpu_seconds``."""
        self.state.reset_counters()

    def inject(self, endpoint: str, *, statuses: list[int] | tuple[int, ...] = (),
               delay: float | None = None, drop: int = 0, hang: float | None = None,
               times: int = 1, after: int = 0, hold: bool = False) -> None:
        """Arm faults for ``endpoint`` (or ``"*"``), applied before the real operation.

        ``statuses``: answer these in order (5xx/429 as proxy error pages), then normally.
        ``delay``: extra latency on every request until ``clear_faults``. ``drop``: reset the
        connection without answering, that many times. ``hang``: hold the request that many
        seconds then close it, ``times`` times. ``after``: perform the operation, then reset
        the connection instead of answering (the client fails although the token exists).
        ``hold``: block the next ``times`` requests until :meth:`release` (:meth:`wait_held`
        returns once one is blocked), then serve them with whatever else is armed. A test acts
        while the request is certainly in flight; a client that gives up meanwhile leaves the
        operation to be performed all the same, as a real server would.
        """
        self.faults.inject(endpoint, statuses=statuses, delay=delay, drop=drop, hang=hang,
                           times=times, after=after, hold=hold)

    def wait_held(self, endpoint: str = "*", count: int = 1, timeout: float = 10.0) -> None:
        """Return once ``count`` requests of ``endpoint`` are held (see ``inject(hold=True)``);
        TimeoutError, naming what is held, if that does not happen within ``timeout`` s."""
        self.faults.wait_held(endpoint, count, timeout)

    def held(self, endpoint: str = "*") -> int:
        """How many requests of ``endpoint`` (of any with ``"*"``) are being held now."""
        return self.faults.held(endpoint)

    def release(self, endpoint: str = "*") -> int:
        """Let the held requests of ``endpoint`` (all with ``"*"``) go on; returns how many.
        Holds armed and not yet taken stay armed (``clear_faults`` disarms them)."""
        return self.faults.release(endpoint)

    def clear_faults(self) -> None:
        """Disarm every fault and release every held request."""
        self.faults.clear()

    # -- serving -------------------------------------------------------------------------------

    def _serve(self, handler: _Handler) -> None:
        api = self._api
        assert api is not None
        request = handler.read_request()
        endpoint, arg = api.route(request.method, request.path)
        kind = api.auth_kind(request)
        self.state.count(endpoint, request.method, kind)
        cost = {"oauth": self.oauth_request_cost, "session": self.session_request_cost}.get(kind)
        if cost:
            self.state.add_cpu(cost)
            self._stopping.wait(cost)
        plan = self.faults.take(endpoint)
        if plan.hold:
            self.faults.hold(endpoint, self._stopping)
            if self._stopping.is_set():  # stopped while held: no answer, nothing performed
                handler.drop()
                return
        if plan.delay:
            self._stopping.wait(plan.delay)
        if plan.hang is not None:
            self._stopping.wait(plan.hang)
            handler.drop()
            return
        if plan.drop:
            handler.drop()
            return
        if plan.status is not None:
            content_type, body = views.fault_body(plan.status, base=self.base_url)
            handler.write(views.Reply(plan.status, content_type, body))
            return
        try:
            reply = api.handle(request, endpoint, arg)
        except Exception as exc:
            logger.exception("quaysim: %s %s failed", request.method, request.path)
            self.server_errors.append(exc)
            reply = views.Reply(500, *views.fault_body(500, base=self.base_url))
        if plan.drop_after:
            handler.drop()
            return
        handler.write(reply)

    def _seed(self, quay_testdata: bool) -> None:
        now = self.state.now()
        self.state.add_user(User(USERNAME, PASSWORD, views.DEVTABLE_EMAIL, superuser=True,
                                 orgs=views.DEVTABLE_ORGS))
        self.state.add_user(User(READER_USERNAME, PASSWORD, "no1@thanks.com"))
        for token, user, scopes, lifetime in (
            (ADMIN_TOKEN, USERNAME, "user:admin", _TEN_YEARS),
            (REPOREAD_TOKEN, USERNAME, "repo:read", _TEN_YEARS),
            (READONLY_TOKEN, USERNAME, "user:read", _TEN_YEARS),
            (EXPIRED_TOKEN, USERNAME, "user:admin", -3600),
            (ALLSCOPES_TOKEN, USERNAME, ALL_SCOPES, _TEN_YEARS),
            (READER_ADMIN_TOKEN, READER_USERNAME, "user:admin", _TEN_YEARS),
        ):
            self.state.add_oauth(OAuthToken(token, user, frozenset(scopes.split()),
                                            now + lifetime))
        if quay_testdata:
            # initdb.py gives devtable one token, created before any expiration setting.
            self.state.create_token(USERNAME, "some app", created=now - 14 * 60,
                                    use_config=False)
