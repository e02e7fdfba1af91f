"""knative/base's ApiServerSource, exactly as shipped (``kubectl kustomize knative/base``), reconciled
by Knative Eventing's real controller (issue 24; ``tests/eventing_controller.py``).

Nothing else of Knative runs: the tests write Serving's part (the Service's address) and the
kubelet's part (the adapter Deployment Available); every other status, and the adapter's
Deployment, are the controller's. The adapter then runs with that Deployment's environment in
``test_knative_e2e.py`` and ``test_convergence.py``.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.controlplane import ROOT
from tests.eventing_controller import (
    SOURCES,
    AdapterPod,
    EventingController,
    ShippedSource,
    adapter_deployment,
    conditions,
    delete_source,
    describe,
    get_source,
    knative_build,
    kubectl_apply,
    reconciled,
    shipped_source,
)

# What Serving publishes for a cluster-local Service (networking.knative.dev/visibility: cluster-local).
ADDRESS = "http://dockertoken-reconciler.quay-system.svc.cluster.local"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
SCHEMAS = ROOT / "tests" / "data" / "knative-schemas"


@pytest.fixture(scope="module")
def shipped(eventing_controller: EventingController) -> Iterator[ShippedSource]:
    with shipped_source(eventing_controller, ADDRESS) as source:
        yield source


def test_the_shipped_source_becomes_ready(shipped: ShippedSource) -> None:
    """SinkProvided waits for the Service's address (Serving's status, written by the test); then
    the controller's access check passes, it makes the adapter Deployment and, once that is
    Available (the kubelet's status, written by the test), the source is Ready."""
    sink = conditions(shipped.before_address)["SinkProvided"]
    assert (sink["status"], sink.get("reason")) == ("False", "NotFound"), describe(shipped.before_address)
    source = shipped.current()
    assert source is not None
    got = {t: c["status"] for t, c in conditions(source).items()}
    wanted = {"SinkProvided": "True", "SufficientPermissions": "True", "Deployed": "True", "Ready": "True"}
    assert {t: got.get(t) for t in wanted} == wanted, describe(source)
    assert source["status"]["sinkUri"] == ADDRESS


def test_the_generated_adapter_is_what_the_docs_say(shipped: ShippedSource, admin_api: Any) -> None:
    """docs/deploy.md: the adapter runs as ``dockertoken-source`` and watches DockerTokens in all
    namespaces, in Reference mode, sending to the Service."""
    deployment = shipped.deployment()
    assert deployment is not None
    pod = AdapterPod.of(deployment)
    config = pod.source_config()
    core: Any = client.CoreV1Api(admin_api)
    namespaces = {ns.metadata.name for ns in core.list_namespace().items}
    crd = yaml.safe_load((ROOT / "knative" / "base" / "crd-dockertoken.yaml").read_text())
    assert pod.service_account == "dockertoken-source"
    assert (config["allNamespaces"], config["mode"]) == (True, "Reference")
    assert config["resources"] == [{"gvr": {"Group": crd["spec"]["group"], "Version": "v1alpha1",
                                            "Resource": crd["spec"]["names"]["plural"]}}]
    assert set(config["namespaces"]) == namespaces  # listed, though the watch is cluster-wide
    assert (pod.env["K_SINK"], pod.env["NAME"], pod.env["NAMESPACE"]) == (
        ADDRESS, "dockertoken-source", "quay-system")
    doc = DEPLOY_DOC.read_text()
    (row,) = [line for line in doc.splitlines() if line.startswith("| ApiServerSource | `dockertoken-source` |")]
    assert "in all namespaces" in row and "`Reference` mode" in row, row
    assert "| `dockertoken-source` | all | `quay.herve4m.github.io` | `dockertokens` | `get`, `list`, `watch` |" in doc


def test_a_new_namespace_rewrites_the_adapter_deployment(shipped: ShippedSource, admin_api: Any) -> None:
    """What docs/deploy.md warns about: every namespace created makes the controller rewrite
    K_SOURCE_CONFIG, a new pod template, so in a cluster the adapter pod restarts."""
    before = shipped.deployment()
    assert before is not None
    name = f"new-{uuid.uuid4().hex[:8]}"
    core: Any = client.CoreV1Api(admin_api)
    core.create_namespace({"metadata": {"name": name}})
    after = shipped.ctl.wait(
        "the adapter Deployment to list the new namespace",
        lambda: (d := shipped.deployment()) and name in AdapterPod.of(d).source_config()["namespaces"] and d,
        lambda: str(AdapterPod.of(shipped.deployment() or before).source_config()["namespaces"]))
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    assert after["spec"]["template"] != before["spec"]["template"]


def test_with_a_namespace_selector_only_matching_namespaces_rewrite_it(shipped: ShippedSource,
                                                                      admin_api: Any) -> None:
    """docs/deploy.md's way out: with a namespaceSelector that new namespaces do not match, a new
    namespace leaves the adapter Deployment alone; a labelled one is added to it."""
    ctl, cp = shipped.ctl, shipped.ctl.cp
    label = {"quay.herve4m.github.io/dockertokens": "enabled"}
    source = copy.deepcopy(shipped.source)
    source["metadata"]["name"] = name = "dockertoken-source-selected"
    source["spec"]["namespaceSelector"] = {"matchLabels": label}
    kubectl_apply(cp, [source])
    core: Any = client.CoreV1Api(admin_api)
    try:
        first = ctl.wait("the adapter Deployment", lambda: adapter_deployment(cp, get_source(cp, shipped.namespace, name)),
                         lambda: describe(get_source(cp, shipped.namespace, name)))
        offset = len(ctl.log.read_text())
        core.create_namespace({"metadata": {"name": f"plain-{uuid.uuid4().hex[:8]}"}})
        # the controller has handled that namespace: a global resync, then a reconcile of this source
        key = f'"knative.dev/key":"{shipped.namespace}/{name}"'
        ctl.wait("the reconcile after the new namespace", lambda: re.search(
            r"Global resync of APIServerSources due to namespaces changing\..*Reconcile succeeded[^\n]*"
            + re.escape(key), ctl.log.read_text()[offset:], re.S), lambda: "")
        unchanged = adapter_deployment(cp, get_source(cp, shipped.namespace, name))
        assert unchanged and unchanged["metadata"]["generation"] == first["metadata"]["generation"]
        labelled = f"labelled-{uuid.uuid4().hex[:8]}"
        core.create_namespace({"metadata": {"name": labelled, "labels": label}})
        after = ctl.wait("the labelled namespace in the adapter's config", lambda: (
            d := adapter_deployment(cp, get_source(cp, shipped.namespace, name))) and labelled in
            AdapterPod.of(d).source_config()["namespaces"] and d, lambda: "")
        assert after["metadata"]["generation"] > first["metadata"]["generation"]
        assert AdapterPod.of(after).source_config()["allNamespaces"] is False
    finally:
        delete_source(ctl, shipped.namespace, name)


def _source_role(objects: list[dict[str, Any]], account: str) -> dict[str, Any]:
    """The shipped ClusterRole bound to the source's ServiceAccount."""
    (binding,) = [o for o in objects if o["kind"] == "ClusterRoleBinding"
                  and any(s["name"] == account for s in o.get("subjects") or [])]
    (role,) = [o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"] == binding["roleRef"]["name"]]
    return role


@pytest.mark.parametrize("verb", ["get", "list", "watch"])
def test_a_missing_verb_is_named_by_the_controller(shipped: ShippedSource, verb: str) -> None:
    """The shipped source with the shipped ClusterRole less one verb (under a name of its own, so
    the shipped identity keeps its rights): SufficientPermissions False naming that verb in every
    namespace, and no adapter."""
    cp, ctl = shipped.ctl.cp, shipped.ctl
    name = f"dockertoken-source-without-{verb}"
    account = shipped.source["spec"]["serviceAccountName"]
    role = _source_role(shipped.objects, account)
    rules = [{**rule, "verbs": [v for v in rule["verbs"] if v != verb]} for rule in role["rules"]]
    objs: list[dict[str, Any]] = [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": [r for r in rules if r["verbs"]]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": shipped.namespace}]},
    ]
    source = copy.deepcopy(shipped.source)
    source["metadata"]["name"] = name
    source["spec"]["serviceAccountName"] = name
    kubectl_apply(cp, [*objs, source])
    rbac = client.RbacAuthorizationV1Api(cp.api_client())
    try:
        cond = ctl.wait("the access check", lambda: reconciled(get_source(cp, shipped.namespace, name),
                                                               "SufficientPermissions"),
                        lambda: describe(get_source(cp, shipped.namespace, name)))
        current = get_source(cp, shipped.namespace, name)
        assert current is not None
        user = f"system:serviceaccount:{shipped.namespace}:{name}"
        expected = f"User {user} cannot " + ", ".join(
            f'{verb} resource "dockertokens" in API group "quay.herve4m.github.io" in Namespace "{ns}"'
            for ns in current["status"]["namespaces"])
        assert (cond["status"], cond.get("message")) == ("False", expected)
        assert len(current["status"]["namespaces"]) > 1
        assert conditions(current)["Ready"]["status"] == "False"
        assert adapter_deployment(cp, current) is None
    finally:
        delete_source(ctl, shipped.namespace, name)
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)


