"""Knative Eventing's real controller reconciling the ApiServerSource of knative/base, on the test
control plane.

The controller is eventing's own ApiServerSource reconciler at the release the adapter comes from
(v0.49.2 = knative-v1.22.2; ``tests/adapter/controller``, built by ``scripts/build-controlplane``),
run as a plain process with the admin identity (in a cluster, eventing-controller's ServiceAccount
holds rights as broad). It gets what a Knative install gives it: the ``knative-eventing``
namespace, the ApiServerSource CRD, Serving's Service CRD (``tests/data/knative-schemas``) and
Eventing's ConfigMaps ``config-features``, ``config-logging`` and ``config-observability``
(``tests/data/knative-eventing-config``). Nothing else of Knative runs here: no Serving controller
publishes the Service's address and no kubelet runs the adapter's pod, so ``shipped_source``
writes those two statuses itself, and says so.

Every namespace added or removed makes the controller reconcile every ApiServerSource again, with
three SubjectAccessReviews per namespace: a source is kept only while a test needs it.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.controlplane import ROOT, ControlPlane

DATA = ROOT / "tests" / "data"
SYSTEM_NAMESPACE = "knative-eventing"
CRDS = (DATA / "knative-schemas" / "apiserversource.yaml", DATA / "knative-schemas" / "service.yaml")
CONFIGMAPS = tuple(sorted((DATA / "knative-eventing-config").glob("*.yaml")))
# The adapter image eventing's own controller Deployment names (config/core/deployments/controller.yaml);
# no pod is run from it here.
ADAPTER_IMAGE = "ko://knative.dev/eventing/cmd/apiserver_receive_adapter"
SOURCES = ("sources.knative.dev", "v1", "apiserversources")
SERVICES = ("serving.knative.dev", "v1", "services")


def knative_build(overlay: str = "base") -> list[dict[str, Any]]:
    """The manifests exactly as shipped: ``kubectl kustomize knative/<overlay>``."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed: the shipped manifests are built with `kubectl kustomize`"
    proc = subprocess.run([kubectl, "kustomize", str(ROOT / "knative" / overlay)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"kubectl kustomize knative/{overlay} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def conditions(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Status conditions by type."""
    return {c["type"]: c for c in (((obj or {}).get("status") or {}).get("conditions") or [])}


def describe(obj: dict[str, Any] | None) -> str:
    """One line per condition, as ``kubectl describe`` lists them."""
    rows = [f"{t}={c.get('status')} {c.get('reason', '')}: {c.get('message', '')}".rstrip(": ")
            for t, c in sorted(conditions(obj).items())]
    return "\n".join(rows) or "(no conditions)"


class EventingController:
    """The controller process; ``with EventingController(cp) as ctl`` installs what it needs first."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.log = Path(tempfile.mkstemp(prefix="qdt-eventing-controller-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> EventingController:
        _install_knative(self.cp)
        binary = subprocess.run([str(ROOT / "scripts" / "build-controlplane"), "--controller"],
                                check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
        env = {
            "PATH": os.environ.get("PATH", ""),
            "KUBECONFIG": str(self.cp.kubeconfigs["admin"]),
            # What eventing's controller Deployment sets (config/core/deployments/controller.yaml).
            "SYSTEM_NAMESPACE": SYSTEM_NAMESPACE,
            "POD_NAME": "eventing-controller",
            "CONFIG_LOGGING_NAME": "config-logging",
            "CONFIG_OBSERVABILITY_NAME": "config-observability",
            "METRICS_DOMAIN": "knative.dev/eventing",
            "APISERVER_RA_IMAGE": ADAPTER_IMAGE,
            # pprof listens on every interface at PROFILING_PORT (8008 by default): take any free port.
            "PROFILING_PORT": "0",
            # The access check asks 3 SubjectAccessReviews per namespace, and the suite leaves
            # hundreds of namespaces (one per test): at the client's default rate for one
            # reconciler (5 per second) one reconcile would take minutes.
            "KUBE_API_QPS": "1000",
            "KUBE_API_BURST": "1000",
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([binary, "--disable-ha"], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            self._wait_for_log('"Starting controllers..."', timeout=60)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def _wait_for_log(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log.read_text(errors="replace"):
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the eventing controller exited with {self.proc.returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the eventing controller did not start in {timeout} s:\n{self.logs()}")
            time.sleep(0.1)

    def wait(self, what: str, check: Callable[[], Any], show: Callable[[], str], timeout: float = 30) -> Any:
        """``check()`` until it is truthy; on timeout the error shows ``show()`` and the controller's log."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                state = "exited" if self.proc.poll() is not None else f"still not, after {timeout} s"
                raise AssertionError(f"waiting for {what} ({state}):\n{show()}\n"
                                     f"--- eventing controller log (tail) ---\n{self.logs(15)}")
            time.sleep(0.1)


def _install_knative(cp: ControlPlane) -> None:
    """What a Knative install puts in the cluster that the ApiServerSource reconciler reads."""
    admin = cp.api_client()
    core: Any = client.CoreV1Api(admin)
    ext: Any = client.ApiextensionsV1Api(admin)
    _create(lambda: core.create_namespace({"metadata": {"name": SYSTEM_NAMESPACE}}))
    names = []
    for path in CRDS:
        crd = yaml.safe_load(path.read_text())
        names.append(crd["metadata"]["name"])
        _create(functools.partial(ext.create_custom_resource_definition, crd))
    for path in CONFIGMAPS:
        cm = yaml.safe_load(path.read_text())
        _create(functools.partial(core.create_namespaced_config_map, SYSTEM_NAMESPACE, cm))
    for name in names:
        deadline = time.monotonic() + 30
        while not any(c.type == "Established" and c.status == "True"
                      for c in (ext.read_custom_resource_definition(name).status.conditions or [])):
            assert time.monotonic() < deadline, f"CRD {name} not Established"
            time.sleep(0.1)


def _create(call: Callable[[], object]) -> None:
    try:
        call()
    except ApiException as exc:
        if exc.status != 409:
            raise


# -- the shipped ApiServerSource, reconciled -----------------------------------------------------

@dataclass(frozen=True)
class AdapterPod:
    """The adapter's container as the generated Deployment describes it, resolved as a kubelet would."""

    service_account: str
    env: dict[str, str]

    @classmethod
    def of(cls, deployment: dict[str, Any]) -> AdapterPod:
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        env: dict[str, str] = {}
        for var in container.get("env") or []:
            field = ((var.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
            if "value" in var:
                env[var["name"]] = var["value"]
            elif field == "metadata.namespace":  # the downward API: the pod's namespace
                env[var["name"]] = deployment["metadata"]["namespace"]
            else:
                raise AssertionError(f"adapter env {var}: resolve it here as a kubelet would")
        return cls(spec.get("serviceAccountName") or "default", env)

    def source_config(self) -> dict[str, Any]:
        return dict(json.loads(self.env["K_SOURCE_CONFIG"]))


@dataclass
class ShippedSource:
    """knative/base's ApiServerSource in the cluster while its ``with`` block runs."""

    ctl: EventingController
    objects: list[dict[str, Any]]   # the whole build
    source: dict[str, Any]          # the ApiServerSource, as shipped
    before_address: dict[str, Any]  # it, reconciled while the Service had no address

    @property
    def namespace(self) -> str:
        return str(self.source["metadata"]["namespace"])

    def current(self) -> dict[str, Any] | None:
        return get_source(self.ctl.cp, self.namespace, self.source["metadata"]["name"])

    def deployment(self) -> dict[str, Any] | None:
        """The adapter Deployment the controller made for the source (by owner), if any."""
        return adapter_deployment(self.ctl.cp, self.current())


def get_source(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any] | None:
    custom: Any = client.CustomObjectsApi(cp.api_client())
    try:
        return dict(custom.get_namespaced_custom_object(*SOURCES[:2], namespace, SOURCES[2], name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def adapter_deployment(cp: ControlPlane, source: dict[str, Any] | None) -> dict[str, Any] | None:
    if not source:
        return None
    api: Any = client.AppsV1Api(cp.api_client())
    for item in api.list_namespaced_deployment(source["metadata"]["namespace"]).items:
        if any(ref.uid == source["metadata"]["uid"] and ref.controller
               for ref in item.metadata.owner_references or []):
            return dict(api.api_client.sanitize_for_serialization(item))
    return None


def reconciled(source: dict[str, Any] | None, condition: str) -> dict[str, Any] | None:
    """The condition, once the controller has reconciled the source's current generation."""
    status = (source or {}).get("status") or {}
    if source and status.get("observedGeneration") == source["metadata"]["generation"]:
        return conditions(source).get(condition)
    return None


def kubectl_apply(cp: ControlPlane, objs: list[dict[str, Any]]) -> None:
    """``kubectl apply --server-side`` as admin: the API server's strict field validation applies."""
    kubectl = shutil.which("kubectl")
    assert kubectl
    proc = subprocess.run(
        [kubectl, "--kubeconfig", str(cp.kubeconfigs["admin"]), "apply", "--server-side",
         "--force-conflicts", "--field-manager", "kubectl", "-f", "-"],
        input=yaml.safe_dump_all(objs), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"kubectl apply failed:\n{proc.stderr}"


@contextmanager
def shipped_source(ctl: EventingController, sink_url: str) -> Iterator[ShippedSource]:
    """Apply knative/base's ApiServerSource, its Knative Service and the RBAC, as ``kubectl apply -k``
    would, and see them through the real controller to Ready. Two statuses are written by this
    function, as nothing here can write them: Serving's (the Service's address, set to
    ``sink_url``: where the function listens) and the kubelet's (the adapter Deployment Available). On exit the
    source and what was made for it are deleted again."""
    cp = ctl.cp
    objects = knative_build()
    (source,) = [o for o in objects if o["kind"] == "ApiServerSource"]
    # the build's Knative Services: the source's sink should be one of them
    services = [o for o in objects if o["kind"] == "Service" and o["apiVersion"] == "/".join(SERVICES[:2])]
    rbac = [o for o in objects if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
    ns, name = source["metadata"]["namespace"], source["metadata"]["name"]
    custom: Any = client.CustomObjectsApi(cp.api_client())
    kubectl_apply(cp, [*rbac, *services, source])
    try:
        state = ShippedSource(ctl, objects, source, {})
        ctl.wait("the controller to resolve the sink", lambda: reconciled(state.current(), "SinkProvided"),
                 lambda: describe(state.current()))
        state.before_address = state.current() or {}
        # Serving's part: the Services' address (what its controller publishes once they are Ready).
        for service in services:
            custom.patch_namespaced_custom_object_status(
                *SERVICES[:2], service["metadata"]["namespace"], SERVICES[2], service["metadata"]["name"],
                {"status": {"address": {"url": sink_url}}})
        deployment = ctl.wait("the adapter Deployment", state.deployment, lambda: describe(state.current()))
        mark_available(cp, deployment)  # the kubelet's part
        ctl.wait("the ApiServerSource to be Ready",
                 lambda: (reconciled(state.current(), "Ready") or {}).get("status") == "True",
                 lambda: describe(state.current()))
        yield state
    finally:
        delete_source(ctl, ns, name)
        for service in services:
            _delete(functools.partial(custom.delete_namespaced_custom_object, *SERVICES[:2],
                                      service["metadata"]["namespace"], SERVICES[2], service["metadata"]["name"]))


def mark_available(cp: ControlPlane, deployment: dict[str, Any]) -> None:
    """What the Deployment controller writes once its one pod is ready."""
    meta = deployment["metadata"]
    client.AppsV1Api(cp.api_client()).patch_namespaced_deployment_status(meta["name"], meta["namespace"], {
        "status": {"observedGeneration": meta["generation"], "replicas": 1, "updatedReplicas": 1,
                   "readyReplicas": 1, "availableReplicas": 1,
                   "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                                   "message": "Deployment has minimum availability."}]}})


def delete_source(ctl: EventingController, namespace: str, name: str) -> None:
    """Delete a source; its Deployment too (no garbage collector runs here)."""
    cp = ctl.cp
    deployment = adapter_deployment(cp, get_source(cp, namespace, name))
    custom = client.CustomObjectsApi(cp.api_client())
    _delete(lambda: custom.delete_namespaced_custom_object(*SOURCES[:2], namespace, SOURCES[2], name))
    # the controller's finalizer goes first
    ctl.wait(f"ApiServerSource {name} to go", lambda: get_source(cp, namespace, name) is None,
             lambda: json.dumps((get_source(cp, namespace, name) or {}).get("metadata", {}).get("finalizers")))
    if deployment:
        _delete(lambda: client.AppsV1Api(cp.api_client()).delete_namespaced_deployment(
            deployment["metadata"]["name"], namespace))


def _delete(call: Callable[[], object]) -> None:
    try:
        call()
    except ApiException as exc:
        if exc.status != 404:
            raise


def generated_adapter_pod(cp: ControlPlane, sink_url: str) -> AdapterPod:
    """The adapter as the real controller generates it from knative/base, sending to ``sink_url``
    (for callers without the test session's fixtures, such as the benchmarks)."""
    with EventingController(cp) as ctl, shipped_source(ctl, sink_url) as shipped:
        deployment = shipped.deployment()
        assert deployment
        return AdapterPod.of(deployment)
