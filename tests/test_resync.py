"""function/resync.py without Kubernetes: an injected lister and a real HTTP sink on 127.0.0.1.

The sink is a stdlib ThreadingHTTPServer that records every request (decoded with the
CloudEvents SDK, as the function would) and answers from a per-object script of statuses.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cloudevents.http import from_http

from function import resync

API_VERSION = "quay.herve4m.github.io/v1alpha1"


def token(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "DockerToken",
        "metadata": {"namespace": namespace, "name": name, "resourceVersion": "1"},
        "spec": {"name": name, "connSecretRef": {"name": "quay"}},
    }


@dataclass
class Sink:
    """Records requests; ``script[(ns, name)]`` lists the statuses to answer, last one repeats."""

    script: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    default: int = 204
    body: bytes = b""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def answer(self, key: tuple[str, str]) -> int:
        with self.lock:
            statuses = self.script.get(key)
            if not statuses:
                return self.default
            return statuses.pop(0) if len(statuses) > 1 else statuses[0]

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
            with state.lock:
                state.received.append((headers, body))
            status = state.answer((headers.get("ce-namespace", ""), headers.get("ce-name", "")))
            payload = state.body if status >= 300 else b""
            self.send_response(status)
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
    objs: list[dict[str, Any]] | Callable[[], Any],
    capsys: pytest.CaptureFixture[str],
    *extra: str,
) -> tuple[int, dict[str, Any], Sleeps]:
    sleeps = Sleeps()
    lister = objs if callable(objs) else (lambda: iter(objs))
    code = resync.main(["--sink", sink.url, *extra], lister=lister, sleep=sleeps)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, f"stdout must be exactly one summary line: {out}"
    summary = json.loads(out[0])
    assert set(summary) == {"listed", "sent", "failed", "seconds"}
    return code, summary, sleeps


OBJS = [token("ns1", "a"), token("ns1", "b"), token("ns2", "a"), token("team-x", "pull")]


def test_the_summary_times_the_whole_run_listing_included(
    sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    def slow_lister() -> Iterator[dict[str, Any]]:
        time.sleep(0.3)  # a slow API server, not a synchronisation
        return iter(OBJS)

    started = time.monotonic()
    code, summary, _ = run(sink, slow_lister, capsys)
    wall = time.monotonic() - started
    assert code == 0 and summary["sent"] == len(OBJS)
    assert 0.3 <= summary["seconds"] <= round(wall, 3) + 0.001


def test_every_object_gets_one_resync_event_and_503_is_retried(
    sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    sink.script[("ns1", "b")] = [503, 204]
    code, summary, sleeps = run(sink, OBJS, capsys, "--concurrency", "3")

    assert code == 0
    assert summary["listed"] == 4 and summary["sent"] == 4 and summary["failed"] == 0
    assert sleeps == [0.5]  # one retry, after the first backoff step

    got = sink.by_object()
    assert set(got) == {("ns1", "a"), ("ns1", "b"), ("ns2", "a"), ("team-x", "pull")}
    for (ns, name), events in got.items():
        # 503 then 204 for ns1/b: two attempts of the SAME event; one for everything else.
        assert len(events) == (2 if (ns, name) == ("ns1", "b") else 1)
        assert len({ev["id"] for ev in events}) == 1
        ev = events[0]
        assert ev["specversion"] == "1.0"
        assert ev["type"] == "io.github.herve4m.quay.dockertoken.resync"
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
    assert headers["ce-type"] == "io.github.herve4m.quay.dockertoken.resync"
    assert {
        "ce-id",
        "ce-source",
        "ce-specversion",
        "ce-time",
        "ce-kind",
        "ce-namespace",
        "ce-name",
        "ce-apiversion",
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
    assert summary["listed"] == 4 and summary["sent"] == 3 and summary["failed"] == 1
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
    assert (summary["sent"], summary["failed"]) == (1, 1)
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(sink.by_object()[("ns1", "a")]) == 4  # 1 attempt + 3 retries


def test_other_4xx_is_not_retried(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    sink.script[("ns1", "a")] = [400]
    code, summary, sleeps = run(sink, OBJS[:1], capsys)
    assert (code, summary["failed"], sleeps) == (1, 1, [])


def test_transport_error_is_retried_then_fails(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # A port nothing listens on: connection refused on every attempt.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = Sleeps()
    code = resync.main(
        ["--sink", f"http://127.0.0.1:{port}/", "--timeout", "2"],
        lister=lambda: OBJS[:1],
        sleep=sleeps,
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 1 and summary == {**summary, "listed": 1, "sent": 0, "failed": 1}
    assert sleeps == [0.5, 1.0, 2.0]
    assert any("ConnectError" in r.getMessage() for r in caplog.records)


def test_listing_failure_exits_2(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("410 Gone: the continue token expired")

    code, summary, _ = run(sink, broken, capsys)
    assert code == 2
    assert (summary["listed"], summary["sent"], summary["failed"]) == (0, 0, 0)
    assert sink.received == []


def test_nothing_to_do(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    code, summary, _ = run(sink, [], capsys)
    assert code == 0 and summary["listed"] == 0 and sink.received == []


def test_concurrency_is_bounded(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    """With --concurrency 2 the sink never sees more than 2 requests at once."""
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
    objs = [token("ns", f"t{i}") for i in range(12)]
    code, summary, _ = run(sink, objs, capsys, "--concurrency", "2")
    assert code == 0 and summary["sent"] == 12
    assert 1 <= peak <= 2


def test_env_configuration(
    sink: Sink, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESYNC_SINK", sink.url)
    monkeypatch.setenv("RESYNC_CONCURRENCY", "1")
    monkeypatch.setenv("RESYNC_TIMEOUT", "5")
    code = resync.main([], lister=lambda: OBJS[:2], sleep=Sleeps())
    assert code == 0 and json.loads(capsys.readouterr().out)["sent"] == 2


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--sink", "ftp://x"],
        ["--sink", "http://x", "--concurrency", "0"],
        ["--sink", "http://x", "--timeout", "abc"],
    ],
)
def test_bad_configuration_exits_2(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RESYNC_SINK", raising=False)
    with pytest.raises(SystemExit) as exc:
        resync.main(argv, lister=lambda: [])
    assert exc.value.code == 2


def test_the_function_accepts_what_resync_sends(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    """The reconciler's own event parser maps each resync event to its object, with a Quay check."""
    from function.events import parse_event

    run(sink, OBJS, capsys)
    targets = set()
    for ev in sink.events():
        target = parse_event(ev.get_attributes(), ev.data)
        assert target is not None and target.verify_quay
        targets.add((target.namespace, target.name))
    assert targets == {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in OBJS}