def test_a_sink_that_does_not_exist_is_reported(shipped: ShippedSource) -> None:
    """The shipped source pointing at a Service that does not exist: no adapter, and the
    controller says which reference it could not resolve (what a broken sink in knative/base
    would show in test_the_shipped_source_becomes_ready)."""
    cp, ctl = shipped.ctl.cp, shipped.ctl
    source = copy.deepcopy(shipped.source)
    source["metadata"]["name"] = name = "dockertoken-source-wrong-sink"
    source["spec"]["sink"]["ref"]["name"] = "dockertoken-reconciler-typo"
    kubectl_apply(cp, [source])
    try:
        cond = ctl.wait("the sink", lambda: reconciled(get_source(cp, shipped.namespace, name), "SinkProvided"),
                        lambda: describe(get_source(cp, shipped.namespace, name)))
        assert (cond["status"], cond.get("reason")) == ("False", "NotFound")
        assert adapter_deployment(cp, get_source(cp, shipped.namespace, name)) is None
        core: Any = client.CoreV1Api(cp.api_client())
        events = core.list_namespaced_event(
            shipped.namespace, field_selector=f"involvedObject.name={name},reason=SinkNotFound").items
        assert events and '"name":"dockertoken-reconciler-typo"' in events[0].message, events
    finally:
        delete_source(ctl, shipped.namespace, name)


