"""A refusal while observing is a recorded failure like any other (issue 20).

The function runs here with the RBAC of knative/ minus one right, ``get`` on Secrets, so reading
the connection Secret answers 403. That happens in the observe phase, before any decision; it
must still end as Ready=False naming the Secret and the missing permission, a 204, and a retry
schedule, so the echo of that status write (delivered by Knative's real adapter) is answered
with no write and the object falls silent, as tests/test_convergence.py demands of every outcome.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.adapter_proc import running_adapter
from tests.controlplane import KNATIVE, ControlPlane
from tests.env import Env, wait_for
from tests.eventing_controller import AdapterPod
from tests.harness import FunctionProcess
from tests.quaysim import QuaySimulator

IDENTITY = "reconciler-without-secrets"  # a tenant identity of tests/controlplane
WINDOW = 5.0


def _role_without_secret_reads() -> dict[str, Any]:
    role = next(doc for doc in yaml.safe_load_all((KNATIVE / "rbac.yaml").read_text())
                if doc and doc["kind"] == "ClusterRole" and doc["metadata"]["name"] == "dockertoken-reconciler")
    for rule in role["rules"]:
        if rule["resources"] == ["secrets"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != "get"]
    role["metadata"] = {"name": IDENTITY}
    return dict(role)


@pytest.fixture(scope="module")
def limited_fn(control_plane: ControlPlane) -> Iterator[FunctionProcess]:
    rbac: Any = client.RbacAuthorizationV1Api(control_plane.api_client())
    rbac.create_cluster_role(_role_without_secret_reads())
    rbac.create_cluster_role_binding({
        "metadata": {"name": IDENTITY},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": IDENTITY},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": IDENTITY}]})
    try:
        with FunctionProcess(control_plane.kubeconfigs[IDENTITY]) as fn:
            yield fn
    finally:
        rbac.delete_cluster_role_binding(IDENTITY)
        rbac.delete_cluster_role(IDENTITY)


def _deliveries(fn: FunctionProcess, namespace: str) -> list[dict[str, Any]]:
    out = []
    for line in fn.logs().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("namespace") == namespace and "outcome" in entry:
                out.append(entry)
    return out


def test_a_403_on_the_connection_secret_is_recorded_and_falls_silent(
        control_plane: ControlPlane, limited_fn: FunctionProcess, quay: QuaySimulator,
        adapter_pod: AdapterPod) -> None:
    core: Any = client.CoreV1Api(control_plane.api_client())
    ns = f"forbidden-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": ns}})
    env = Env(control_plane, ns, quay, limited_fn)
    # The Deployment the controller generated, its sink pointed at this test's function process
    # (the Service's address is what Serving would publish; here a second process stands in).
    pod = dataclasses.replace(adapter_pod, env={**adapter_pod.env, "K_SINK": limited_fn.url})
    with running_adapter(control_plane, limited_fn, pod):
        env.conn_secret()
        env.dockertoken()
        wait_for(lambda: env.ready().get("status") == "False", what="Ready=False")
        # settled: no delivery for 2 s
        seen, quiet = -1, time.monotonic()
        while time.monotonic() - quiet < 2:
            if len(_deliveries(limited_fn, ns)) != seen:
                seen, quiet = len(_deliveries(limited_fn, ns)), time.monotonic()
            time.sleep(0.1)
        time.sleep(WINDOW)
        after = _deliveries(limited_fn, ns)
    ready = env.ready()
    message = ready["message"]
    print(f"\n403 on the connection Secret: {seen} events to settle, {len(after) - seen} in the next "
          f"{WINDOW:.0f} s; Ready: {ready['reason']}: {message}")
    assert ready["reason"] == "ConnectionSecretUnreadable"
    assert f"{ns}/quay-credentials" in message and "403" in message
    assert 'cannot get resource "secrets"' in message  # the missing permission
    assert "get on secrets" in message  # the fix
    status = (env.get() or {})["status"]
    assert status["retry"]["attempts"] == 1
    assert [d["http"] for d in after] == [204] * len(after)
    # the add event, then the echoes of its writes (finalizer, status): each echo writes nothing
    assert seen <= 3 and len(after) == seen, [(d["event"], d["outcome"], d.get("writes")) for d in after]
    assert [d.get("writes") for d in after[1:]] == [0] * (len(after) - 1)
    assert quay.total_calls == 0
