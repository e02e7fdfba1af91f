"""The kustomize builds (knative/ and knative/overlays/broker) are valid and say what we mean.

Every object of both builds is validated: the Knative kinds against the openAPIV3Schema of the
real Knative CRDs (tests/data/knative-schemas, converted to JSON Schema with the API server's
strict field validation, which ``kubectl apply`` uses by default), the built-in kinds with
kubernetes-validate in strict mode for the oldest and newest Kubernetes we document. Then the
properties a user would notice are asserted one by one, and negative tests prove the
validators actually reject broken objects.

Needs ``kubectl`` (for ``kubectl kustomize``). Only the RBAC check asks a real API server
(``test_rbac_on_a_real_api_server``: SubjectAccessReviews on the control plane of
tests/controlplane, which has knative/base/rbac.yaml applied); nothing else talks to a cluster.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "knative"
BROKER = ROOT / "knative" / "overlays" / "broker"
SCHEMAS = ROOT / "tests" / "data" / "knative-schemas"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

BUILDS = {"base": BASE, "broker": BROKER}

KNATIVE_SCHEMAS = {
    ("serving.knative.dev/v1", "Service"): "service.yaml",
    ("sources.knative.dev/v1", "ApiServerSource"): "apiserversource.yaml",
    ("eventing.knative.dev/v1", "Trigger"): "trigger.yaml",
    ("eventing.knative.dev/v1", "Broker"): "broker.yaml",
}
BUILTIN_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "CronJob",
    "NetworkPolicy",
    "CustomResourceDefinition",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}
# Oldest Kubernetes docs/deploy.md supports, and the newest kubernetes-validate ships.
K8S_VERSIONS = ["1.33", kubernetes_validate.latest_version()]

NAMESPACE = "quay-system"
ADMISSION_POLICY = "dockertoken-tenant-isolation"
IMAGE_NAME = "quay-dockertoken"
RESYNC_TYPE = "io.github.herve4m.quay.dockertoken.resync"
# In-cluster URLs with no cluster domain: they resolve whatever the cluster's DNS domain is.
BROKER_INGRESS = "http://broker-ingress.knative-eventing.svc/quay-system/dockertoken"
SERVICE_URL = "http://dockertoken-reconciler.quay-system.svc"
# Knative Serving rejects these in the user container (k8s_validation.go reservedEnvVars).
RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}


# --- Building ------------------------------------------------------------------------------


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is not installed: these tests build the manifests with `kubectl kustomize`."
            " Install kubectl (https://kubernetes.io/docs/tasks/tools/) and run them again."
        )
    proc = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@cache
def _built(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(BUILDS[name]))


def built(name: str) -> list[dict[str, Any]]:
    """A fresh copy of a build (tests may mutate what they get)."""
    return copy.deepcopy(list(_built(name)))


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return list(spec["template"]["spec"]["containers"])


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return dict(spec["template"]["spec"])


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


# --- CRD openAPIV3Schema -> JSON Schema -----------------------------------------------------


def crd_to_jsonschema(node: Any) -> Any:
    """Convert a structural CRD schema into a Draft 4 JSON Schema the way the API server applies it.

    * ``x-kubernetes-*`` keys are dropped, except that ``x-kubernetes-int-or-string`` without
      its own ``anyOf`` becomes ``anyOf: [integer, string]``, and
      ``x-kubernetes-preserve-unknown-fields: true`` keeps an object open;
    * ``nullable: true`` adds ``"null"`` to the type;
    * every other object that lists ``properties`` gets ``additionalProperties: false``: the
      API server's strict field validation (``kubectl apply``'s default ``--validate=strict``)
      rejects unknown fields instead of pruning them.
    """
    if isinstance(node, list):
        return [crd_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: crd_to_jsonschema(v) for k, v in value.items()}
        elif key == "default":  # data, not schema
            out[key] = value
        else:
            out[key] = crd_to_jsonschema(value)
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node and "type" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


# What the API server checks in every object's root, whether or not the CRD schema lists it
# (a CRD may leave apiVersion/kind/metadata out). Label and annotation values must be strings:
# an unquoted `min-scale: 1` is rejected on apply.
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
ROOT_FIELDS = {
    "apiVersion": {"type": "string"},
    "kind": {"type": "string"},
    "metadata": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
            "namespace": {"type": "string"},
            "labels": _STRING_MAP,
            "annotations": _STRING_MAP,
        },
    },
}


@cache
def crd_validator(path: Path, version: str) -> jsonschema.protocols.Validator:
    if not path.is_file():
        pytest.fail(f"CRD schema {path} is missing (the Knative CRD copies of tests/data)")
    crd = yaml.safe_load(path.read_text())
    (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = crd_to_jsonschema(ver["schema"]["openAPIV3Schema"])
    schema["properties"].update(copy.deepcopy(ROOT_FIELDS))
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Why ``obj`` does not match its Knative CRD (empty when it does)."""
    key = (obj["apiVersion"], obj["kind"])
    validator = crd_validator(SCHEMAS / KNATIVE_SCHEMAS[key], obj["apiVersion"].split("/")[1])
    return [
        f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, e.absolute_path))}: "
        f"{e.message}"
        for e in validator.iter_errors(obj)
    ]