# -- fields the CRD does not know ------------------------------------------------------------------
# The ApiServerSource CRD keeps unknown fields in spec (x-kubernetes-preserve-unknown-fields), so
# the API server accepts a misspelt field and the controller ignores it: `namespaceSelectr: {}`
# gives a Ready source that watches only its own namespace. Eventing's webhook would refuse it,
# but it needs aggregator routing and a non-loopback address on the test API server; so the
# shipped objects are checked against the fields the CRD lists instead.

def unknown_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths in ``obj`` that its CRD schema does not list, even where the CRD preserves them."""
    found: list[str] = []
    if isinstance(obj, dict) and "properties" in schema:
        for key, value in obj.items():
            if key in schema["properties"]:
                found += unknown_fields(value, schema["properties"][key], f"{path}.{key}")
            else:
                found.append(f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def _source_schema() -> dict[str, Any]:
    crd = yaml.safe_load((SCHEMAS / "apiserversource.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == SOURCES[1]]
    return dict(version["schema"]["openAPIV3Schema"]["properties"]["spec"])


@pytest.mark.parametrize("overlay", ["base", "overlays/broker"])
def test_the_shipped_source_has_no_field_the_crd_does_not_know(overlay: str) -> None:
    (source,) = [o for o in knative_build(overlay) if o["kind"] == "ApiServerSource"]
    assert unknown_fields(source["spec"], _source_schema(), "spec") == []


def test_a_misspelt_field_is_found() -> None:
    spec = {"mode": "Reference", "namespaceSelectr": {}, "resources": [{"apiVersion": "v1", "knd": "Pod"}],
            "sink": {"ref": {"kind": "Service", "name": "x"}, "url": "http://x"}}
    assert unknown_fields(spec, _source_schema(), "spec") == [
        "spec.namespaceSelectr", "spec.resources[0].knd", "spec.sink.url"]

