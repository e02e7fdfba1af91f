"""Shared fixtures: the real control plane (session), a fresh namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.controlplane import ControlPlane, find_assets

# After every test, scan function logs, answers and statuses for credentials (issue 6); and
# derive the RBAC check from the API server's audit log (issue 15).
pytest_plugins = ("tests.hygiene", "tests.rbac_audit")


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver with the DockerToken CRD and the RBAC of knative/ installed."""
    with ControlPlane(assets=find_assets()) as cp:
        yield cp


@pytest.fixture(scope="session")
def admin_api(control_plane: ControlPlane) -> Any:
    return control_plane.api_client("admin")


@pytest.fixture
def namespace(admin_api: Any) -> str:
    """A namespace of its own for each test (no controller-manager runs, so none is ever reused)."""
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(admin_api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


@pytest.fixture(scope="session")
def function_proc(control_plane: ControlPlane) -> Iterator[Any]:
    """The function under functions-framework, as the reconciler ServiceAccount (knative/ RBAC)."""
    from tests.harness import FunctionProcess

    with FunctionProcess(control_plane.kubeconfigs["dockertoken-reconciler"]) as fn:
        yield fn


@pytest.fixture(scope="session")
def eventing_controller(control_plane: ControlPlane) -> Iterator[Any]:
    """Knative Eventing's ApiServerSource reconciler (tests/eventing_controller.py), stopped
    before the API server."""
    from tests.eventing_controller import EventingController

    with EventingController(control_plane) as ctl:
        yield ctl


@pytest.fixture(scope="session")
def adapter_pod(eventing_controller: Any, function_proc: Any) -> Any:
    """The ApiServerSource adapter as the controller generates it from knative/base, with the
    session's function as the Service's address (what Serving would publish)."""
    from tests.eventing_controller import AdapterPod, shipped_source

    with shipped_source(eventing_controller, function_proc.url) as shipped:
        deployment = shipped.deployment()
        assert deployment is not None
        return AdapterPod.of(deployment)


@pytest.fixture
def quay() -> Iterator[Any]:
    """A Quay simulator of the test's own: its token store and counters start empty."""
    from tests.quaysim import QuaySimulator

    with QuaySimulator() as sim:
        yield sim


@pytest.fixture
def env(control_plane: ControlPlane, namespace: str, quay: Any, function_proc: Any) -> Any:
    from tests.env import Env

    return Env(control_plane, namespace, quay, function_proc)
