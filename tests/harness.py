"""Run the function the way Knative does (functions-framework in its own process) and talk to it.

Used by the integration tests, ``scripts/demo`` and the benchmarks. Events are built exactly as
ApiServerSource sends them (binary mode, the kind/name/namespace/apiversion extensions).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from function.model import API_VERSION
from tests import waiting

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    from tests.controlplane import free_port as _free_port

    return _free_port()


# Every function started and every answer it gave through ``post`` in this process: the
# secret-hygiene check (tests/hygiene.py) scans them for credentials.
STARTED: list[FunctionProcess] = []
RESPONSES: list[str] = []


def record_response(resp: httpx.Response) -> httpx.Response:
    RESPONSES.append(f"{resp.status_code} {resp.text}")
    return resp


class FunctionProcess:
    """functions-framework serving function/main.py:handle on a free loopback port."""

    def __init__(self, kubeconfig: Path, *, env: dict[str, str] | None = None,
                 port: int | None = None, sender_token: str | None = None,
                 movable_clock: bool = False) -> None:
        """``sender_token``: what ``post`` presents to this function (then ``env`` should turn the
        sender check on, tests/senders.py); without it the check is off, explicitly
        (SENDER_AUTH=off, what a local run with sample events does). ``movable_clock``: serve
        tests/clock_function.py, whose clock ``advance`` moves."""
        self.kubeconfig = kubeconfig
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.sender_token = sender_token
        self.log_path = Path(tempfile.mkstemp(prefix="qdt-function-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.source = ROOT / ("tests/clock_function.py" if movable_clock else "function/main.py")
        self.skew_path: Path | None = None
        if movable_clock:
            self.skew_path = Path(tempfile.mkstemp(prefix="qdt-clock-", suffix=".txt")[1])
            self.skew_path.write_text("0")
            self.extra_env["QDT_TEST_CLOCK_SKEW"] = str(self.skew_path)

    def advance(self, seconds: float) -> None:
        """Move the function's clock ``seconds`` forward (a movable_clock process only)."""
        assert self.skew_path is not None, "start the process with movable_clock=True"
        self.skew_path.write_text(str(float(self.skew_path.read_text() or 0) + seconds))

    def reset_clock(self) -> None:
        if self.skew_path is not None:
            self.skew_path.write_text("0")

    def start(self, timeout: float = 30) -> FunctionProcess:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")},
            "KUBECONFIG": str(self.kubeconfig),
            "LOG_LEVEL": "INFO",
            "THREADS": "16",
            "SENDER_AUTH": "off",
            **self.extra_env,
        }
        ff = Path(sys.executable).with_name("functions-framework")
        argv = [str(ff), "--source", str(self.source), "--target", "handle",
                "--signature-type", "cloudevent", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        STARTED.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"function exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            waiting.pause(0.05)
        raise RuntimeError(f"function not healthy after {timeout} s:\n{self.logs()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> FunctionProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def apiserver_event(verb: str, obj: dict[str, Any], *, mode: str = "ref",
                    source: str = "https://10.96.0.1:443") -> tuple[dict[str, str], bytes]:
    """Headers and body of the binary-mode event ApiServerSource sends for ``obj``."""
    import json

    meta = obj.get("metadata") or {}
    ns, name = meta.get("namespace", ""), meta.get("name", "")
    kind = obj.get("kind", "DockerToken")
    api_version = obj.get("apiVersion", API_VERSION)
    if mode == "ref":
        data: dict[str, Any] = {"kind": kind, "namespace": ns, "name": name, "apiVersion": api_version}
        event_type = f"dev.knative.apiserver.ref.{verb}"
    else:
        data = obj
        event_type = f"dev.knative.apiserver.resource.{verb}"
    group_version = api_version if "/" in api_version else f"core/{api_version}"
    headers = {
        "Content-Type": "application/json",
        "Ce-Specversion": "1.0",
        "Ce-Id": str(uuid.uuid4()),
        "Ce-Source": source,
        "Ce-Type": event_type,
        "Ce-Subject": f"/apis/{group_version}/namespaces/{ns}/{kind.lower()}s/{name}",
        "Ce-Time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "Ce-Kind": kind,
        "Ce-Name": name,
        "Ce-Namespace": ns,
        "Ce-Apiversion": api_version,
        "Kn-Namespace": "quay-system",
    }
    return headers, json.dumps(data).encode()


def resync_event(namespace: str, name: str, wave: str | None = None) -> tuple[dict[str, str], bytes]:
    """The CronJob's event, built by the resync command's own code (a run of its own by default)."""
    from function.resync import ObjectRef
    from function.resync import resync_event as build

    return build(ObjectRef(namespace, name), wave=wave)


def structured(headers: dict[str, str], body: bytes) -> tuple[dict[str, str], bytes]:
    """The same event in structured content mode."""
    import json

    event: dict[str, Any] = {k[3:].lower(): v for k, v in headers.items() if k.lower().startswith("ce-")}
    event["datacontenttype"] = "application/json"
    event["data"] = json.loads(body)
    return {"Content-Type": "application/cloudevents+json"}, json.dumps(event).encode()


def post(url: str, event: tuple[dict[str, str], bytes], *, timeout: float = 60) -> httpx.Response:
    """POST as a trusted sender: with the token of the function at ``url``, if it checks senders
    (unless the event's headers carry an Authorization of their own)."""
    headers, body = event
    token = next((fn.sender_token for fn in reversed(STARTED)
                  if url.startswith(fn.url) and fn.sender_token), None)
    if token and not any(k.lower() == "authorization" for k in headers):
        headers = {**headers, "Authorization": f"Bearer {token}"}
    return record_response(httpx.post(url, headers=headers, content=body, timeout=timeout))


def deliver(url: str, event: tuple[dict[str, str], bytes], *, attempts: int = 6) -> httpx.Response:
    """Post like ApiServerSource: retry 404/413/425/429/502/503/504 with 100 ms x 2^n backoff."""
    delay = 0.1
    for attempt in range(attempts):
        resp = post(url, event)
        if resp.status_code not in (404, 413, 425, 429, 502, 503, 504) or attempt == attempts - 1:
            return resp
        time.sleep(delay)  # simulated: ApiServerSource's own backoff between deliveries
        delay *= 2
    raise AssertionError("unreachable")
