"""function.kevents (pure) and the kube.py calls that send its results, on the real API server.

The pure half: Event bodies (``build_event``) and ServiceAccount ``imagePullSecrets`` edits
(``pullsecret.pull_secret_edit``). The API-server half, as admin: a ServiceAccount is read, patched with a
resourceVersion precondition and left with its other entries; an Event built here is accepted
by the API server's validation and read back through both Event APIs.
"""

from __future__ import annotations

# mypy: disable-error-code="arg-type,union-attr,operator,index,assignment,misc"
# (kubernetes 37's models type every field Optional and every body as a model class; these tests
# pass plain dicts and read fields the API server always fills in)
import datetime
import re
from typing import Any

import pytest

from function.errors import Conflict
from function.kevents import (
    NOTE_MAX_BYTES,
    WARNING,
    build_event,
    micro_time,
)
from function.kube import Kube, http_client, load_config
from function.pullsecret import pull_secret_edit
from tests.controlplane import ControlPlane

NOW = datetime.datetime(2026, 11, 26, 17, 22, 43, 123456, tzinfo=datetime.UTC)
UID = "0b6f8a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
CODE = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" * 4
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def event(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"dt_namespace": "team-a", "dt_name": "pull", "dt_uid": UID,
                            "type_": "Normal", "reason": "TokenRotated",
                            "note": "replaced token 1 by token 2", "now": NOW}
    args.update(overrides)
    return build_event(**args)


# -- build_event -------------------------------------------------------------------------------

def test_event_body() -> None:
    body = event(reporting_instance="dockertoken-reconciler-00001-deployment-abc")
    assert body == {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": body["metadata"]["name"], "namespace": "team-a"},
        "eventTime": "2026-11-26T17:22:43.123456Z",
        "type": "Normal",
        "reason": "TokenRotated",
        "action": "RotateToken",
        "note": "replaced token 1 by token 2",
        "regarding": {"apiVersion": "quay.herve4m.github.io/v1alpha1", "kind": "DockerToken",
                      "namespace": "team-a", "name": "pull", "uid": UID},
        "reportingController": "quay-dockertoken",
        "reportingInstance": "dockertoken-reconciler-00001-deployment-abc",
    }
    assert re.fullmatch(r"pull\.[0-9a-f]+", body["metadata"]["name"])


@pytest.mark.parametrize(("reason", "action"), [
    pytest.param("TokenCreated", "CreateToken", id="created"),
    pytest.param("TokenAdopted", "AdoptToken", id="adopted"),
    pytest.param("TokenRotated", "RotateToken", id="rotated"),
    pytest.param("TokenRevoked", "RevokeToken", id="revoked"),
    pytest.param("SecretRestored", "RestoreSecret", id="restored"),
    pytest.param("QuayAuthenticationFailed", "Reconcile", id="ready-false-reason"),
])
def test_actions(reason: str, action: str) -> None:
    assert event(reason=reason)["action"] == action
    assert event(reason=reason, action="Custom")["action"] == "Custom"


@pytest.mark.parametrize(("note", "expected"), [
    pytest.param("short", "short", id="short"),
    pytest.param("x" * NOTE_MAX_BYTES, "x" * NOTE_MAX_BYTES, id="exactly-1KiB"),
    pytest.param("x" * (NOTE_MAX_BYTES + 1), "x" * (NOTE_MAX_BYTES - 3) + "...", id="1KiB-plus-1"),
    pytest.param("é" * 600, "é" * 510 + "...", id="multibyte-never-split"),
    pytest.param(f"the code {CODE} leaked", "the code *** leaked", id="code-masked"),
])
def test_note(note: str, expected: str) -> None:
    body = event(note=note)
    assert body["note"] == expected
    assert len(body["note"].encode()) <= NOTE_MAX_BYTES


