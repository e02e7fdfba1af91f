"""The deployment's moving parts on the real control plane, each as its own identity from knative/:
Knative's real ApiServerSource receive adapter, run as Knative's real controller configures it
from knative/base (tests/test_apiserversource.py), feeding the function, and the resync command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.adapter_proc import running_adapter
from tests.controlplane import ROOT, ControlPlane
from tests.env import Env, wait_for
from tests.eventing_controller import AdapterPod
from tests.harness import FunctionProcess


@pytest.fixture(scope="module")
def adapter(control_plane: ControlPlane, function_proc: FunctionProcess, adapter_pod: AdapterPod) -> Iterator[Path]:
    with running_adapter(control_plane, function_proc, adapter_pod) as log:
        yield log


def test_real_apiserversource_adapter_drives_the_whole_lifecycle(env: Env, adapter: Path) -> None:
    """No event is posted by the test: every change reaches the function through the adapter."""
    env.conn_secret()
    env.dockertoken()
    data = wait_for(lambda: env.secret() and env.secret_data(), what="return Secret")
    assert data["name"] == "mytoken" and data["uuid"] == env.tokens("mytoken")[0]["uuid"]
    wait_for(lambda: env.ready().get("status") == "True", what="Ready")

    env.patch_spec(name="renamed")
    wait_for(lambda: env.secret_data().get("name") == "renamed", what="Secret to follow the rename")
    wait_for(lambda: env.tokens("mytoken") == [], what="old token revoked")
    assert len(env.tokens("renamed")) == 1

    env.delete()
    wait_for(lambda: env.get() is None, what="DockerToken to be finalized")
    assert env.secret() is None
    assert env.tokens() == []
    seen = {(line["event"], line["outcome"])
            for line in _log_lines(env.fn) if line.get("namespace") == env.ns}
    assert ("dev.knative.apiserver.ref.add", "ready") in seen
    assert ("dev.knative.apiserver.ref.update", "finalized") in seen


def _log_lines(fn: FunctionProcess) -> list[dict[str, Any]]:
    out = []
    for line in fn.logs().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _resync(cp: ControlPlane, fn: FunctionProcess, namespace: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "function.resync", "--sink", fn.url, "--namespace", namespace],
        env={**os.environ, "KUBECONFIG": str(cp.kubeconfigs["dockertoken-resync"])},
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_resync_command_restores_a_deleted_return_secret(env: Env) -> None:
    env.conn_secret()
    for name in ("a", "b", "c"):
        env.dockertoken(name, title=f"tok-{name}", ret=f"{name}-pull")
    code, summary = _resync(env.cp, env.fn, env.ns)  # also brings objects that never had an event
    assert (code, summary["listed"], summary["sent"], summary["failed"]) == (0, 3, 3, 0)
    first = env.secret_data("b-pull")
    env.core.delete_namespaced_secret("b-pull", env.ns)
    calls = env.quay_calls()
    code, summary = _resync(env.cp, env.fn, env.ns)
    assert (code, summary["sent"], summary["failed"]) == (0, 3, 0)
    assert env.secret_data("b-pull") == first
    # one list for the connection (the cache), one GET for the lost code: never a new token
    assert env.quay_calls() - calls <= 2 and len(env.tokens()) == 3


def test_resync_identity_can_only_list_dockertokens(control_plane: ControlPlane, namespace: str) -> None:
    api = control_plane.api_client("dockertoken-resync")
    custom = client.CustomObjectsApi(api)
    assert custom.list_cluster_custom_object("quay.herve4m.github.io", "v1alpha1", "dockertokens")
    calls: list[Callable[[], object]] = [
        lambda: client.CoreV1Api(api).read_namespaced_secret("x", namespace),
        lambda: custom.get_namespaced_custom_object(
            "quay.herve4m.github.io", "v1alpha1", namespace, "dockertokens", "x")]
    for call in calls:
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403


def test_resync_reports_failed_deliveries(env: Env) -> None:
    env.conn_secret()
    env.dockertoken()
    env.quay.inject("*", statuses=[503] * 20)
    code, summary = _resync(env.cp, env.fn, env.ns)
    assert code == 1 and summary["failed"] == 1
    env.quay.clear_faults()
    # the failure is recorded with its retry time: until then a resync reports it, free of charge
    calls = env.quay_calls()
    assert _resync(env.cp, env.fn, env.ns)[0] == 1 and env.quay_calls() == calls
    env.expire_backoff()
    assert _resync(env.cp, env.fn, env.ns)[0] == 0
