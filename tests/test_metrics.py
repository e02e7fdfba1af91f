"""Metrics and alerts (issue 23): the shipped kube-state-metrics configuration
(knative/overlays/metrics) on the real kube-state-metrics v2.20.0, against the test API server,
as the overlay's own ServiceAccount and RBAC, with the function stopped; and every alert of the
shipped PrometheusRule under ``promtool test rules``, with a case that fires and one that does not.

Both binaries are built from their Go modules (tests/metrics/ksm, tests/metrics/promtool) by
``scripts/build-controlplane --metrics`` into a cache folder keyed on their versions.
"""

from __future__ import annotations

import datetime
import functools
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client, utils
from kubernetes.utils import FailToCreateError

from function import renewal
from tests.controlplane import ROOT, ControlPlane
from tests.env import Env, G, P, V, wait_for
from tests.harness import FunctionProcess, free_port
from tests.quaysim import QuaySimulator

OVERLAY = ROOT / "knative" / "overlays" / "metrics"
SERIES = re.compile(r'^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@functools.cache
def tools() -> Path:
    """The folder with kube-state-metrics and promtool (built once, then cached)."""
    out = subprocess.run([str(ROOT / "scripts" / "build-controlplane"), "--metrics"], check=True,
                         stdout=subprocess.PIPE, text=True, timeout=3600).stdout
    return Path(out.strip().splitlines()[-1])


def overlay() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed; it builds the overlay (kubectl kustomize)")
    built = subprocess.run([kubectl, "kustomize", str(OVERLAY)], check=True, capture_output=True,
                           text=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(built) if d]


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        match = SERIES.match(line)
        if match:
            out.append((match["name"], dict(LABEL.findall(match["labels"])), float(match["value"])))
    return out


def unix(value: str) -> float:
    when = renewal.parse_time(value)
    assert when is not None, value
    return when.timestamp()


# -- kube-state-metrics ------------------------------------------------------------------------------
def _metrics_identity(cp: ControlPlane, workdir: Path) -> Path:
    """The overlay's ServiceAccount, ClusterRole and binding, and a kubeconfig with a token of that
    ServiceAccount (TokenRequest): kube-state-metrics gets exactly the rights the overlay grants."""
    api = cp.api_client("admin")
    creator: Any = utils  # untyped
    for doc in overlay():
        if doc["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding"):
            try:
                creator.create_from_dict(api, doc)
            except FailToCreateError as exc:
                if any(getattr(e, "status", 0) != 409 for e in exc.api_exceptions):
                    raise
    core: Any = client.CoreV1Api(api)
    token = core.create_namespaced_service_account_token(
        "dockertoken-metrics", "quay-system", {"spec": {"expirationSeconds": 3600}}).status.token
    config = yaml.safe_load(cp.kubeconfigs["admin"].read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    path = workdir / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def fn(control_plane: ControlPlane) -> Iterator[FunctionProcess]:
    # the default LAST_ACCESSED_REFRESH (a day, longer than these 1-hour tokens live): the first
    # use is recorded all the same (lastaccess.py)
    with FunctionProcess(control_plane.kubeconfigs["dockertoken-reconciler"]) as proc:
        yield proc


def _seed(env: Env) -> None:
    """A Ready, a failing and a rotating DockerToken, 1-hour tokens; then the function stops."""
    env.quay.token_expiration = 3600
    env.conn_secret()
    env.dockertoken("ready", title="ready-token", ret="ready-pull")
    env.dockertoken("failing", title="failing-token", ret=None, connSecretRef={"name": "missing"})
    env.dockertoken("rotating", title="rotating-token", ret="rotating-pull")
    for name in ("ready", "failing", "rotating"):
        assert env.send("add", name).status_code == 204
    env.quay.advance(600)
    env.quay.touch((env.get("ready") or {})["status"]["uuid"])  # the first pull with it, 10 minutes on
    assert env.resync("ready").status_code == 204  # the resync's list brings lastAccessed
    env.custom.patch_namespaced_custom_object(G, V, env.ns, P, "rotating", {"metadata": {"annotations": {
        "quay.herve4m.github.io/renew-request": "now"}}})
    assert env.send("update", "rotating").status_code == 204
    env.fn.stop()


def test_kube_state_metrics_exports_status_while_the_function_sleeps(
        control_plane: ControlPlane, namespace: str, quay: QuaySimulator, fn: FunctionProcess) -> None:
    env = Env(control_plane, namespace, quay, fn)
    _seed(env)
    assert fn.proc is not None and fn.proc.poll() is not None  # the function is not running
    objects = {n: (env.get(n) or {}) for n in ("ready", "failing", "rotating")}
    assert objects["rotating"]["status"]["pendingRevocation"]

    folder = Path(tempfile.mkdtemp(prefix="qdt-ksm-"))
    kubeconfig = _metrics_identity(control_plane, folder)
    port = free_port()
    log = (folder / "ksm.log").open("wb")
    proc = subprocess.Popen([str(tools() / "kube-state-metrics"), "--kubeconfig", str(kubeconfig),
                             "--custom-resource-state-only",
                             "--custom-resource-state-config-file", str(OVERLAY / "custom-resource-state.yaml"),
                             "--host", "127.0.0.1", "--port", str(port),
                             "--telemetry-host", "127.0.0.1", "--telemetry-port", str(free_port())],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        def scrape() -> list[tuple[str, dict[str, str], float]] | None:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except httpx.TransportError:
                return None
            found = [s for s in parse(text) if s[1].get("namespace") == namespace]
            names = {s[1]["name"] for s in found if s[0] == "quay_dockertoken_ready_status"}
            return found if names == {"ready", "failing", "rotating"} else None

        try:
            series = wait_for(scrape, timeout=60, what="kube-state-metrics to export the DockerTokens")
        except AssertionError:
            raise AssertionError((folder / "ksm.log").read_text()[-3000:]) from None
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()

    def value(metric: str, name: str, **labels: str) -> float | None:
        hits = [v for m, lab, v in series if m == f"quay_dockertoken_{metric}" and lab["name"] == name
                and all(lab.get(k) == want for k, want in labels.items())]
        assert len(hits) <= 1, (metric, name, hits)
        return hits[0] if hits else None

    ready, rotating = objects["ready"]["status"], objects["rotating"]["status"]
    # the Ready one: every date, its conditions, no retry; labels say which token on which registry
    assert value("ready_status", "ready", condition="True") == 1
    assert value("ready_status", "ready", condition="False") == 0
    assert value("credential_verified_status", "ready", condition="True") == 1
    assert value("ready_reason", "ready", reason="TokenReady") == 1
    assert value("expiration_timestamp_seconds", "ready") == unix(ready["expirationTime"])
    assert value("renewal_timestamp_seconds", "ready") == unix(ready["renewalTime"])
    assert value("created_timestamp_seconds", "ready") == unix(ready["createdTime"])
    assert value("last_accessed_timestamp_seconds", "ready") == unix(ready["lastAccessedTime"])
    assert value("retry_attempts", "ready") == 0
    assert value("revoke_after_timestamp_seconds", "ready") is None
    labels = next(lab for m, lab, _ in series if m == "quay_dockertoken_expiration_timestamp_seconds"
                  and lab["name"] == "ready")
    assert labels["token_name"] == "ready-token" and labels["registry"] == quay.host
    # the failing one: Ready False with its reason, the attempts, and no token dates
    assert value("ready_status", "failing", condition="False") == 1
    assert value("ready_reason", "failing", reason="ConnectionSecretNotFound") == 1
    assert value("retry_attempts", "failing") == 1
    assert value("expiration_timestamp_seconds", "failing") is None
    # the rotating one: the new token's dates, and when the old one goes
    assert value("ready_status", "rotating", condition="True") == 1
    assert value("expiration_timestamp_seconds", "rotating") == unix(rotating["expirationTime"])
    assert value("revoke_after_timestamp_seconds", "rotating") == unix(rotating["revokeAfter"])
    assert unix(rotating["revokeAfter"]) > datetime.datetime.now(datetime.UTC).timestamp()


# -- alerts -------------------------------------------------------------------------------------------
BASE = {"namespace": "team-a", "token_name": "t", "registry": "quay.example.com",
        "customresource_group": "quay.herve4m.github.io", "customresource_kind": "DockerToken",
        "customresource_version": "v1alpha1"}


def _series(metric: str, name: str, values: str, **extra: str) -> dict[str, str]:
    labels = ",".join(f'{k}="{v}"' for k, v in {**BASE, "name": name, **extra}.items())
    return {"series": f"{metric}{{{labels}}}", "values": values}


# alert -> (input series, [(eval time, names of the DockerTokens it fires for)]); promtool's clock
# starts at 0 (Unix time), so timestamps below are seconds from the start.
CASES: dict[str, tuple[list[dict[str, str]], list[tuple[str, list[str]]]]] = {
    "QuayDockerTokenRenewalOverdue": (
        [_series("quay_dockertoken_renewal_timestamp_seconds", "late", "0x30"),
         _series("quay_dockertoken_renewal_timestamp_seconds", "fine", "3600x30")],
        [("9m", []), ("11m", ["late"])]),
    "QuayDockerTokenExpiringSoon": (
        [_series("quay_dockertoken_created_timestamp_seconds", "short", "0x30"),
         _series("quay_dockertoken_expiration_timestamp_seconds", "short", "1000x30"),
         _series("quay_dockertoken_created_timestamp_seconds", "long", "0x30"),
         _series("quay_dockertoken_expiration_timestamp_seconds", "long", "100000x30")],
        [("10m", []), ("16m", ["short"])]),
    "QuayDockerTokenNotReady": (
        [_series("quay_dockertoken_ready_status", "broken", "1x30", condition="False"),
         _series("quay_dockertoken_ready_status", "healthy", "0x30", condition="False")],
        [("14m", []), ("16m", ["broken"])]),
    "QuayDockerTokenCleanupBlocked": (
        [_series("quay_dockertoken_ready_reason", "stuck", "1x30", reason="CleanupBlocked"),
         _series("quay_dockertoken_ready_reason", "healthy", "1x30", reason="TokenReady")],
        [("4m", []), ("6m", ["stuck"])]),
    "QuayDockerTokenCredentialRefused": (
        [_series("quay_dockertoken_credential_verified_status", "refused", "1x30", condition="False"),
         _series("quay_dockertoken_credential_verified_status", "accepted", "0x30", condition="False")],
        [("0m", ["refused"]), ("5m", ["refused"])]),
}


def _render(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], template)


def _promtool_suite(rules: list[dict[str, Any]]) -> dict[str, Any]:
    by_name = {r["alert"]: r for r in rules}
    tests = []
    for alert, (series, evals) in CASES.items():
        rule = by_name[alert]
        checks = []
        for at, names in evals:
            expected = []
            for name in names:
                extra = {k: v for s in series if f'name="{name}"' in s["series"]
                         for k, v in LABEL.findall(s["series"]) if k in ("condition", "reason")}
                labels = {**BASE, "name": name, **extra, **rule.get("labels", {})}
                expected.append({"exp_labels": labels, "exp_annotations": {
                    k: _render(v, labels) for k, v in rule["annotations"].items()}})
            checks.append({"eval_time": at, "alertname": alert, "exp_alerts": expected})
        tests.append({"interval": "1m", "input_series": series, "alert_rule_test": checks})
    return {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}


def test_every_alert_fires_when_it_should_and_only_then(tmp_path: Path) -> None:
    rule = next(d for d in overlay() if d["kind"] == "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    (groups,) = rule["spec"]["groups"]
    assert {r["alert"] for r in groups["rules"]} == set(CASES)  # every alert has its cases
    for r in groups["rules"]:
        assert r["annotations"]["runbook"].strip() and r["annotations"]["summary"].strip()
    suite = _promtool_suite(groups["rules"])
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(suite))
    promtool = str(tools() / "promtool")
    check = subprocess.run([promtool, "check", "rules", "rules.yaml"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([promtool, "test", "rules", "test.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr

    # and the suite can fail: the same cases against a rule that never fires are refused
    for r in groups["rules"]:
        r["expr"] = "vector(0) > 1"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    broken = subprocess.run([promtool, "test", "rules", "test.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert broken.returncode != 0


# -- the overlay's other objects -------------------------------------------------------------------
def test_the_overlay_objects_validate_and_read_only_dockertokens() -> None:
    import kubernetes_validate

    objs = overlay()
    assert {o["kind"] for o in objs} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap",
                                         "Deployment", "Service", "ServiceMonitor", "PrometheusRule"}
    for obj in objs:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the Prometheus Operator's kinds: promtool and the scrape test check their content
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
        assert obj["metadata"].get("namespace", "quay-system") == "quay-system"
    role = next(o for o in objs if o["kind"] == "ClusterRole")
    assert all(set(rule["verbs"]) <= {"list", "watch"} for rule in role["rules"])  # read-only
    config = next(o for o in objs if o["kind"] == "ConfigMap")
    assert config["data"]["custom-resource-state.yaml"] == (OVERLAY / "custom-resource-state.yaml").read_text()
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    volume = deployment["spec"]["template"]["spec"]["volumes"][0]
    assert volume["configMap"]["name"] == config["metadata"]["name"]  # the generated name, hashed
