"""Replay every recorded Quay transcript against the simulator over real HTTP.

Each file of ``tests/data/quay-transcripts`` is one test. Within a server run (A: 001-103,
B: 110-116, C: 120-137) the files are sent in recording order to one simulator configured like
that run, so uuids, token codes, cookies, CSRF tokens and registry JWTs created by earlier files
are mapped to the simulator's own values. A response matches when the status, the header names,
every header value except the volatile ones, and the body match; in bodies, uuids, token codes
and JWTs must be consistent with that mapping, dates must be RFC 2822 with ``-0000`` and keep the
recorded expiration - created span, everything else must be equal. Recorded waits (084, 099, 125,
132, 133) move the simulator's clock instead of sleeping.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.quaysim import QuaySimulator

TRANSCRIPTS = Path(__file__).resolve().parent / "data" / "quay-transcripts"
FILES = sorted(TRANSCRIPTS.glob("*.json"))
RECORDED_HOST = "127.0.0.1:18080"

# Server configuration of each recorded run (README "Which Quay produced them").
RUNS: dict[str, dict[str, Any]] = {
    "A": {},
    "B": {"token_expiration": 24 * 3600},
    "C": {"token_expiration": 30, "fresh_login_timeout": 5},
}
# Files 081-084 were recorded after 085.
RECORDING_ORDER = {"081": 85.1, "082": 85.2, "083": 85.3, "084": 85.4}
# Seconds the recording waited before sending the file; the simulator's clock jumps instead.
WAITS = {"084": 2.0, "099": 2.0, "125": 7.0, "132": 21.0, "133": 5.0}
# Headers whose values are per-request by nature; they are only required to be present.
VOLATILE_HEADERS = frozenset({"date", "content-length", "set-cookie", "x-next-csrf-token"})

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
DATE = re.compile(r"^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} -0000$")
CODE = re.compile(r"^[A-Z0-9]{120}$")
JWT = re.compile(r"^eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+$")
PAGE_TOKEN = re.compile(r"window\.__token = '([^']+)'")
COOKIE = re.compile(r"_csrf_token=([^;]*)")
# JSON keys whose values are opaque per server: learned, not compared.
OPAQUE_KEYS = frozenset({"csrf_token", "kid"})
# JWT times: only their type is compared.
TIME_KEYS = frozenset({"nbf", "iat", "exp"})


def run_of(name: str) -> str:
    number = int(name[:3])
    return "A" if number < 110 else "B" if number < 120 else "C"


def order_key(path: Path) -> float:
    return RECORDING_ORDER.get(path.name[:3], float(path.name[:3]))


class Replay:
    """One simulator per run, fed the run's files in order; remembers value mappings."""

    def __init__(self, run: str, server_hostname: str | None = None) -> None:
        self.sim = QuaySimulator(seed_quay_testdata=True, server_hostname=server_hostname,
                                 **RUNS[run]).start()
        self.files = sorted((f for f in FILES if run_of(f.name) == run), key=order_key)
        self.done: dict[str, list[str]] = {}
        self.mapped: dict[str, str] = {}
        # The recording's host stands for the API host, except in the registry's answers and
        # the service parameter, where it is SERVER_HOSTNAME (the same value when recorded).
        self.recorded_host_is = self.sim.host

    def host_for(self, path: str) -> str:
        return self.sim.server_hostname if path.startswith("/v2/") else self.sim.host

    def result(self, name: str) -> list[str]:
        """Replay up to ``name`` (earlier files first) and return its mismatches."""
        for path in self.files:
            if name in self.done:
                break
            if path.name not in self.done:
                self.done[path.name] = self.replay(path)
        return self.done[name]

    # -- sending ------------------------------------------------------------------------------

    def replay(self, path: Path) -> list[str]:
        record = json.loads(path.read_text())
        request, expected = record["request"], record["response"]
        self.recorded_host_is = self.host_for(request["path"])
        wait = WAITS.get(path.name[:3])
        if wait:
            self.sim.advance(wait)
        conn = http.client.HTTPConnection("127.0.0.1", self.sim.port, timeout=10)
        try:
            conn.putrequest(request["method"], self.substitute(request["path"]),
                            skip_host=True, skip_accept_encoding=True)
            body = encode_body(request)
            for name, value in request["headers"].items():
                if name == "Host":
                    conn.putheader(name, self.sim.host)
                elif name == "Content-Length":
                    conn.putheader(name, str(len(body or b"")))
                else:
                    conn.putheader(name, self.substitute_header(name, value))
            conn.endheaders(body)
            response = conn.getresponse()
            raw = response.read()
            headers = response.getheaders()
        finally:
            conn.close()
        return self.check(expected, response.status, headers, raw)

    def substitute(self, text: str) -> str:
        for recorded in sorted(self.mapped, key=len, reverse=True):
            text = text.replace(recorded, self.mapped[recorded])
        return text.replace(RECORDED_HOST, self.recorded_host_is)

    def substitute_header(self, name: str, value: str) -> str:
        scheme, _, credentials = value.partition(" ")
        if name == "Authorization" and scheme == "Basic":
            decoded = base64.b64decode(credentials).decode()
            return f"Basic {base64.b64encode(self.substitute(decoded).encode()).decode()}"
        return self.substitute(value)

    # -- checking -----------------------------------------------------------------------------

    def check(self, expected: dict[str, Any], status: int, headers: list[tuple[str, str]],
              raw: bytes) -> list[str]:
        problems: list[str] = []
        if status != expected["status"]:
            problems.append(f"status {status} != recorded {expected['status']}")
        got: dict[str, list[str]] = {}
        for name, value in headers:
            got.setdefault(name.lower(), []).append(value)
        want = {name.lower(): value if isinstance(value, list) else [value]
                for name, value in expected["headers"].items()}
        if set(got) != set(want):
            problems.append(f"header names differ: extra {sorted(set(got) - set(want))}, "
                            f"missing {sorted(set(want) - set(got))}")
        for name, values in want.items():
            if name in got and name not in VOLATILE_HEADERS:
                wanted = [value.replace(RECORDED_HOST, self.recorded_host_is) for value in values]
                if got[name] != wanted:
                    problems.append(f"header {name}: {got[name]!r} != {wanted!r}")
        if "x-next-csrf-token" in want and "x-next-csrf-token" in got:
            self.learn(want["x-next-csrf-token"][0], got["x-next-csrf-token"][0], problems,
                       "csrf")
        if "set-cookie" in want and "set-cookie" in got:
            self.check_cookie(want["set-cookie"][0], got["set-cookie"][0], problems)
        self.check_body(expected["body"], got.get("content-type", [""])[0], raw, problems)
        return problems

    def check_cookie(self, want: str, got: str, problems: list[str]) -> None:
        recorded, actual = COOKIE.search(want), COOKIE.search(got)
        if recorded is None or actual is None:
            problems.append(f"Set-Cookie without _csrf_token: {got!r}")
            return
        # Flask re-signs the cookie on every change; one simulator session may stand for several.
        self.mapped[recorded.group(1)] = actual.group(1)
        shape = re.sub(r"_csrf_token=[^;]*|Expires=[^;]*", "*", want)
        if re.sub(r"_csrf_token=[^;]*|Expires=[^;]*", "*", got) != shape:
            problems.append(f"Set-Cookie attributes differ: {got!r} vs recorded {want!r}")

    def check_body(self, want: Any, content_type: str, raw: bytes, problems: list[str]) -> None:
        text = raw.decode()
        if content_type.startswith("application/json") and raw:
            try:
                got = json.loads(text)
            except ValueError:
                problems.append(f"body is not JSON: {text[:200]!r}")
                return
            self.compare(want, got, "body", problems)
        elif isinstance(want, str) and "window.__token" in want:
            recorded, actual = PAGE_TOKEN.search(want), PAGE_TOKEN.search(text)
            if recorded is None or actual is None:
                problems.append("page without window.__token")
            else:
                self.learn(recorded.group(1), actual.group(1), problems, "csrf")
        elif text != self.substitute(want if isinstance(want, str) else json.dumps(want)):
            problems.append(f"body {text[:200]!r} != recorded {str(want)[:200]!r}")

    def compare(self, want: Any, got: Any, where: str, problems: list[str],
                key: str = "") -> None:
        if isinstance(want, dict):
            if not isinstance(got, dict) or set(want) != set(got):
                problems.append(f"{where}: keys {sorted(got) if isinstance(got, dict) else got!r}"
                                f" != recorded {sorted(want)}")
                return
            for name in want:
                self.compare(want[name], got[name], f"{where}.{name}", problems, name)
            self.compare_span(want, got, where, problems)
        elif isinstance(want, list):
            if not isinstance(got, list) or len(got) != len(want):
                problems.append(f"{where}: {got!r} is not a list of {len(want)} items")
                return
            for index, (one, other) in enumerate(zip(want, got, strict=True)):
                self.compare(one, other, f"{where}[{index}]", problems)
        elif type(want) is not type(got):
            problems.append(f"{where}: {got!r} is not of the recorded type {type(want).__name__}")
        elif isinstance(want, str):
            self.compare_text(want, got, where, problems, key)
        elif want != got and key not in TIME_KEYS:
            problems.append(f"{where}: {got!r} != recorded {want!r}")

    def compare_text(self, want: str, got: str, where: str, problems: list[str],
                     key: str) -> None:
        if want in self.mapped:
            if got != self.mapped[want]:
                problems.append(f"{where}: {got!r} != {self.mapped[want]!r} (mapped {want!r})")
        elif DATE.match(want):
            if not DATE.match(got):
                problems.append(f"{where}: {got!r} is not an RFC 2822 -0000 date")
        elif JWT.match(want):
            if not JWT.match(got):
                problems.append(f"{where}: {got!r} is not a JWT")
                return
            for part, (one, other) in enumerate(zip(want.split(".")[:2], got.split(".")[:2],
                                                     strict=True)):
                self.compare(jwt_part(one), jwt_part(other), f"{where}<jwt{part}>", problems)
            self.learn(want, got, problems, where)
        elif UUID.match(want) or CODE.match(want) or key in OPAQUE_KEYS:
            pattern = UUID if UUID.match(want) else CODE if CODE.match(want) else None
            if pattern is not None and not pattern.match(got):
                problems.append(f"{where}: {got!r} does not look like {want!r}")
            self.learn(want, got, problems, where)
        elif got != want.replace(RECORDED_HOST, self.recorded_host_is):
            problems.append(f"{where}: {got!r} != recorded {want!r}")

    def compare_span(self, want: dict[str, Any], got: dict[str, Any], where: str,
                     problems: list[str]) -> None:
        """An expiration keeps its recorded distance from the creation time (110, 120)."""
        if isinstance(want.get("created"), str) and isinstance(want.get("expiration"), str):
            if not all(isinstance(got.get(k), str) for k in ("created", "expiration")):
                return
            recorded = span(want["created"], want["expiration"])
            actual = span(got["created"], got["expiration"])
            if abs(actual - recorded) > 1:
                problems.append(f"{where}: expiration - created = {actual}s, recorded {recorded}s")

    def learn(self, recorded: str, actual: str, problems: list[str], where: str) -> None:
        known = self.mapped.get(recorded)
        if known is not None and known != actual:
            problems.append(f"{where}: {actual!r} != {known!r} seen before for {recorded!r}")
        elif known is None and actual in self.mapped.values():
            problems.append(f"{where}: {actual!r} already stands for another recorded value")
        self.mapped[recorded] = actual


