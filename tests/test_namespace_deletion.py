"""Deleting a whole namespace never strands a token (issue 20).

The namespace controller deletes a namespace's objects in whatever order discovery gives it and
keeps deleting until nothing is left, waiting on finalizers; the API server meanwhile refuses new
objects (Events included) there. The test control plane has no controller manager, so the test
plays the controller: it marks the namespace Terminating, deletes every Secret and every
DockerToken (one order, then the other), and waits, never touching a finalizer. Events reach the
function through Knative's real ApiServerSource adapter, as in a cluster (the closed loop).

Done when: every DockerToken is gone within 60 s, Quay holds none of their tokens, no Secret is
left, and the function logged no error or warning for the Events the API server refused.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from function import protection
from tests.adapter_proc import running_adapter
from tests.checks import ApiRequests
from tests.controlplane import ControlPlane
from tests.env import Env, G, P, V, wait_for
from tests.harness import FunctionProcess
from tests.quaysim import QuaySimulator

DEADLINE = 60.0  # the figure: every DockerToken finalized within a minute
OBJECTS = 3


@pytest.fixture(scope="module")
def adapter(control_plane: ControlPlane, function_proc: FunctionProcess, adapter_pod: Any) -> Iterator[Path]:
    with running_adapter(control_plane, function_proc, adapter_pod) as log:
        yield log


def _namespace(core: Any, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name}})
    return name


def _names(items: Any) -> list[str]:
    return sorted(i["metadata"]["name"] if isinstance(i, dict) else i.metadata.name for i in items)


def _left(env: Env) -> tuple[list[str], list[str]]:
    """(DockerTokens, Secrets) still in the namespace."""
    dts = env.custom.list_namespaced_custom_object(G, V, env.ns, P)["items"]
    return _names(dts), _names(env.core.list_namespaced_secret(env.ns).items)


def _play_namespace_controller(env: Env, order: tuple[str, ...]) -> None:
    """Mark the namespace Terminating and delete its objects in ``order``, as its controller
    does (DeleteCollection per resource); the caller then waits, as the controller re-lists until
    the namespace is empty, never touching a finalizer."""
    env.core.delete_namespace(env.ns)
    phase = env.core.read_namespace(env.ns).status.phase
    assert phase == "Terminating", phase
    for kind in order:
        if kind == "secrets":
            env.core.delete_collection_namespaced_secret(env.ns)
        else:
            env.custom.delete_collection_namespaced_custom_object(G, V, env.ns, P)


def _wait_left(env: Env, dockertokens: list[str], secrets: list[str]) -> float:
    """Seconds until exactly these objects are left in the namespace (at most DEADLINE)."""
    started = time.monotonic()

    def left() -> bool:
        return _left(env) == (dockertokens, secrets)

    wait_for(left, timeout=DEADLINE, what=f"{env.ns} to hold only {dockertokens} {secrets}")
    return time.monotonic() - started


def _settled_ready(env: Env, names: list[str]) -> None:
    for name in names:
        def ready(name: str = name) -> bool:
            return env.ready(name).get("status") == "True"

        wait_for(ready, what=f"{env.ns}/{name} Ready")


@pytest.mark.parametrize("order", [("secrets", "dockertokens"), ("dockertokens", "secrets")],
                         ids=["secrets-first", "dockertokens-first"])
def test_deleting_a_namespace_finalizes_every_dockertoken_and_revokes_its_token(
        control_plane: ControlPlane, function_proc: FunctionProcess, adapter: Path,
        quay: QuaySimulator, order: tuple[str, ...]) -> None:
    core: Any = client.CoreV1Api(control_plane.api_client())
    doomed = Env(control_plane, _namespace(core, "doomed"), quay, function_proc)
    other = Env(control_plane, _namespace(core, "other"), quay, function_proc)
    # the connection Secret also serves a DockerToken of another namespace, with consent
    doomed.conn_secret()
    doomed.core.patch_namespaced_secret("quay-credentials", doomed.ns, {"metadata": {"annotations": {
        "quay.herve4m.github.io/allowed-namespaces": other.ns}}})
    doomed.core.create_namespaced_service_account(doomed.ns, {"metadata": {"name": "builder"}})
    names = [f"dt-{i}" for i in range(OBJECTS)]
    for name in names:
        doomed.dockertoken(name, title=name, ret=f"{name}-pull", serviceAccounts=["builder"])
    other.dockertoken("neighbour", title="neighbour", ret="neighbour-pull",
                      connSecretRef={"name": "quay-credentials", "namespace": doomed.ns})
    _settled_ready(doomed, names)
    _settled_ready(other, ["neighbour"])
    assert len(quay.tokens()) == OBJECTS + 1
    conn = doomed.secret("quay-credentials")
    assert conn is not None and conn["metadata"]["finalizers"] == [protection.IN_USE_FINALIZER]
    log_from = len(function_proc.logs())
    requests = ApiRequests(doomed)

    # 1. the namespace goes; the Secret the neighbour still uses is kept for it
    _play_namespace_controller(doomed, order)
    emptied = _wait_left(doomed, [], ["quay-credentials"])
    assert [t["title"] for t in quay.tokens()] == ["neighbour"]
    kept = doomed.secret("quay-credentials")
    assert kept is not None and kept["metadata"].get("deletionTimestamp")

    # 2. the neighbour keeps working and is told; deleting it lets the Secret and the namespace go
    assert other.resync("neighbour").status_code == 204
    assert other.ready("neighbour")["status"] == "True"
    conds = {c["type"]: c for c in (other.get("neighbour") or {})["status"]["conditions"]}
    assert conds[protection.DELETING]["status"] == "True"
    other.delete("neighbour")
    neighbour = _wait_left(doomed, [], [])
    assert other.get("neighbour") is None
    print(f"\n{'/'.join(order)} first: {OBJECTS} DockerTokens finalized and their namespace emptied "
          f"but for the shared Secret in {emptied:.1f} s; the neighbour and the Secret in {neighbour:.1f} s")
    assert quay.tokens() == [] and other.secret("neighbour-pull") is None

    # 3. Events refused in the terminating namespace were skipped quietly
    assert requests.count("create", "events", code=403) >= OBJECTS  # TokenRevoked, refused
    lines = [json.loads(line) for line in function_proc.logs()[log_from:].splitlines()
             if line.startswith("{")]
    noisy = [line for line in lines if line.get("level") in ("error", "warning", "critical")]
    assert noisy == [], noisy
    assert all(line.get("http") == 204 for line in lines if line.get("namespace") == doomed.ns), [
        (line.get("event"), line.get("outcome"), line.get("http")) for line in lines
        if line.get("namespace") == doomed.ns]


def test_namespace_with_its_own_connection_secret_empties_within_a_minute(
        control_plane: ControlPlane, function_proc: FunctionProcess, adapter: Path,
        quay: QuaySimulator) -> None:
    """No neighbour: the whole namespace empties (the namespace controller could then finish)."""
    core: Any = client.CoreV1Api(control_plane.api_client())
    env = Env(control_plane, _namespace(core, "alone"), quay, function_proc)
    env.conn_secret()
    names = [f"dt-{i}" for i in range(OBJECTS)]
    for name in names:
        env.dockertoken(name, title=name, ret=f"{name}-pull")
    _settled_ready(env, names)
    _play_namespace_controller(env, ("secrets", "dockertokens"))
    seconds = _wait_left(env, [], [])
    print(f"\nsecrets first, no neighbour: namespace emptied in {seconds:.1f} s")
    assert quay.tokens() == []
