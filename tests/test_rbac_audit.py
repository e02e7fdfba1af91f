"""knative/base/rbac.yaml grants the components what they used in this run, and nothing more.

Derived from the API server's audit log (see ``tests/rbac_audit.py``); this module runs last.
The first check holds on any run; the second only after the whole suite, since a partial run
leaves code paths out. The tests after them feed the derivation hand-made audit events.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests import rbac_audit
from tests.controlplane import ControlPlane


def _compare(control_plane: ControlPlane) -> tuple[dict[rbac_audit.Right, rbac_audit.Use], set[rbac_audit.Right]]:
    used = rbac_audit.used_rights(control_plane.audit_events())
    granted = rbac_audit.granted_rights() | rbac_audit.KNATIVE_GRANTS
    rbac_audit.RUN.table = rbac_audit.table(used, granted)
    return used, granted


def test_every_right_the_components_used_is_granted(control_plane: ControlPlane) -> None:
    used, granted = _compare(control_plane)
    if not used:
        pytest.skip("no component made a request in this run (run the tests that start them)")
    problems = rbac_audit.used_but_not_granted(used, granted)
    assert not problems, "\n".join(problems) + "\n" + rbac_audit.RUN.table


def test_every_granted_right_was_used(control_plane: ControlPlane) -> None:
    if not rbac_audit.RUN.full:
        pytest.skip("needs the whole suite (no -k/-m/--lf/--deselect, every test module); "
                    f"left out: {rbac_audit.RUN.deselected} deselected, modules "
                    f"{rbac_audit.RUN.missing_modules or 'none'}")
    used, granted = _compare(control_plane)
    problems = rbac_audit.granted_but_not_used(used, granted)
    assert not problems, "\n".join(problems) + "\n" + rbac_audit.RUN.table


# -- the derivation itself, on hand-made audit events ------------------------------------------

SA = "system:serviceaccount:quay-system:"


def _event(audit_id: str, user: str, verb: str, resource: str, *, group: str = "", namespace: str = "ns",
           agent: str = "quay-dockertoken", decision: str = "allow", stage: str = "ResponseComplete",
           subresource: str | None = None) -> dict[str, object]:
    ref = {"resource": resource, "apiGroup": group, "namespace": namespace}
    if subresource:
        ref["subresource"] = subresource
    return {"auditID": audit_id, "stage": stage, "user": {"username": user}, "verb": verb,
            "objectRef": ref, "userAgent": agent, "stageTimestamp": "2026-01-01T00:00:00.000000Z",
            "annotations": {"authorization.k8s.io/decision": decision}}


def test_a_denied_call_the_code_survives_is_named_with_identity_verb_and_resource() -> None:
    events = [_event("1", SA + "dockertoken-reconciler", "create", "events", decision="forbid"),
              _event("2", SA + "dockertoken-reconciler", "get", "secrets")]
    used = rbac_audit.used_rights(events)
    granted = {rbac_audit.Right("dockertoken-reconciler", "get", "", "secrets")}
    (problem,) = rbac_audit.used_but_not_granted(used, granted)
    assert problem.startswith("dockertoken-reconciler create events (core): used (1 request(s)")
    assert "1 denied" in problem and "knative/base/rbac.yaml does not grant it" in problem


def test_probes_admins_and_other_users_are_not_uses_and_a_watch_counts_once() -> None:
    events = [
        _event("1", SA + "dockertoken-resync", "get", "secrets", agent="OpenAPI-Generator/37.0.2/python",
               decision="forbid"),
        _event("2", SA + "dockertoken-resync", "get", "secrets", agent=rbac_audit.PROBE_AGENT),
        _event("3", "admin", "delete", "namespaces"),
        _event("4", SA + "default", "list", "pods"),
        _event("5", SA + "dockertoken-source", "watch", "dockertokens", group="quay.herve4m.github.io",
               namespace="", agent="apiserver_receive_adapter", stage="ResponseStarted"),
        _event("5", SA + "dockertoken-source", "watch", "dockertokens", group="quay.herve4m.github.io",
               namespace="", agent="apiserver_receive_adapter"),
        _event("6", SA + "dockertoken-reconciler", "patch", "dockertokens", group="quay.herve4m.github.io",
               subresource="status"),
    ]
    used = rbac_audit.used_rights(events)
    watch = rbac_audit.Right("dockertoken-source", "watch", "quay.herve4m.github.io", "dockertokens")
    status = rbac_audit.Right("dockertoken-reconciler", "patch", "quay.herve4m.github.io", "dockertokens/status")
    assert set(used) == {watch, status}
    assert used[watch].requests == 1 and used[watch].scopes == {"cluster"}


def test_access_checks_about_an_identity_are_uses_with_their_answer() -> None:
    review = {"auditID": "9", "stage": "ResponseComplete", "user": {"username": "admin"}, "verb": "create",
              "objectRef": {"resource": "subjectaccessreviews", "apiGroup": "authorization.k8s.io"},
              "stageTimestamp": "2026-01-01T00:00:00.000000Z",
              "requestObject": {"spec": {"user": SA + "dockertoken-source", "resourceAttributes": {
                  "verb": "get", "group": "quay.herve4m.github.io", "resource": "dockertokens",
                  "namespace": "ns"}}},
              "responseObject": {"status": {"allowed": False}}}
    used = rbac_audit.used_rights([review])
    right = rbac_audit.Right("dockertoken-source", "get", "quay.herve4m.github.io", "dockertokens")
    assert used[right].access_checks == 1 and used[right].denied == 1 and used[right].requests == 0


def test_grants_come_from_the_bindings(tmp_path: Path) -> None:
    rbac = tmp_path / "rbac.yaml"
    rbac.write_text(yaml.safe_dump_all([
        {"kind": "ClusterRole", "metadata": {"name": "r"},
         "rules": [{"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["get", "list"]}]},
        {"kind": "ClusterRole", "metadata": {"name": "unbound"},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}]},
        {"kind": "ClusterRoleBinding", "metadata": {"name": "b"},
         "roleRef": {"kind": "ClusterRole", "name": "r"},
         "subjects": [{"kind": "ServiceAccount", "name": "dockertoken-resync", "namespace": "quay-system"},
                      {"kind": "ServiceAccount", "name": "dockertoken-resync", "namespace": "elsewhere"}]},
    ]))
    assert rbac_audit.granted_rights(rbac) == {
        rbac_audit.Right("dockertoken-resync", verb, "", resource)
        for verb in ("get", "list") for resource in ("secrets", "configmaps")}


def test_an_unused_grant_is_named_with_identity_verb_and_resource() -> None:
    used = rbac_audit.used_rights([_event("1", SA + "dockertoken-resync", "list", "dockertokens",
                                          group="quay.herve4m.github.io")])
    granted = {rbac_audit.Right("dockertoken-resync", verb, "quay.herve4m.github.io", "dockertokens")
               for verb in ("list", "watch")}
    assert rbac_audit.granted_but_not_used(used, granted) == [
        "dockertoken-resync watch dockertokens (quay.herve4m.github.io): granted by knative/base/rbac.yaml "
        "but no request of the resync job and no access check used it in the whole suite; remove it, or "
        "test the code that needs it"]