def test_names() -> None:
    first = event()["metadata"]["name"]
    assert event()["metadata"]["name"] == first  # the same report at the same instant
    others = {event(now=NOW + datetime.timedelta(microseconds=1))["metadata"]["name"],
              event(reason="TokenCreated")["metadata"]["name"],
              event(note="other")["metadata"]["name"],
              event(dt_uid="other-uid")["metadata"]["name"]}
    assert first not in others and len(others) == 4
    long_name = event(dt_name="a" * 240 + "-b.c" + "d" * 9)["metadata"]["name"]
    assert len(long_name) <= 253 and DNS_SUBDOMAIN.match(long_name)
    cut_at_dash = event(dt_name="a" * 226 + "-" * 30)["metadata"]["name"]
    assert DNS_SUBDOMAIN.match(cut_at_dash), cut_at_dash


@pytest.mark.parametrize("overrides", [
    pytest.param({"type_": "Error"}, id="bad-type"),
    pytest.param({"reason": ""}, id="no-reason"),
    pytest.param({"dt_name": ""}, id="no-name"),
])
def test_refused_arguments(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        event(**overrides)


def test_times_and_limits() -> None:
    paris = datetime.timezone(datetime.timedelta(hours=1))
    assert event(now=NOW.astimezone(paris))["eventTime"] == micro_time(NOW)
    body = event(reporting_instance="i" * 300, reason="R" * 300)
    assert len(body["reportingInstance"]) == len(body["reason"]) == 128


# -- pull_secret_edit ---------------------------------------------------------------------------

OTHER = {"name": "other"}


@pytest.mark.parametrize(("current", "attach", "expected"), [
    pytest.param(None, True, [{"name": "pull"}], id="attach-to-none"),
    pytest.param([], True, [{"name": "pull"}], id="attach-to-empty"),
    pytest.param([OTHER], True, [OTHER, {"name": "pull"}], id="attach-after-others"),
    pytest.param([{"name": "pull"}, OTHER], True, None, id="already-attached"),
    pytest.param([{"name": "pull"}], False, [], id="detach-last"),
    pytest.param([OTHER, {"name": "pull"}, {"name": "z"}], False, [OTHER, {"name": "z"}],
                 id="detach-keeps-order"),
    pytest.param([{"name": "pull"}, OTHER, {"name": "pull"}], False, [OTHER],
                 id="detach-duplicates"),
    pytest.param([OTHER], False, None, id="not-attached"),
    pytest.param(None, False, None, id="detach-from-none"),
    pytest.param([{}, {"name": ""}, "odd", OTHER], True,
                 [{}, {"name": ""}, "odd", OTHER, {"name": "pull"}], id="odd-entries-kept"),
    pytest.param([{}, "odd", {"name": "pull"}], False, [{}, "odd"], id="odd-entries-kept-detach"),
    pytest.param([{"name": "Pull"}], True, [{"name": "Pull"}, {"name": "pull"}],
                 id="names-are-exact"),
])
def test_pull_secret_edit(current: list[Any] | None, attach: bool,
                          expected: list[Any] | None) -> None:
    before = None if current is None else list(current)
    assert pull_secret_edit(current, "pull", attach) == expected
    assert current == before  # the input is not modified


def test_pull_secret_edit_needs_a_name() -> None:
    with pytest.raises(ValueError):
        pull_secret_edit([], "", True)


# -- on the real API server -------------------------------------------------------------------

@pytest.fixture
def kube(control_plane: ControlPlane) -> Kube:
    return Kube(http_client(load_config(str(control_plane.kubeconfigs["admin"]))))


def test_serviceaccount_get_and_patch(kube: Kube, admin_api: Any, namespace: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(admin_api)
    core.create_namespaced_service_account(namespace, {
        "metadata": {"name": "builder"}, "imagePullSecrets": [OTHER]})
    assert kube.get_serviceaccount(namespace, "missing") is None
    sa = kube.get_serviceaccount(namespace, "builder")
    assert sa is not None and sa["imagePullSecrets"] == [OTHER]
    stale = sa["metadata"]["resourceVersion"]

    attached = pull_secret_edit(sa.get("imagePullSecrets"), "pull", True)
    assert attached is not None
    patched = kube.patch_serviceaccount_pull_secrets(namespace, "builder", attached, stale)
    assert patched is not None and patched["imagePullSecrets"] == [OTHER, {"name": "pull"}]
    assert kube.writes == 1

    # Someone else edits the list meanwhile: the stale precondition is refused, nothing lost.
    core.patch_namespaced_service_account("builder", namespace, {
        "imagePullSecrets": [OTHER, {"name": "pull"}, {"name": "theirs"}]})
    with pytest.raises(Conflict):
        kube.patch_serviceaccount_pull_secrets(namespace, "builder", [OTHER], stale)
    fresh = kube.get_serviceaccount(namespace, "builder")
    assert fresh is not None
    detached = pull_secret_edit(fresh["imagePullSecrets"], "pull", False)
    assert detached == [OTHER, {"name": "theirs"}]
    done = kube.patch_serviceaccount_pull_secrets(namespace, "builder", detached,
                                                  fresh["metadata"]["resourceVersion"])
    assert done is not None and done["imagePullSecrets"] == [OTHER, {"name": "theirs"}]
    assert pull_secret_edit(done["imagePullSecrets"], "pull", False) is None  # no more writes

    emptied = kube.patch_serviceaccount_pull_secrets(namespace, "builder", [],
                                                     done["metadata"]["resourceVersion"])
    assert emptied is not None and not emptied.get("imagePullSecrets")
    assert kube.patch_serviceaccount_pull_secrets(namespace, "missing", [OTHER], "1") is None
    assert kube.writes == 5


def test_event_is_accepted_and_read_back(kube: Kube, admin_api: Any, namespace: str) -> None:
    from kubernetes import client

    dt = client.CustomObjectsApi(admin_api).create_namespaced_custom_object(
        "quay.herve4m.github.io", "v1alpha1", namespace, "dockertokens",
        {"apiVersion": "quay.herve4m.github.io/v1alpha1", "kind": "DockerToken",
         "metadata": {"name": "pull"},
         "spec": {"connSecretRef": {"name": "quay-credentials"}, "name": "mytoken"}})
    uid = dt["metadata"]["uid"]
    now = datetime.datetime.now(datetime.UTC)
    body = build_event(namespace, "pull", uid, WARNING, "QuayAuthenticationFailed",
                       f"Quay refused the OAuth token {'é' * 600} {CODE}", now,
                       reporting_instance="pod-1")
    created = kube.create_event(body)
    assert created is not None and kube.writes == 1
    name = body["metadata"]["name"]

    read = client.EventsV1Api(admin_api).read_namespaced_event(name, namespace)
    assert (read.type, read.reason, read.action) == ("Warning", "QuayAuthenticationFailed",
                                                     "Reconcile")
    assert read.note == body["note"] and len(read.note.encode()) <= NOTE_MAX_BYTES
    assert CODE not in read.note
    assert (read.regarding.kind, read.regarding.name, read.regarding.uid) == ("DockerToken",
                                                                              "pull", uid)
    assert (read.reporting_controller, read.reporting_instance) == ("quay-dockertoken", "pod-1")
    # What `kubectl describe dockertoken pull` lists: the core/v1 view of the same Event.
    (core,) = client.CoreV1Api(admin_api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.uid={uid}").items
    assert (core.reason, core.type, core.involved_object.name) == ("QuayAuthenticationFailed",
                                                                   "Warning", "pull")

    assert kube.create_event(body) is None  # the same report again: already there
    gone = build_event("no-such-namespace", "pull", uid, "Normal", "TokenCreated", "x", now)
    assert kube.create_event(gone) is None
    assert kube.writes == 3
