"""``kubectl dockertoken`` (issue 23), run through the real kubectl (plugin discovery on PATH) and
the closed loop: Knative's real ApiServerSource adapter watches DockerTokens and feeds the
function. ``renew`` gives a new token within one event, its echo costs nothing, and the old token
is revoked after the grace; ``status`` prints what the README shows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness, waiting
from tests.adapter_proc import running_adapter
from tests.controlplane import ControlPlane
from tests.env import Env, wait_for
from tests.eventing_controller import AdapterPod
from tests.quaysim import QuaySimulator

pytestmark = pytest.mark.controlplane
GRACE = 3  # seconds: ROTATION_GRACE_SECONDS of this module's function process
RENEW = "quay.herve4m.github.io/renew-request"


@pytest.fixture(scope="module")
def plugin_fn(control_plane: ControlPlane) -> Iterator[harness.FunctionProcess]:
    with harness.FunctionProcess(control_plane.kubeconfigs["dockertoken-reconciler"], movable_clock=True,
                                 env={"ROTATION_GRACE_SECONDS": str(GRACE)}) as fn:
        yield fn


@pytest.fixture(scope="module")
def adapter(control_plane: ControlPlane, plugin_fn: harness.FunctionProcess,
            adapter_pod: AdapterPod) -> Iterator[Path]:
    with running_adapter(control_plane, plugin_fn, adapter_pod.sending_to(plugin_fn.url)) as log:
        yield log


@pytest.fixture
def penv(control_plane: ControlPlane, namespace: str, quay: QuaySimulator,
         plugin_fn: harness.FunctionProcess, adapter: Path) -> Env:
    plugin_fn.reset_clock()
    return Env(control_plane, namespace, quay, plugin_fn)


def settled(env: Env, name: str, quiet: float = 1.0) -> int:
    """The deliveries for ``name`` once none has come for ``quiet`` seconds (the adapter sends
    no signal when it is done: its log is polled, re-checked against a deadline)."""
    deadline = time.monotonic() + 30
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(deliveries(env, name))
        if count != seen:
            seen, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return count
        waiting.pause(0.1)
    raise AssertionError(f"{name}: still receiving events after 30 s")


def kubectl_dockertoken(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl dockertoken ...` as the admin user, the console script found on PATH."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed; it runs the plugin")
    scripts = Path(sys.executable).parent
    assert (scripts / "kubectl-dockertoken").exists(), "pip install -e . installs the console script"
    return subprocess.run([kubectl, "dockertoken", *args], capture_output=True, text=True, timeout=90,
                          env={**os.environ, "KUBECONFIG": str(env.cp.kubeconfigs["admin"]),
                               "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"})


def deliveries(env: Env, name: str) -> list[dict[str, Any]]:
    out = []
    for line in env.fn.logs().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("namespace") == env.ns and entry.get("name") == name and \
                str(entry.get("event", "")).startswith("dev.knative.apiserver."):
            out.append(entry)
    return out


def test_renew_rotates_within_one_event_and_revokes_the_old_token_after_the_grace(penv: Env) -> None:
    penv.quay.token_expiration = 3600
    penv.conn_secret()
    penv.dockertoken(serviceAccounts=["default"])
    penv.core.create_namespaced_service_account(penv.ns, {"metadata": {"name": "default"}})
    old = wait_for(lambda: ((penv.get() or {}).get("status") or {}).get("uuid"), timeout=30,
                   what="the first token")
    wait_for(lambda: penv.ready().get("status") == "True", timeout=30, what="Ready")
    before, creates = settled(penv, "dockertoken-sample"), penv.quay_calls("create")

    run = kubectl_dockertoken(penv, "renew", "dockertoken-sample", "-n", penv.ns)
    assert run.returncode == 0, run.stdout + run.stderr
    status = (penv.get() or {})["status"]
    new = status["uuid"]
    assert new != old and f"Renewed: new token {new}" in run.stdout
    assert status["pendingRevocation"] == [old] and status["renewRequest"]
    assert penv.secret_data()["uuid"] == new and penv.quay_calls("create") == creates + 1
    assert "The old token stays valid for pulls in flight until" in run.stdout
    # within one event: the first delivery after the request made the new token
    after = deliveries(penv, "dockertoken-sample")[before:]
    assert "create-token" in after[0]["actions"], after
    # its echoes (status, Secret) do nothing: no Quay call, no write
    wait_for(lambda: deliveries(penv, "dockertoken-sample")[before + 1:], timeout=30, what="the echoes")
    echoes = deliveries(penv, "dockertoken-sample")[before + 1:settled(penv, "dockertoken-sample")]
    assert echoes and all(e["quay_calls"] == 0 and e["writes"] == 0 for e in echoes), echoes
    assert penv.quay_calls("create") == creates + 1

    # the old token lives for the grace, then the first pass after it (a resync) revokes it
    assert {t["uuid"] for t in penv.tokens()} == {old, new}
    penv.fn.advance(GRACE)  # the grace passes for the function and for Quay alike; nobody waits
    penv.quay.advance(GRACE)
    assert penv.resync().status_code == 204
    assert [t["uuid"] for t in penv.tokens()] == [new]
    assert "pendingRevocation" not in (penv.get() or {})["status"]

    shown = kubectl_dockertoken(penv, "status", "dockertoken-sample", "-n", penv.ns)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert f"DockerToken {penv.ns}/dockertoken-sample: Quay token 'mytoken' for {penv.quay.host}" in text
    assert "Ready               True  TokenReady" in text
    assert f"Token               {new}  created " in text
    assert "Expires             " in text and "(in 59m" in text
    assert "ServiceAccounts     default" in text
    assert "Renew request" in text and "(done)" in text
    for reason in ("TokenCreated", "TokenRotated", "TokenRevoked"):
        assert reason in text, text


def test_renew_asks_once_while_a_request_waits(penv: Env) -> None:
    """Nothing can be renewed without its connection Secret: the request stays pending, and asking
    again does not change it (no second rotation queued)."""
    penv.dockertoken()
    wait_for(lambda: penv.ready().get("reason") == "ConnectionSecretNotFound", timeout=30,
             what="the failure")
    first = kubectl_dockertoken(penv, "renew", "dockertoken-sample", "-n", penv.ns, "--wait", "0")
    assert first.returncode == 0 and "Renewal requested" in first.stdout, first.stdout + first.stderr
    value = (penv.get() or {})["metadata"]["annotations"][RENEW]
    again = kubectl_dockertoken(penv, "renew", "dockertoken-sample", "-n", penv.ns, "--wait", "0")
    assert again.returncode == 0 and "is waiting for the reconciler; not asking again" in again.stdout
    assert (penv.get() or {})["metadata"]["annotations"][RENEW] == value

    waited = kubectl_dockertoken(penv, "renew", "dockertoken-sample", "-n", penv.ns, "--wait", "10")
    assert waited.returncode == 1
    assert "Not renewed: the DockerToken is failing (ConnectionSecretNotFound: connSecretRef: " \
        "quay-credentials: secret not found); fix that" in waited.stdout

    shown = kubectl_dockertoken(penv, "status", "dockertoken-sample", "-n", penv.ns)
    assert shown.returncode == 1  # not Ready
    assert "Ready               False  ConnectionSecretNotFound" in shown.stdout
    assert "Retry               attempt" in shown.stdout and "(waiting for the reconciler)" in shown.stdout


def test_errors_say_what_to_do(penv: Env) -> None:
    missing = kubectl_dockertoken(penv, "status", "nope", "-n", penv.ns)
    assert missing.returncode == 2
    assert f"DockerToken {penv.ns}/nope not found; `kubectl get dockertokens -n {penv.ns}`" in missing.stderr
    hostile = kubectl_dockertoken(penv, "status", "../../secrets/x", "-n", penv.ns)
    assert hostile.returncode == 2 and "is not a Kubernetes object name" in hostile.stderr
    audit = kubectl_dockertoken(penv, "audit", "--connection", f"{penv.ns}/absent")
    assert audit.returncode == 1 and f"connection Secret {penv.ns}/absent: not found" in audit.stdout