def dockertoken_errors(obj: dict[str, Any]) -> list[str]:
    validator = crd_validator(BASE / "base" / "crd-dockertoken.yaml", "v1alpha1")
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)
    ]


# --- Every object is valid -------------------------------------------------------------------


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_every_object_has_a_validator(build: str) -> None:
    for obj in built(build):
        key = (obj["apiVersion"], obj["kind"])
        assert key in KNATIVE_SCHEMAS or obj["kind"] in BUILTIN_KINDS, f"no validator for {key}"


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_knative_objects_match_their_crd_schema(build: str) -> None:
    objs = [o for o in built(build) if (o["apiVersion"], o["kind"]) in KNATIVE_SCHEMAS]
    kinds = {o["kind"] for o in objs}
    assert {"Service", "ApiServerSource"} <= kinds
    if build == "broker":
        assert {"Broker", "Trigger"} <= kinds
    errors = [err for obj in objs for err in schema_errors(obj)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("build", sorted(BUILDS))
def test_builtin_objects_validate_strictly(build: str, version: str) -> None:
    objs = [o for o in built(build) if o["kind"] in BUILTIN_KINDS]
    assert {o["kind"] for o in objs} == BUILTIN_KINDS
    errors = []
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(map(str, e.path))
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {e.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_namespaces(build: str) -> None:
    for obj in built(build):
        ns = obj["metadata"].get("namespace")
        if obj["kind"] in CLUSTER_SCOPED:
            assert ns is None, f"{obj['kind']}/{obj['metadata']['name']} is cluster-scoped"
        else:
            assert ns == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']} in {ns!r}"
    ns_objs = [o for o in built(build) if o["kind"] == "Namespace"]
    assert [o["metadata"]["name"] for o in ns_objs] == [NAMESPACE]


# --- Negative tests: the validators are not vacuous -------------------------------------------


def _service() -> dict[str, Any]:
    return find(built("base"), "Service", "dockertoken-reconciler")


def test_broken_service_concurrency_is_rejected() -> None:
    svc = _service()
    svc["spec"]["template"]["spec"]["containerConcurrency"] = "abc"
    errors = schema_errors(svc)
    assert any(
        "containerConcurrency" in e and "'abc' is not of type 'integer'" in e for e in errors
    )


def test_unknown_container_field_is_rejected() -> None:
    svc = _service()
    svc["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    errors = schema_errors(svc)
    assert any("imagePullPolice" in e for e in errors), errors


def test_unquoted_annotation_is_rejected() -> None:
    svc = _service()
    svc["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] = 1
    assert any("min-scale" in e for e in schema_errors(svc))
    svc = _service()
    svc["metadata"]["labels"]["replicas"] = 2
    assert any("replicas" in e for e in schema_errors(svc))


def test_preserve_unknown_fields_is_honoured() -> None:
    # Trigger.spec.delivery keeps unknown fields (that is how the "timeout" field is accepted).
    trigger = find(built("broker"), "Trigger", "dockertoken-reconciler")
    trigger["spec"]["delivery"]["someFutureField"] = "x"
    assert schema_errors(trigger) == []
    trigger["spec"]["delivery"]["retry"] = "five"
    assert schema_errors(trigger)


def test_nullable_and_int_or_string_conversion() -> None:
    schema = crd_to_jsonschema(
        {
            "type": "object",
            "properties": {
                "a": {"type": "string", "nullable": True},
                "b": {"x-kubernetes-int-or-string": True},
            },
        }
    )
    v = jsonschema.Draft4Validator(schema)
    assert v.is_valid({"a": None, "b": 3}) and v.is_valid({"a": "x", "b": "50%"})
    assert not v.is_valid({"a": 1}) and not v.is_valid({"b": 1.5}) and not v.is_valid({"c": 1})


def test_broken_cronjob_is_rejected_by_kubernetes_validate() -> None:
    cron = find(built("base"), "CronJob", "dockertoken-resync")
    cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(cron, K8S_VERSIONS[0], strict=True)
    cron = find(built("base"), "CronJob", "dockertoken-resync")
    cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicyy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(cron, K8S_VERSIONS[0], strict=True)


def test_broken_admission_policy_is_rejected_by_kubernetes_validate() -> None:
    for version in K8S_VERSIONS:
        binding = find(built("base"), "ValidatingAdmissionPolicyBinding", ADMISSION_POLICY)
        binding["spec"]["validationAction"] = binding["spec"].pop("validationActions")
        with pytest.raises(kubernetes_validate.ValidationError, match="validationAction"):
            kubernetes_validate.validate(binding, version, strict=True)
        policy = find(built("base"), "ValidatingAdmissionPolicy", ADMISSION_POLICY)
        policy["spec"]["failurePolicy"] = False
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(policy, version, strict=True)


# --- Tenant isolation (issue 11; behaviour on a real API server in test_admission.py) ------------


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_admission_policy_guards_dockertokens(build: str) -> None:
    objs = built(build)
    policy = find(objs, "ValidatingAdmissionPolicy", ADMISSION_POLICY)["spec"]
    binding = find(objs, "ValidatingAdmissionPolicyBinding", ADMISSION_POLICY)["spec"]
    crd = find(objs, "CustomResourceDefinition", "dockertokens.quay.herve4m.github.io")["spec"]
    assert binding["policyName"] == ADMISSION_POLICY
    assert binding["validationActions"] == ["Deny"]
    assert "paramRef" not in binding and "matchResources" not in binding  # every namespace
    assert policy["failurePolicy"] == "Fail"
    (rule,) = policy["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == [crd["group"]]
    assert rule["resources"] == [crd["names"]["plural"]]  # not the status subresource
    assert sorted(rule["operations"]) == ["CREATE", "UPDATE"]
    assert "namespaceSelector" not in policy["matchConstraints"]


# --- RBAC --------------------------------------------------------------------------------------
# Which verbs each identity needs is not restated here: tests/test_rbac_audit.py derives it from
# the API server's audit log. Here: no wildcards, the docs' table, and who is bound to what.


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, dict):
        for item in node.values():
            yield from _strings(item)


def test_no_wildcards_in_rbac() -> None:
    for obj in built("base"):
        if obj["kind"] in ("ClusterRole", "Role"):
            for rule in obj.get("rules", []):
                assert not any("*" in s for s in _strings(rule)), (obj["metadata"]["name"], rule)


# (identity, namespace or "" for all namespaces, API group, resource) -> verbs
Grants = dict[tuple[str, str, str, str], set[str]]


def _documented_rbac() -> Grants:
    """The RBAC table of docs/deploy.md."""
    assert DEPLOY_DOC.is_file(), f"{DEPLOY_DOC} is missing"
    table: Grants = {}
    for line in DEPLOY_DOC.read_text().splitlines():
        if not line.startswith("| `dockertoken-"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        identity, where, group, resources, verbs = (re.findall(r"`([^`]*)`", c) for c in cells[:5])
        assert where or cells[1] == "all", line
        ns = where[0] if where else ""
        grp = "" if group == ['""'] else group[0]
        for res in resources:
            table[(identity[0], ns, grp, res)] = set(verbs)
    return table


def _built_rbac(build: str = "base") -> Grants:
    """What the bindings of a build grant each ServiceAccount of quay-system."""
    objs = built(build)
    roles = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
             for o in objs if o["kind"] in ("ClusterRole", "Role")}
    table: Grants = {}
    for binding in objs:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        ns = binding["metadata"].get("namespace", "") if binding["kind"] == "RoleBinding" else ""
        ref = binding["roleRef"]
        role = roles[(ref["kind"], ns if ref["kind"] == "Role" else "", ref["name"])]
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount" and subject["namespace"] == NAMESPACE
            for rule in role["rules"]:
                for group in rule["apiGroups"]:
                    for res in rule["resources"]:
                        key = (subject["name"], ns, group, res)
                        table.setdefault(key, set()).update(rule["verbs"])
    return table


def test_rbac_is_exactly_as_documented() -> None:
    documented = _documented_rbac()
    # dockertoken-resync has no rights: the resync command reads nothing from the API server
    assert {k[0] for k in documented} == {
        "dockertoken-reconciler",
        "dockertoken-source",
    }
    for build in BUILDS:
        assert _built_rbac(build) == documented, build


def test_no_component_may_write_core_events() -> None:
    """The ApiServerSource adapter of eventing v0.49.2 records no SinkSendFailed Events (only the
    PingSource adapter does), and the function records events.k8s.io Events: no core events rule."""
    assert [k for k in _built_rbac() if k[2:] == ("", "events")] == []


def _allowed(api: Any, identity: str, verb: str, group: str, resource: str, namespace: str) -> bool:
    from kubernetes import client

    from tests.rbac_audit import PROBE_AGENT

    api.user_agent = PROBE_AGENT  # tests/rbac_audit.py: a probe, not a component's access check
    authz: Any = client.AuthorizationV1Api(api)
    review = authz.create_subject_access_review({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{NAMESPACE}:{identity}",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}", "system:authenticated"],
            "resourceAttributes": {"verb": verb, "group": group, "resource": resource.split("/")[0],
                                   "subresource": resource.partition("/")[2], "namespace": namespace},
        },
    })
    return bool(review.status.allowed)


@pytest.mark.controlplane
def test_rbac_on_a_real_api_server(control_plane: ControlPlane) -> None:
    """The real authorizer grants every documented verb where the table says, and no other verb
    of the ones RBAC knows, nor the namespaced grants anywhere else."""
    probe = control_plane.api_client("admin")
    verbs = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
    table = _documented_rbac()
    wrong: list[str] = []
    for identity, group, resource in {(i, g, r) for i, _, g, r in table}:
        for where in (NAMESPACE, "some-other-namespace"):
            granted = set().union(*(v for (i, ns, g, r), v in table.items()
                                    if (i, g, r) == (identity, group, resource) and ns in ("", where)))
            for verb in verbs:
                if _allowed(probe, identity, verb, group, resource, where) != (verb in granted):
                    wrong.append(f"{identity} {verb} {group}/{resource} in {where}: "
                                 f"expected {'allowed' if verb in granted else 'denied'}")
    assert not wrong, "\n".join(wrong)
    # Not in the table, so not granted: e.g. the function may not record Events.
    assert not _allowed(probe, "dockertoken-reconciler", "create", "", "events", NAMESPACE)


def test_service_accounts_exist_and_are_bound() -> None:
    objs = built("broker")
    accounts = {o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"}
    bound = {
        (s["name"], b["roleRef"]["name"])
        for b in objs
        if b["kind"] == "ClusterRoleBinding"
        for s in b["subjects"]
        if s["kind"] == "ServiceAccount" and s["namespace"] == NAMESPACE
    }
    users = {
        "dockertoken-reconciler": pod_spec(find(objs, "Service", "dockertoken-reconciler")),
        "dockertoken-resync": pod_spec(find(objs, "CronJob", "dockertoken-resync")),
        "dockertoken-source": find(objs, "ApiServerSource", "dockertoken-source")["spec"],
    }
    for sa, spec in users.items():
        assert spec["serviceAccountName"] == sa
        # the resync's identity has no rights (it reads nothing from the API server)
        assert sa in accounts and ((sa, sa) in bound) == (sa != "dockertoken-resync")


# --- What the user sees -------------------------------------------------------------------------


def test_service() -> None:
    svc = _service()
    assert svc["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"
    tpl = svc["spec"]["template"]
    spec = tpl["spec"]
    (ctr,) = spec["containers"]
    probe = ctr["readinessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert "port" not in probe, "Knative requires the probe port to be omitted (or equal)"
    assert len(ctr.get("ports", [])) <= 1
    env = env_of(ctr)
    assert env["FUNCTION_TARGET"] == "handle"
    assert env["FUNCTION_SIGNATURE_TYPE"] == "cloudevent"
    assert "LOG_LEVEL" in env
    assert not RESERVED_ENV & env.keys()
    assert env["THREADS"] == str(spec["containerConcurrency"])
    # Knative webhook limits the schema does not express.
    assert 0 < spec["containerConcurrency"] <= 1000
    assert 0 < spec["timeoutSeconds"] <= 600
    ann = tpl["metadata"]["annotations"]
    lo = int(ann["autoscaling.knative.dev/min-scale"])
    hi = int(ann["autoscaling.knative.dev/max-scale"])
    target = int(ann["autoscaling.knative.dev/target"])
    assert 0 <= lo <= hi and 0 < target <= spec["containerConcurrency"]
    assert {"requests", "limits"} <= ctr["resources"].keys()


def test_apiserversource() -> None:
    for build, sink in (
        (
            "base",
            {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Service",
                "name": "dockertoken-reconciler",
            },
        ),
        (
            "broker",
            {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "dockertoken"},
        ),
    ):
        objs = built(build)
        src = find(objs, "ApiServerSource", "dockertoken-source")["spec"]
        assert src["mode"] == "Reference"
        assert src["namespaceSelector"] == {}
        crd = find(objs, "CustomResourceDefinition", "dockertokens.quay.herve4m.github.io")
        (version,) = crd["spec"]["versions"]
        assert src["resources"] == [
            {
                "apiVersion": f"{crd['spec']['group']}/{version['name']}",
                "kind": crd["spec"]["names"]["kind"],
            }
        ]
        # the direct sink (a Knative Service announces no audience) names the function's audience
        audience = {"audience": "quay-dockertoken"} if build == "base" else {}
        assert src["sink"] == {"ref": sink, **audience}
        find(objs, sink["kind"], sink["name"])  # the sink exists in the same build


def test_cronjob() -> None:
    for build, sink in (("base", SERVICE_URL), ("broker", BROKER_INGRESS)):
        cron = find(built(build), "CronJob", "dockertoken-resync")
        assert cron["spec"]["schedule"] == "*/10 * * * *"
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        assert cron["spec"]["startingDeadlineSeconds"] > 0
        pod = pod_spec(cron)
        assert pod["restartPolicy"] == "OnFailure"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        (ctr,) = pod["containers"]
        assert ctr["command"] == ["python", "-m", "function.resync"]
        env = env_of(ctr)
        assert env["RESYNC_SINK"] == sink
        assert int(env["RESYNC_CONCURRENCY"]) >= 1
        assert ctr["securityContext"]["allowPrivilegeEscalation"] is False


def test_in_cluster_urls_name_no_cluster_domain() -> None:
    """The resync posts to <service>.<namespace>.svc (Service or Broker ingress), which the pod's
    DNS search path completes on any cluster domain; nothing names cluster.local."""
    for build in BUILDS:
        objs = built(build)
        hits = [s for o in objs for s in _strings(o) if "cluster.local" in s]
        assert not hits, (build, hits)
    svc = _service()
    service_url = f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"
    broker = find(built("broker"), "Broker", "dockertoken")
    ingress = f"http://broker-ingress.knative-eventing.svc/{broker['metadata']['namespace']}/{broker['metadata']['name']}"
    for build, url in (("base", service_url), ("broker", ingress)):
        cron = find(built(build), "CronJob", "dockertoken-resync")
        assert env_of(containers(cron)[0])["RESYNC_SINK"] == url


def test_timeouts_are_ordered() -> None:
    """Callers wait longer than the Service, so they see Knative's retryable 504."""
    objs = built("broker")
    service_timeout = _service()["spec"]["template"]["spec"]["timeoutSeconds"]
    cron = find(objs, "CronJob", "dockertoken-resync")
    assert float(env_of(containers(cron)[0])["RESYNC_TIMEOUT"]) > service_timeout
    trigger = find(objs, "Trigger", "dockertoken-reconciler")
    m = re.fullmatch(r"PT(\d+)S", trigger["spec"]["delivery"]["timeout"])
    assert m and int(m.group(1)) > service_timeout


def test_trigger_and_broker() -> None:
    objs = built("broker")
    broker = find(objs, "Broker", "dockertoken")
    assert broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == (
        "MTChannelBasedBroker"
    )
    assert BROKER_INGRESS.endswith(
        f"/{broker['metadata']['namespace']}/{broker['metadata']['name']}"
    )
    trigger = find(objs, "Trigger", "dockertoken-reconciler")["spec"]
    assert trigger["broker"] == "dockertoken"
    assert trigger["subscriber"]["ref"]["name"] == "dockertoken-reconciler"
    filters = trigger["filters"]
    assert {"exact": {"kind": "DockerToken"}} in filters, "must filter on kind=DockerToken"
    (any_filter,) = [f["any"] for f in filters if "any" in f]
    assert {"prefix": {"type": "dev.knative.apiserver.ref."}} in any_filter
    assert {"prefix": {"type": "dev.knative.apiserver.resource."}} in any_filter
    assert {"exact": {"type": RESYNC_TYPE}} in any_filter
    for delivery in (trigger["delivery"], broker["spec"]["delivery"]):
        assert delivery["backoffPolicy"] == "exponential"
        assert re.fullmatch(r"PT\d+(\.\d+)?S", delivery["backoffDelay"])
        assert delivery["retry"] >= 1
        dls = delivery["deadLetterSink"]["ref"]
        find(objs, dls["kind"], dls["name"])
    assert "timeout" in trigger["delivery"]
    dlq = find(objs, "Service", "dockertoken-dlq")
    assert dlq["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"


# --- Image ---------------------------------------------------------------------------------------


def _function_images(objs: list[dict[str, Any]]) -> set[str]:
    return {
        c["image"]
        for o in objs
        if o["metadata"]["name"] in ("dockertoken-reconciler", "dockertoken-resync")
        and o["kind"] in ("Service", "CronJob")
        for c in containers(o)
    }


def test_image_is_set_through_kustomize_images() -> None:
    kust = yaml.safe_load((BASE / "base" / "kustomization.yaml").read_text())
    (entry,) = [i for i in kust["images"] if i["name"] == IMAGE_NAME]
    expected = f"{entry['newName']}:{entry['newTag']}"
    for build in BUILDS:
        assert _function_images(built(build)) == {expected}
    for raw in ("service.yaml", "cronjob.yaml"):
        assert f"image: {IMAGE_NAME}\n" in (BASE / "base" / raw).read_text()


def test_changing_the_image_entry_changes_both_workloads(tmp_path: Path) -> None:
    """What `kustomize edit set image quay-dockertoken=...` does, checked on a copy."""
    copy_dir = tmp_path / "knative"
    shutil.copytree(BASE, copy_dir)
    kust_file = copy_dir / "base" / "kustomization.yaml"
    kust = yaml.safe_load(kust_file.read_text())
    kust["images"] = [
        {"name": IMAGE_NAME, "newName": "registry.test/me/qdt", "digest": "sha256:" + "a" * 64}
    ]
    kust_file.write_text(yaml.safe_dump(kust))
    assert _function_images(kustomize(copy_dir)) == {"registry.test/me/qdt@sha256:" + "a" * 64}


# --- Docs --------------------------------------------------------------------------------------


def test_documented_dockertoken_example_is_valid() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DEPLOY_DOC.read_text(), flags=re.S)
    docs = [d for b in blocks for d in yaml.safe_load_all(b) if d]
    tokens = [d for d in docs if d.get("kind") == "DockerToken"]
    assert tokens, "docs/deploy.md shows no DockerToken"
    for tok in tokens:
        assert tok["apiVersion"] == "quay.herve4m.github.io/v1alpha1"
        assert dockertoken_errors(tok) == []
    bad = copy.deepcopy(tokens[0])
    bad["spec"]["preserveInQuayOnDeletion"] = "no"
    assert dockertoken_errors(bad)


# --- Trust boundaries (issue 18) ----------------------------------------------------------------

OIDC_SOURCE = "system:serviceaccount:quay-system:dockertoken-source-oidc-sources.knative.dev-apiserversource"
OIDC_TRIGGER = "system:serviceaccount:quay-system:dockertoken-reconciler-oidc-eventing.knative.dev-trigger"
RESYNC = "system:serviceaccount:quay-system:dockertoken-resync"


@pytest.mark.parametrize(("build", "identities", "cron_audience"), [
    ("base", {OIDC_SOURCE, RESYNC}, "quay-dockertoken"),
    # the resync's own identity for its plan requests, which a Broker cannot carry
    ("broker", {OIDC_TRIGGER, RESYNC}, "eventing.knative.dev/broker/quay-system/dockertoken"),
])
def test_senders_are_checked_and_each_sender_presents_a_token(build: str, identities: set[str],
                                                               cron_audience: str) -> None:
    """The check is on in every build (never SENDER_AUTH=off), trusts exactly the senders of that
    build, and each sender is given a token for the audience its receiver checks."""
    from function.auth import Settings

    objs = built(build)
    (ctr,) = pod_spec(find(objs, "Service", "dockertoken-reconciler"))["containers"]
    settings = Settings.from_env(env_of(ctr))
    assert settings.enabled and env_of(ctr)["SENDER_AUTH"] == "tokenreview"
    assert settings.audience == "quay-dockertoken"
    assert settings.identities == identities
    cron = find(objs, "CronJob", "dockertoken-resync")
    pod = pod_spec(cron)
    (job,) = pod["containers"]
    (mount,) = [m for m in job["volumeMounts"] if m["name"] == "sender-token"]
    assert env_of(job)["RESYNC_TOKEN_FILE"] == f"{mount['mountPath']}/token"
    (volume,) = [v for v in pod["volumes"] if v["name"] == "sender-token"]
    (projected,) = volume["projected"]["sources"]
    assert projected["serviceAccountToken"]["audience"] == cron_audience
    assert projected["serviceAccountToken"]["path"] == "token"
    planner = env_of(job).get("RESYNC_PLANNER_TOKEN_FILE")
    if build == "broker":
        trigger = find(objs, "Trigger", "dockertoken-reconciler")
        assert trigger["spec"]["subscriber"]["audience"] == "quay-dockertoken"
        # plan requests go to the Service itself, with a token for the function's audience
        assert env_of(job)["RESYNC_PLANNER"].startswith("http://dockertoken-reconciler.")
        (mount,) = [m for m in job["volumeMounts"] if m["name"] == "planner-token"]
        assert planner == f"{mount['mountPath']}/token"
        (volume,) = [v for v in pod["volumes"] if v["name"] == "planner-token"]
        (projected,) = volume["projected"]["sources"]
        assert projected["serviceAccountToken"]["audience"] == settings.audience
    else:
        assert planner is None  # the events' token, for the same audience


def test_the_function_container_runs_read_only_with_a_tmp_volume() -> None:
    for build in BUILDS:
        pod = pod_spec(find(built(build), "Service", "dockertoken-reconciler"))
        (ctr,) = pod["containers"]
        assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
        (mount,) = ctr["volumeMounts"]
        assert mount["mountPath"] == "/tmp"
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert "emptyDir" in volume


def test_network_policy_admits_only_the_senders_and_knatives_data_plane() -> None:
    objs = built("base")
    policy = find(objs, "NetworkPolicy", "dockertoken-reconciler-ingress")
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {"serving.knative.dev/service": "dockertoken-reconciler"}}
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert "ports" not in rule
    peers = rule["from"]
    pods = [p["podSelector"]["matchLabels"] for p in peers if "podSelector" in p]
    assert {"eventing.knative.dev/source": "apiserver-source-controller",
            "eventing.knative.dev/sourceName": "dockertoken-source"} in pods
    job_labels = pod_template_labels(find(objs, "CronJob", "dockertoken-resync"))
    (resync,) = [p for p in pods if "eventing.knative.dev/source" not in p]
    assert resync.items() <= job_labels.items()
    (namespaces,) = [p["namespaceSelector"] for p in peers if "namespaceSelector" in p]
    assert "podSelector" not in namespaces
    (expr,) = namespaces["matchExpressions"]
    assert expr["key"] == "kubernetes.io/metadata.name" and "knative-serving" in expr["values"]


def pod_template_labels(cron: dict[str, Any]) -> dict[str, str]:
    return dict(cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("field", ["connSecretRef", "retSecretRef"])
def test_crd_names_and_namespaces_are_names_never_paths(field: str) -> None:
    """The schema's patterns are the model's (function/model.py): no "/", no "." or ".."."""
    from function.model import LABEL, SUBDOMAIN

    crd = find(built("base"), "CustomResourceDefinition", "dockertokens.quay.herve4m.github.io")
    (version,) = crd["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    props = spec[field]["properties"]
    assert props["name"]["maxLength"] == 253 and props["namespace"]["maxLength"] == 63
    assert re.compile(props["name"]["pattern"]).pattern == SUBDOMAIN.pattern.replace("(?=.{1,253}$)", "")
    # empty: the DockerToken's own namespace (as the original operator's objects may say)
    assert props["namespace"]["pattern"] == "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"
    assert re.match(props["namespace"]["pattern"], "")
    accounts = spec["serviceAccounts"]["items"]
    assert accounts["pattern"] == props["name"]["pattern"] and accounts["maxLength"] == 253
    for hostile in ("..", ".", "%2e%2e", "a/b", "../../team-b/secrets/quay-admin", "A", "-a"):
        assert not re.match(props["name"]["pattern"], hostile)
        assert not re.match(props["namespace"]["pattern"], hostile)
        assert not SUBDOMAIN.match(hostile) and not LABEL.match(hostile)
