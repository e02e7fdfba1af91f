"""A name is never a path (issue 18), without a cluster: the model refuses, before anything is read,
every spec field that becomes part of an API URL unless it is a Kubernetes name; the API client
quotes every path segment, refuses "/", ".", ".." and "", and refuses a reply about another object.
The same fields on the real API server: tests/test_trust_boundaries.py."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from function import decide, kube, steps
from function.errors import ConfigError, PermanentError
from function.kube import Kube
from function.model import DockerToken
from function.observe import observe
from tests.builders import spec_with

HOSTILE = ["..", ".", "%2e%2e", "a/b", "../../team-b/secrets/quay-admin", "%2e%2e%2fteam-b",
           "UPPER", "-dash", "x" * 254, "a\x00b", "a b"]
FIELDS = ["connSecretRef.name", "connSecretRef.namespace", "retSecretRef.name",
          "retSecretRef.namespace", "serviceAccounts[0]"]


def _object(field: str, value: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "team-a", "name": "dt", "uid": "u", "finalizers": []},
            "spec": spec_with(field, value)}


def _refusing_kube() -> tuple[Kube, list[str]]:
    """A Kube whose every request is recorded and answered 404."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(404, json={"message": "not found"})

    return Kube(httpx.Client(base_url="https://api", transport=httpx.MockTransport(handler))), seen


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", HOSTILE)
def test_every_url_field_with_a_path_is_refused_before_any_read(field: str, value: str) -> None:
    obj = _object(field, value)
    dt = DockerToken.from_object(obj)
    error = dt.name_error()
    assert isinstance(error, ConfigError)
    assert str(error).startswith(f"spec.{field}: not a"), str(error)
    if len(value) > 2:
        assert value not in str(error)  # never echoed (it may be long, or built to mislead)
    client, seen = _refusing_kube()
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    observed = observe(client, obj, verify=True, now=now)
    assert seen == []  # nothing read: no Secret, no Namespace, no ServiceAccount
    plan = decide.plan(observed)
    assert plan.failure is not None and plan.failure.reason == "InvalidConfiguration"
    assert plan.failure.message == str(error)
    assert not any(isinstance(s, steps.ObtainToken) for s in plan.steps)


@pytest.mark.parametrize("field", FIELDS)
def test_names_that_are_names_are_read(field: str) -> None:
    client, seen = _refusing_kube()
    name = "a-b1" if field.endswith("namespace") else "a-b.c1"
    observe(client, _object(field, name), verify=False,
            now=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
    assert seen  # read as usual


@pytest.mark.parametrize("segment", ["", ".", "..", "a/b", "../team-b"])
def test_the_api_client_refuses_a_segment_that_is_a_path(segment: str) -> None:
    client, seen = _refusing_kube()
    calls: list[Callable[[], object]] = [
             lambda: client.get_secret("team-a", segment), lambda: client.get_secret(segment, "x"),
             lambda: client.get_serviceaccount("team-a", segment), lambda: client.get_namespace(segment),
             lambda: client.get_dockertoken("team-a", segment),
             lambda: client.delete_secret("team-a", segment),
             lambda: client.patch_status("team-a", segment, {}),
             lambda: client.create_secret({"metadata": {"namespace": segment, "name": "x"}})]
    for call in calls:
        with pytest.raises(PermanentError, match="never contain '/'"):
            call()
    assert seen == []


def test_every_other_segment_is_quoted() -> None:
    client, seen = _refusing_kube()
    client.get_secret("team-a", "%2e%2e")
    client.get_serviceaccount("team-a", "a?b#c")
    assert seen == ["/api/v1/namespaces/team-a/secrets/%252e%252e",
                    "/api/v1/namespaces/team-a/serviceaccounts/a%3Fb%23c"]
    assert kube._seg("dockertoken-sample") == "dockertoken-sample"


@pytest.mark.parametrize("answer", [
    {"metadata": {"namespace": "team-b", "name": "quay-admin"}},
    {"metadata": {"namespace": "team-a", "name": "other"}},
    {"metadata": {}},
])
def test_a_reply_about_another_object_is_refused(answer: dict[str, Any]) -> None:
    """Whatever rewrote the path (a proxy, a normalising client), the object used is the one asked for."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    client = Kube(httpx.Client(base_url="https://api", transport=transport))
    with pytest.raises(PermanentError, match="another object"):
        client.get_secret("team-a", "quay-admin")
    with pytest.raises(PermanentError, match="another object"):
        client.get_serviceaccount("team-a", "quay-admin")
    right = {"metadata": {"namespace": "team-a", "name": "quay-admin"}}
    ok = Kube(httpx.Client(base_url="https://api", transport=httpx.MockTransport(
        lambda request: httpx.Response(200, json=right))))
    assert ok.get_secret("team-a", "quay-admin") == right


@pytest.mark.parametrize("value", ["../../team-b/quay-admin", "team-a/../x", "team-a/a/b", "/x",
                                   "team-a/", "Team-A/x", "team-a/%2e%2e"])
def test_the_connection_registration_annotation_is_never_a_path(value: str) -> None:
    """The in-use registration (protection.py) is an annotation anyone who edits the object can
    change: only namespace/name of Kubernetes names counts."""
    from function import protection

    obj = {"metadata": {"annotations": {protection.CONNECTION_ANNOTATION: value}}}
    assert protection.registered(obj) is None
    ok = {"metadata": {"annotations": {protection.CONNECTION_ANNOTATION: "team-a/quay-credentials"}}}
    assert protection.registered(ok) is not None
