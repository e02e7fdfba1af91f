"""Knative's real ApiServerSource receive adapter, watching every DockerToken and feeding the
function, run as the Deployment Knative's real controller made from knative/base's ApiServerSource
(``tests/eventing_controller.py``): its ServiceAccount and its environment (Reference mode, one
cluster-wide watch, the Service's address as sink), with serial delivery and its own retries of
404/413/425/429/502/503/504.

Used by tests/test_knative_e2e.py and tests/test_convergence.py (module fixtures: while it runs,
every DockerToken change of the cluster reaches the shared function process).
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.controlplane import ROOT, ControlPlane
from tests.env import wait_for
from tests.eventing_controller import AdapterPod
from tests.harness import FunctionProcess

SENTINEL_NAMESPACE = "adapter-sentinel"


@contextmanager
def running_adapter(cp: ControlPlane, fn: FunctionProcess, pod: AdapterPod) -> Iterator[Path]:
    """Start the adapter as ``pod`` says (its identity, its env; the sink must be ``fn``); yields
    its log once it delivers."""
    binary = subprocess.run([str(ROOT / "scripts" / "build-controlplane"), "--adapter"], check=True,
                            stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
    assert pod.service_account in cp.kubeconfigs, f"no identity for ServiceAccount {pod.service_account}"
    assert pod.env.get("K_SINK", "").rstrip("/") == fn.url, f"the adapter sends to {pod.env.get('K_SINK')}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "KUBECONFIG": str(cp.kubeconfigs[pod.service_account]),
        **pod.env,
    }
    log = Path(tempfile.mkstemp(prefix="qdt-adapter-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "--disable-ha"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_watching(cp, fn, proc, log)
        yield log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _wait_until_watching(cp: ControlPlane, fn: FunctionProcess, proc: subprocess.Popen[bytes],
                         log: Path) -> None:
    """Objects that exist when the adapter lists produce no event, so prove the watch is live: a
    sentinel created now must reach the function."""
    custom = client.CustomObjectsApi(cp.api_client())
    try:
        core: Any = client.CoreV1Api(cp.api_client())
        core.create_namespace({"metadata": {"name": SENTINEL_NAMESPACE}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    prefix = f"sentinel-{uuid.uuid4().hex[:10]}"  # unique across adapters and function processes
    for attempt in range(30):
        assert proc.poll() is None, log.read_text()
        name = f"{prefix}-{attempt}"
        custom.create_namespaced_custom_object(
            "quay.herve4m.github.io", "v1alpha1", SENTINEL_NAMESPACE, "dockertokens",
            {"apiVersion": "quay.herve4m.github.io/v1alpha1", "kind": "DockerToken",
             "metadata": {"name": name}, "spec": {"connSecretRef": {"name": "none"}, "name": "x",
                                                  "preserveInQuayOnDeletion": True}})
        try:
            wait_for(functools.partial(_delivered, fn, name), timeout=1, what="sentinel")
            return
        except AssertionError:
            continue
    raise AssertionError(f"the adapter never delivered an event:\n{log.read_text()[-3000:]}")


def _delivered(fn: FunctionProcess, name: str) -> bool:
    return f'"name": "{name}"' in fn.logs()
