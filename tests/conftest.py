"""Shared fixtures: the real control plane (session), a fresh namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.controlplane import ControlPlane, find_assets


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
    client.CoreV1Api(admin_api).create_namespace({"metadata": {"name": name}})
    return name
