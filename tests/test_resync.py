"""function/resync.py without Kubernetes: a real HTTP server on 127.0.0.1 stands for the function.

It answers the command's plan requests (``resyncplan``) from a list of objects, a page at a time
following the continue token, and records every resync event (decoded with the CloudEvents SDK,
as the function would), answering from a per-object script of statuses and outcomes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import from_http

from function import resync
from function.events import OUTCOME_HEADER, PLAN_TYPE, REASON_HEADER, RESYNC_TYPE

API_VERSION = "quay.herve4m.github.io/v1alpha1"


@dataclass(frozen=True)
class Obj:
    """An object as the function's plan would see it: drifted (how), failing (why) or in order."""

    namespace: str
    name: str
    drift: str = "secret-missing"
    failing: str = ""


@dataclass
class Sink:
    """The function: ``objects`` are planned a page at a time; ``script[(ns, name)]`` lists the
    statuses to answer a resync event (last one repeats), ``outcome[(ns, name)]`` the outcome
    headers of a 2xx answer."""

    objects: list[Obj] = field(default_factory=list)
    script: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    outcome: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    plan_script: list[int] = field(default_factory=list)
    default: int = 204
    body: bytes = b""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    plans: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def answer(self, key: tuple[str, str]) -> int:
        with self.lock:
            statuses = self.script.get(key)
            if not statuses:
                return self.default
            return statuses.pop(0) if len(statuses) > 1 else statuses[0]

    def plan(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        with self.lock:
            self.plans.append({**json.loads(body), "wave": headers.get("ce-resyncwave"),
                               "authorization": headers.get("authorization")})
            if self.plan_script:
                status = self.plan_script.pop(0) if len(self.plan_script) > 1 else self.plan_script[0]
                if status >= 300:
                    return status, b"temporary failure, retry: list dockertokens: API server unreachable"
                if status != 200:
                    return status, b""
        req = json.loads(body)
        start = int(req["continue"] or 0)
        page = self.objects[start:start + req["limit"]]
        nxt = start + req["limit"]
        failing: dict[str, int] = {}
        for o in page:
            if o.failing:
                failing[o.failing] = failing.get(o.failing, 0) + 1
        report = {"seen": len(page), "upToDate": sum(1 for o in page if not o.drift and not o.failing),
                  "drifted": [{"namespace": o.namespace, "name": o.name, "drift": o.drift}
                              for o in page if o.drift and not o.failing],
                  "failing": failing, "continue": str(nxt) if nxt < len(self.objects) else "",
                  "quayCalls": 1 if page else 0}
        return 200, json.dumps(report).encode()

    def events(self) -> list[Any]:
        return [from_http(h, b) for h, b in self.received]

    def by_object(self) -> dict[tuple[str, str], list[Any]]:
        out: dict[tuple[str, str], list[Any]] = {}
        for ev in self.events():
            out.setdefault((ev["namespace"], ev["name"]), []).append(ev)
        return out


@pytest.fixture
def sink() -> Iterator[Sink]:
    state = Sink()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            extra: dict[str, str] = {}
            if headers.get("ce-type") == PLAN_TYPE:
                status, payload = state.plan(headers, body)
            else:
                with state.lock:
                    state.received.append((headers, body))
                key = (headers.get("ce-namespace", ""), headers.get("ce-name", ""))
                status = state.answer(key)
                payload = state.body if status >= 300 else b""
                result, reason = state.outcome.get(key, ("ready", ""))
                extra = {OUTCOME_HEADER: result, REASON_HEADER: reason}
            self.send_response(status)
            for k, v in extra.items():
                if v:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Sleeps(list[float]):
    """Records backoff delays instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def run(
    sink: Sink,
    objs: list[Obj],
    capsys: pytest.CaptureFixture[str],
    *extra: str,
) -> tuple[int, dict[str, Any], Sleeps]:
    sleeps = Sleeps()
    sink.objects = list(objs)
    code = resync.main(["--sink", sink.url, *extra], sleep=sleeps)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("resync: "), out
    summary = json.loads(out[-1])
    assert set(summary) == {"seen", "pages", "upToDate", "repaired", "failing", "undelivered",
                            "planQuayCalls", "planned", "seconds"}
    return code, summary, sleeps


OBJS = [Obj("ns1", "a"), Obj("ns1", "b", "token-gone"), Obj("ns2", "a", "serviceaccount"),
        Obj("team-x", "pull", "secret-missing")]


def test_only_drifted_objects_get_an_event_and_the_summary_counts_them(
    sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    objs = [*OBJS, Obj("ns1", "fine", ""), Obj("ns2", "fine", ""),
            Obj("ns3", "waiting", "", "QuayUnavailable")]
    sink.outcome[("ns1", "b")] = ("failed", "QuayAuthenticationFailed")
    sleeps = Sleeps()
    sink.objects = objs
    code = resync.main(["--sink", sink.url, "--page-size", "3"], sleep=sleeps)
    out = capsys.readouterr().out.strip().splitlines()

    assert code == 0
    assert set(sink.by_object()) == {(o.namespace, o.name) for o in OBJS}
    summary = json.loads(out[-1])
    assert summary["seen"] == 7 and summary["pages"] == 3 and summary["upToDate"] == 2
    assert summary["repaired"] == {"secret-missing": 2, "serviceaccount": 1}
    assert summary["failing"] == {"QuayUnavailable": 1, "QuayAuthenticationFailed": 1}
    assert summary["planned"] is True and summary["undelivered"] == 0
    text = "\n".join(out[:-1])
    assert "7 DockerToken(s) seen" in text and "3 page(s)" in text
    assert "up to date     2" in text
    assert "repaired       3  secret-missing 2, serviceaccount 1" in text
    assert "failing        2  QuayAuthenticationFailed 1, QuayUnavailable 1" in text
    # one wave for the whole run: the plan requests and the events share the Quay lists
    assert [p["continue"] for p in sink.plans] == ["", "3", "6"]
    assert {p["limit"] for p in sink.plans} == {3}
    waves = {p["wave"] for p in sink.plans} | {ev["resyncwave"] for ev in sink.events()}
    assert len(waves) == 1


@pytest.mark.parametrize("planner_file", [False, True], ids=["one-token", "broker-variant"])
def test_plan_requests_and_events_present_the_cronjobs_tokens(
    sink: Sink, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, planner_file: bool,
) -> None:
    """The function authenticates every sender (function/auth.py): the projected token goes on
    plan requests and resync events alike; through a Broker, the plans carry a token of their own
    (the function's audience) and the events the Broker's."""
    (tmp_path / "events").write_text("events-token\n")
    (tmp_path / "plans").write_text("plans-token\n")
    monkeypatch.setenv("RESYNC_TOKEN_FILE", str(tmp_path / "events"))
    if planner_file:
        monkeypatch.setenv("RESYNC_PLANNER_TOKEN_FILE", str(tmp_path / "plans"))
    sink.objects = OBJS
    assert resync.main(["--sink", sink.url, "--page-size", "2"], sleep=Sleeps()) == 0
    capsys.readouterr()
    plans = {p["authorization"] for p in sink.plans}
    assert plans == {"Bearer plans-token" if planner_file else "Bearer events-token"}
    assert len(sink.plans) == 2 and sink.received
    assert {h.get("authorization") for h, _ in sink.received} == {"Bearer events-token"}


def test_the_summary_times_the_whole_run(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    sink.script[("ns1", "a")] = [503, 204]
    started = time.monotonic()
    code, summary, _ = run(sink, OBJS, capsys)
    wall = time.monotonic() - started
    assert code == 0
    assert 0 < summary["seconds"] <= round(wall, 3) + 0.001


def test_a_503_is_retried_with_the_same_event(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    sink.script[("ns1", "b")] = [503, 204]
    code, summary, sleeps = run(sink, OBJS, capsys, "--concurrency", "3")

    assert code == 0
    assert sum(summary["repaired"].values()) == 4 and summary["undelivered"] == 0
    assert sleeps == [0.5]  # one retry, after the first backoff step

    got = sink.by_object()
    assert set(got) == {("ns1", "a"), ("ns1", "b"), ("ns2", "a"), ("team-x", "pull")}
    for (ns, name), events in got.items():
        # 503 then 204 for ns1/b: two attempts of the SAME event; one for everything else.
        assert len(events) == (2 if (ns, name) == ("ns1", "b") else 1)
        assert len({ev["id"] for ev in events}) == 1
        ev = events[0]
        assert ev["specversion"] == "1.0"
        assert ev["type"] == RESYNC_TYPE
        assert ev["source"] == "/quay-dockertoken/resync"
        assert ev["kind"] == "DockerToken"
        assert ev["apiversion"] == API_VERSION
        assert ev["namespace"] == ns and ev["name"] == name
        assert ev["subject"] == f"/apis/{API_VERSION}/namespaces/{ns}/dockertokens/{name}"
        assert ev.get("time")
        assert ev.data == {"namespace": ns, "name": name}
    # Distinct objects get distinct ids.
    assert len({evs[0]["id"] for evs in got.values()}) == 4


def test_binary_content_mode(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    run(sink, OBJS[:1], capsys)
    ((headers, body),) = sink.received
    assert headers["content-type"] == "application/json"
    assert headers["ce-type"] == RESYNC_TYPE
    assert {
        "ce-id",
        "ce-source",
        "ce-specversion",
        "ce-time",
        "ce-kind",
        "ce-namespace",
        "ce-name",
        "ce-apiversion",
        "ce-resyncwave",
    } <= headers.keys()
    assert json.loads(body) == {"namespace": "ns1", "name": "a"}


def test_500_fails_without_retry_and_exits_1(
    sink: Sink, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    sink.script[("ns2", "a")] = [500]
    sink.body = b"Traceback: " + b"x" * 1000 + b" SECRET-TAIL"
    with caplog.at_level(logging.INFO, logger="function.resync"):
        code, summary, sleeps = run(sink, OBJS, capsys)

    assert code == 1
    assert sum(summary["repaired"].values()) == 3 and summary["undelivered"] == 1
    assert sleeps == []  # 500 is not retried
    assert len(sink.by_object()[("ns2", "a")]) == 1
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1
    assert "ns2/a" in failures[0] and "HTTP 500" in failures[0]
    # The body appears, but cut to 200 characters.
    assert "Traceback" in failures[0] and "SECRET-TAIL" not in failures[0]
    assert "x" * 201 not in failures[0]


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retryable_status_exhausts_retries(
    sink: Sink, capsys: pytest.CaptureFixture[str], status: int
) -> None:
    sink.script[("ns1", "a")] = [status]
    code, summary, sleeps = run(sink, OBJS[:2], capsys)
    assert code == 1
    assert (sum(summary["repaired"].values()), summary["undelivered"]) == (1, 1)
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(sink.by_object()[("ns1", "a")]) == 4  # 1 attempt + 3 retries


def test_other_4xx_is_not_retried(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    sink.script[("ns1", "a")] = [400]
    code, summary, sleeps = run(sink, OBJS[:1], capsys)
    assert (code, summary["undelivered"], sleeps) == (1, 1, [])


def test_objects_left_failing_are_a_run_done(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 20, point 4: a reconcile that records a failure (Quay down, credentials refused)
    is counted by reason and the run exits 0."""
    sink.outcome[("ns1", "a")] = ("retrying", "QuayUnavailable")
    sink.outcome[("ns1", "b")] = ("failed", "QuayAuthenticationFailed")
    code, summary, _ = run(sink, OBJS, capsys)
    assert code == 0
    assert summary["failing"] == {"QuayUnavailable": 1, "QuayAuthenticationFailed": 1}


def test_an_unreachable_function_exits_2(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # A port nothing listens on: connection refused on every attempt.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = Sleeps()
    code = resync.main(["--sink", f"http://127.0.0.1:{port}/", "--timeout", "2"], sleep=sleeps)
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert code == 2 and summary["planned"] is False and summary["seen"] == 0
    assert sleeps == [0.5, 1.0, 2.0]
    assert any("ConnectError" in r.getMessage() for r in caplog.records)
    assert "NOT PLANNED" in "\n".join(out)


def test_a_page_the_function_cannot_plan_exits_2(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    """The API server unreachable from the function: its plan answers 503, retried, then the run
    reports it could not do its job; the objects of the pages planned before are still sent."""
    sink.plan_script = [200, 503]
    code, summary, sleeps = run(sink, OBJS, capsys, "--page-size", "2")
    assert code == 2
    assert summary["planned"] is False and summary["pages"] == 1
    assert sleeps == [0.5, 1.0, 2.0]
    assert set(sink.by_object()) == {("ns1", "a"), ("ns1", "b")}


def test_a_broker_as_planner_is_named_in_the_error(
    sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Broker ingress answers 202 with no body: the command says to point --planner at the
    Service."""
    sink.plan_script = [202]
    sleeps = Sleeps()
    sink.objects = OBJS
    code = resync.main(["--sink", sink.url], sleep=sleeps)
    out = capsys.readouterr().out
    assert code == 2 and sink.received == []
    assert "must be the reconciler Service itself, not a Broker" in out


def test_nothing_to_do(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    code, summary, _ = run(sink, [], capsys)
    assert code == 0 and summary["seen"] == 0 and summary["pages"] == 1 and sink.received == []


def test_concurrency_is_bounded(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    """With --concurrency 2 the sink never sees more than 2 resync events at once."""
    in_flight = 0
    peak = 0
    gate = threading.Lock()
    release = threading.Event()
    original = sink.answer

    def slow_answer(key: tuple[str, str]) -> int:
        nonlocal in_flight, peak
        with gate:
            in_flight += 1
            peak = max(peak, in_flight)
        release.wait(0.05)
        with gate:
            in_flight -= 1
        return original(key)

    sink.answer = slow_answer  # type: ignore[method-assign]
    objs = [Obj("ns", f"t{i}") for i in range(12)]
    code, summary, _ = run(sink, objs, capsys, "--concurrency", "2")
    assert code == 0 and summary["repaired"] == {"secret-missing": 12}
    assert 1 <= peak <= 2


def test_env_configuration(
    sink: Sink, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESYNC_SINK", "http://127.0.0.1:9/never-used")
    monkeypatch.setenv("RESYNC_PLANNER", sink.url)
    monkeypatch.setenv("RESYNC_NAMESPACE", "ns1")
    monkeypatch.setenv("RESYNC_PAGE_SIZE", "7")
    monkeypatch.setenv("RESYNC_CONCURRENCY", "1")
    monkeypatch.setenv("RESYNC_TIMEOUT", "5")
    sink.objects = [Obj("ns1", "a", "")]
    code = resync.main([], sleep=Sleeps())
    assert code == 0 and json.loads(capsys.readouterr().out.splitlines()[-1])["upToDate"] == 1
    assert [(p["namespace"], p["limit"]) for p in sink.plans] == [("ns1", 7)]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--sink", "ftp://x"],
        ["--sink", "http://x", "--planner", "ftp://y"],
        ["--sink", "http://x", "--concurrency", "0"],
        ["--sink", "http://x", "--page-size", "1001"],
        ["--sink", "http://x", "--timeout", "abc"],
    ],
)
def test_bad_configuration_exits_2(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RESYNC_SINK", "RESYNC_PLANNER"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as exc:
        resync.main(argv)
    assert exc.value.code == 2


def test_the_function_accepts_what_resync_sends(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    """The reconciler's own parsers map each plan request to its page and each resync event to
    its object, with a Quay check."""
    from function.events import parse_event, parse_plan

    run(sink, OBJS, capsys, "--namespace", "ns1", "--page-size", "2")
    targets = set()
    for ev in sink.events():
        target = parse_event(ev.get_attributes(), ev.data)
        assert target is not None and target.verify_quay and target.wave
        targets.add((target.namespace, target.name))
    assert targets == {(o.namespace, o.name) for o in OBJS}
    headers, body = resync.plan_event("ns1", "abc", 2, "w-1")
    page = parse_plan({k.removeprefix("ce-"): v for k, v in headers.items()}, json.loads(body), 500)
    assert (page.namespace, page.cont, page.limit, page.wave) == ("ns1", "abc", 2, "w-1")


@pytest.mark.parametrize("closed", [
    pytest.param("RemoteProtocolError", id="closed"),
    pytest.param("ReadError", id="reset-while-sending"),
])
def test_a_kept_alive_connection_closed_by_the_server_is_sent_again_at_once(closed: str) -> None:
    """gunicorn closes idle connections after 2 s, the last backoff step: the request then meets
    a closed connection ("Server disconnected", or a reset when it raced the close), and is sent
    again on a new one, no attempt lost."""
    import httpx

    calls: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise getattr(httpx, closed)("Server disconnected without sending a response.")
        return httpx.Response(204, headers={OUTCOME_HEADER: "ready"})

    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        result = resync.deliver(client, "http://sink/", resync.ObjectRef("ns", "a"), Sleeps())
    assert result.ok and result.attempts == 1 and result.outcome == "ready" and len(calls) == 2