def encode_body(request: dict[str, Any]) -> bytes | None:
    """Recorded JSON bodies are parsed; a raw string body is sent as is (015)."""
    body = request["body"]
    if body is None:
        return None
    length = int(request["headers"].get("Content-Length", -1))
    if isinstance(body, str) and len(body.encode()) == length:
        return body.encode()
    return json.dumps(body).encode()


def jwt_part(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def span(created: str, expiration: str) -> float:
    return email.utils.mktime_tz(_parse(expiration)) - email.utils.mktime_tz(_parse(created))


def _parse(date: str) -> tuple[int, int, int, int, int, int, int, int, int, int | None]:
    parsed = email.utils.parsedate_tz(date)
    assert parsed is not None, date
    return parsed


_replays: dict[str, Replay] = {}


@pytest.fixture(scope="module")
def replays() -> Any:
    yield _replays
    for replay in _replays.values():
        replay.sim.stop()
        assert not replay.sim.server_errors, replay.sim.server_errors
    _replays.clear()


def test_transcripts_are_present() -> None:
    assert len(FILES) == 124, (
        f"expected the 124 recorded transcripts in {TRANSCRIPTS}; found {len(FILES)}. "
        "They are part of the repository (tests/data/README.md)."
    )


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_transcript(path: Path, replays: dict[str, Replay]) -> None:
    run = run_of(path.name)
    if run not in replays:
        replays[run] = Replay(run)
    problems = replays[run].result(path.name)
    assert not problems, "\n".join([json.loads(path.read_text())["description"], *problems])


# Quay's SERVER_HOSTNAME set to a name other than the one clients use for the API: the registry
# must announce it (realm PREFERRED_URL_SCHEME://SERVER_HOSTNAME/v2/auth, service, JWT audience)
# while the API's answers keep following the request's host.
OTHER_SERVER_HOSTNAME = "registry.example.test:5000"
RUN_A = [f for f in FILES if run_of(f.name) == "A"]
_renamed: dict[str, Replay] = {}


@pytest.fixture(scope="module")
def renamed() -> Any:
    yield _renamed
    for replay in _renamed.values():
        replay.sim.stop()
        assert not replay.sim.server_errors, replay.sim.server_errors
    _renamed.clear()


@pytest.mark.parametrize("path", RUN_A, ids=[f.stem for f in RUN_A])
def test_transcript_with_another_server_hostname(path: Path, renamed: dict[str, Replay]) -> None:
    if "A" not in renamed:
        renamed["A"] = Replay("A", server_hostname=OTHER_SERVER_HOSTNAME)
    problems = renamed["A"].result(path.name)
    assert not problems, "\n".join([json.loads(path.read_text())["description"], *problems])


def test_another_server_hostname_is_announced_exactly() -> None:
    with QuaySimulator(server_hostname=OTHER_SERVER_HOSTNAME) as sim:
        conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=10)
        try:
            conn.request("GET", "/v2/")
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
    assert response.status == 401
    assert response.getheader("WWW-Authenticate") == (
        f'Bearer realm="http://{OTHER_SERVER_HOSTNAME}/v2/auth",service="{OTHER_SERVER_HOSTNAME}"')
