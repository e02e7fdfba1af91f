"""The bulk resync on the real control plane (issue 22): the real ``python -m function.resync``
asks the running function which objects drifted, and only those get a reconcile.

What a user notices: every kind of drift is repaired by the next resync; a cluster that is in
order costs no write and no reconcile (the API server's audit log: no GET of any one
DockerToken, no write of anything); the run's summary says what was seen, repaired and failing;
the exit status is 0 whatever state the objects are in, non-zero when the run could not do its
job (issue 20, point 4).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from function.model import RENEW_REQUEST
from function.protection import IN_USE_FINALIZER
from tests import harness, senders
from tests.checks import ApiRequests
from tests.env import USER, Env, G, P, V, wait_for

ROOT = Path(__file__).resolve().parents[1]
WRITES = ("create", "update", "patch", "delete")


def resync(env: Env, *extra: str, url: str | None = None) -> tuple[int, str, dict[str, Any]]:
    """Run the resync command over the test's namespace, as the CronJob does (presenting a token
    of its ServiceAccount for the function's audience): (exit status, summary text, JSON line)."""
    token_file = Path(tempfile.mkdtemp(prefix="qdt-resync-token-")) / "token"
    token_file.write_text(senders.mint(env.cp, senders.RESYNC_SA, seconds=600))
    proc = subprocess.run(
        [sys.executable, "-m", "function.resync", "--sink", url or env.fn.url, "--namespace", env.ns,
         *extra],
        env={**os.environ, "RESYNC_TOKEN_FILE": str(token_file)},
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr
    return proc.returncode, "\n".join(lines[:-1]), json.loads(lines[-1])


def ready(env: Env, name: str, **spec: Any) -> dict[str, Any]:
    """A DockerToken brought to Ready by its add event (as the watch would)."""
    env.dockertoken(name, title=name, ret=f"{name}-pull", **spec)
    assert env.send("add", name).status_code == 204
    assert env.ready(name).get("status") == "True", env.get(name)
    return env.get(name) or {}


def writes(requests: ApiRequests) -> int:
    return sum(requests.count(verb, resource, subresource=sub)
               for verb in WRITES for resource, sub in (("dockertokens", None), ("dockertokens", "status"),
                                                        ("secrets", None), ("serviceaccounts", None),
                                                        ("events", None)))


def reconciles(requests: ApiRequests) -> int:
    """Reconcile passes: each one begins with a GET of its DockerToken (the plan only lists)."""
    return requests.count("get", "dockertokens")


def status_patch(env: Env, name: str, **status: Any) -> None:
    env.custom.patch_namespaced_custom_object_status(G, V, env.ns, P, name, {"status": status})


def test_an_up_to_date_cluster_costs_no_write_and_no_reconcile(env: Env) -> None:
    env.conn_secret()
    env.core.create_namespaced_service_account(env.ns, {"metadata": {"name": "builder"}})
    for i in range(3):
        ready(env, f"dt-{i}")
    ready(env, "with-sa", serviceAccounts=["builder"])
    # the function's own registry check moved Quay's lastAccessed of every token after its Secret
    # was written: no rewrite for that (lastaccess.py)
    assert all(t["last_accessed"] for t in env.tokens())
    quay_before = env.quay_calls()
    requests = ApiRequests(env)

    code, text, summary = resync(env)

    assert code == 0, text
    assert summary["seen"] == 4 and summary["upToDate"] == 4, summary
    assert summary["repaired"] == {} and summary["failing"] == {} and summary["undelivered"] == 0
    assert "up to date     4" in text
    assert writes(requests) == 0
    assert reconciles(requests) == 0
    # the plan's own requests: one page of DockerTokens, one list of their pull Secrets, the
    # connection Secret once, the ServiceAccounts of the namespace once
    assert requests.count("list", "dockertokens") == 1
    assert requests.count("list", "secrets") == 1
    assert requests.count("get", "secrets") == 1
    assert requests.count("list", "serviceaccounts") == 1
    assert env.quay_calls() - quay_before == 1  # one token list for the one connection


def test_every_kind_of_drift_is_found_and_repaired_and_nothing_else_is_touched(env: Env) -> None:
    env.conn_secret()
    env.core.create_namespaced_service_account(env.ns, {"metadata": {"name": "builder"}})
    objs = {name: ready(env, name) for name in (
        "in-order", "secret-deleted", "secret-edited", "revoked", "expired", "renewal", "renamed")}
    ready(env, "sa", serviceAccounts=["builder"])
    # a token's first use (Quay's lastAccessed past the self-check window; here a day on): worth
    # one write
    used = ready(env, "used")
    env.quay.advance(25 * 3600)
    env.quay.touch(used["status"]["uuid"])
    env.dockertoken("new", title="new", ret="new-pull")  # created with no event: no token yet
    env.dockertoken("failing", title="failing", ret="failing-pull",
                    connSecretRef={"name": "nowhere"})
    assert env.send("add", "failing").status_code == 204
    env.expire_backoff("failing")

    env.core.delete_namespaced_secret("secret-deleted-pull", env.ns)
    edited = env.secret("secret-edited-pull") or {}
    edited["data"]["tokenCode"] = "ZWRpdGVk"  # "edited"
    env.core.replace_namespaced_secret("secret-edited-pull", env.ns, edited)
    env.quay_revoke(objs["revoked"]["status"]["uuid"])
    status_patch(env, "expired", expiration="Mon, 01 Jan 2001 00:00:00 -0000")
    status_patch(env, "renewal", renewalTime="2001-01-01T00:00:00Z")
    env.patch_spec("renamed", name="renamed-v2")
    env.core.patch_namespaced_service_account("builder", env.ns, {"imagePullSecrets": []})
    requests = ApiRequests(env)

    code, text, summary = resync(env)

    assert code == 0, text
    assert summary["seen"] == 11
    assert summary["repaired"] == {
        "secret-missing": 1, "secret-edited": 1, "token-gone": 1, "token-expired": 1,
        "renewal-due": 1, "spec-changed": 1, "serviceaccount": 1, "last-accessed": 1,
        "token-missing": 1}, text
    assert summary["failing"] == {"ConnectionSecretNotFound": 1}  # its retry was due: tried again
    assert summary["upToDate"] == 1
    assert "repaired       9" in text and "ConnectionSecretNotFound 1" in text
    # exactly the drifted objects (and the failing one whose retry was due) were reconciled
    assert reconciles(requests) >= 10  # reads the audit log so far
    got = {e["objectRef"]["name"] for e in requests.events
           if e["verb"] == "get" and e["objectRef"]["resource"] == "dockertokens"}
    assert got == {"secret-deleted", "secret-edited", "revoked", "expired", "renewal", "renamed",
                   "sa", "used", "new", "failing"}
    for name in ("in-order", "secret-deleted", "secret-edited", "revoked", "expired", "renewal",
                 "renamed", "sa", "used", "new"):
        obj = env.get(name) or {}
        assert env.ready(name).get("status") == "True", (name, obj.get("status"))
        data = env.secret_data(f"{name}-pull")
        token = next(t for t in env.tokens() if t["uuid"] == obj["status"]["uuid"])
        assert data["tokenCode"] == token["token_code"] and data["name"] == obj["spec"]["name"], name
    assert env.secret_data("used-pull")["lastAccessed"] == next(
        t["last_accessed"] for t in env.tokens() if t["uuid"] == used["status"]["uuid"])
    assert (env.get("in-order") or {})["metadata"]["resourceVersion"] == \
        objs["in-order"]["metadata"]["resourceVersion"]
    pulls = env.core.read_namespaced_service_account("builder", env.ns).image_pull_secrets
    assert [p.name for p in pulls or ()] == ["sa-pull"]

    # the watch delivers the echoes of those writes (one of them moves the renamed object's claim
    # label); then the cluster is in order: the next resync writes nothing, reconciles nothing
    for name in sorted(got):
        assert env.send("update", name).status_code == 204
    requests = ApiRequests(env)
    code, text, summary = resync(env)
    assert code == 0, text
    assert summary["upToDate"] == 10 and summary["repaired"] == {}, text
    assert summary["failing"] == {"ConnectionSecretNotFound": 1}  # backing off: not sent
    assert writes(requests) == 0 and reconciles(requests) == 0


def test_a_renew_request_and_a_lost_in_use_finalizer_are_repaired_by_the_resync(env: Env) -> None:
    """What issues 20 and 23 write is drift too: ``kubectl dockertoken renew`` (its annotation,
    when no event reaches the function) and the connection Secret's in-use finalizer taken off."""
    env.conn_secret()
    old = ready(env, "renew")
    ready(env, "other")
    env.custom.patch_namespaced_custom_object(G, V, env.ns, P, "renew", {"metadata": {"annotations": {
        RENEW_REQUEST: "r1"}}})
    code, text, summary = resync(env)
    assert code == 0 and summary["repaired"] == {"renew-requested": 1} and summary["upToDate"] == 1, text
    renewed = env.get("renew") or {}
    assert renewed["status"]["renewRequest"] == "r1"
    assert renewed["status"]["uuid"] != old["status"]["uuid"]
    assert env.secret_data("renew-pull")["uuid"] == renewed["status"]["uuid"]

    env.core.patch_namespaced_secret("quay-credentials", env.ns, {"metadata": {"finalizers": None}})
    code, text, summary = resync(env)
    assert code == 0 and summary["repaired"] == {"protection": 2}, text
    conn = env.secret("quay-credentials") or {}
    assert conn["metadata"]["finalizers"] == [IN_USE_FINALIZER]
    code, text, summary = resync(env)
    assert code == 0 and "protection" not in summary["repaired"], text


def test_a_deleted_object_is_finalized_by_the_resync(env: Env) -> None:
    env.conn_secret()
    obj = ready(env, "gone")
    env.delete("gone")  # no delete event reaches the function
    code, text, summary = resync(env)
    assert code == 0 and summary["repaired"] == {"deletion": 1}, text
    wait_for(lambda: env.get("gone") is None, what="the DockerToken finalized")
    assert obj["status"]["uuid"] not in {t["uuid"] for t in env.tokens()}


def test_failing_objects_exit_0_with_counts_by_reason(env: Env) -> None:
    """Issue 20, point 4: objects failing, then backing off, are a run done (exit 0, counted)."""
    env.conn_secret()
    env.conn_secret("refused", host=env.quay.base_url, token="not-a-valid-oauth-token")
    env.conn_secret("down", host=f"https://127.0.0.1:{harness.free_port()}", token="x")
    ready(env, "fine")
    env.dockertoken("refused", title="refused", ret="refused-pull", connSecretRef={"name": "refused"})
    env.dockertoken("down", title="down", ret="down-pull", connSecretRef={"name": "down"})

    for _ in range(2):  # first: the new objects are reconciled and fail; then: they back off
        requests = ApiRequests(env)
        code, text, summary = resync(env)
        assert code == 0, text
        assert summary["failing"] == {"QuayAuthenticationFailed": 1, "QuayUnavailable": 1}, text
        assert summary["upToDate"] == 1 and summary["undelivered"] == 0
        assert "failing        2" in text
    # backing off, they cost no request of their own: no reconcile, no GET of a pull Secret; the
    # run reads each connection Secret once, whatever the objects using it
    assert reconciles(requests) == 0 and requests.count("get", "secrets") == 3
    assert {requests.count("get", "secrets", name=n) for n in ("quay-credentials", "refused", "down")} == {1}


def test_a_foreign_secret_in_the_way_is_failing_without_a_reconcile(env: Env) -> None:
    env.conn_secret()
    env.core.create_namespaced_secret(env.ns, {"metadata": {"name": "squat-pull"},
                                               "stringData": {"someone": "else's"}})
    env.dockertoken("squat", title="squat", ret="squat-pull")
    code, text, summary = resync(env)  # new: reconciled, refused
    assert code == 0 and summary["failing"] == {"ReturnSecretConflict": 1}, text
    requests = ApiRequests(env)
    code, text, summary = resync(env)  # backing off: its digest read again (the foreign Secret)
    assert code == 0 and summary["failing"] == {"ReturnSecretConflict": 1}, text
    assert reconciles(requests) == 0 and writes(requests) == 0
    assert requests.count("get", "secrets", name="squat-pull") == 1


def test_a_run_whose_api_server_is_unreachable_exits_2(env: Env, tmp_path: Path) -> None:
    # a port held, never listening: connections are refused, and no other process can take it
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        config = yaml.safe_load(env.fn.kubeconfig.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{held.getsockname()[1]}"
        dead = tmp_path / "kubeconfig"
        dead.write_text(yaml.safe_dump(config))
        code, text, summary, logs = _resync_with(env, dead)
    assert code == 2, text + logs
    assert summary["planned"] is False
    assert "NOT PLANNED" in text and "API server unreachable" in text, text + logs


def _resync_with(env: Env, kubeconfig: Path) -> tuple[int, str, dict[str, Any], str]:
    with harness.FunctionProcess(kubeconfig) as fn:
        code, text, summary = resync(env, url=fn.url)
        return code, text, summary, fn.logs()


def test_pages_follow_the_continue_token(env: Env) -> None:
    env.conn_secret()
    for i in range(5):
        ready(env, f"p-{i}")
    env.core.delete_namespaced_secret("p-3-pull", env.ns)
    quay_before = env.quay_calls()
    code, text, summary = resync(env, "--page-size", "2")
    assert code == 0, text
    assert (summary["pages"], summary["seen"], summary["upToDate"]) == (3, 5, 4)
    assert summary["repaired"] == {"secret-missing": 1}
    assert env.secret("p-3-pull") is not None
    # one token list for the run, shared by its pages and the repair (the run's wave), and the
    # code fetched again for the lost Secret
    assert env.quay_calls() - quay_before == 2


def test_creations_learn_the_registry_challenge_once_per_connection(env: Env) -> None:
    """N creations on one connection: N POSTs, one token list, one GET /v2/ (cached like the
    list), and one /v2/auth per new token (the self-check)."""
    # a connection of its own: the function process, shared by the tests, caches by connection
    env.conn_secret(host=env.quay.base_url, token=env.quay.add_oauth_token(USER, "user:admin"))
    for i in range(3):
        ready(env, f"c-{i}")
    calls = env.quay.calls
    assert (calls.get("create"), calls.get("list"), calls.get("v2"), calls.get("v2_auth")) == (3, 1, 1, 3)
    for i in range(3):
        conds = {c["type"]: c for c in (env.get(f"c-{i}") or {})["status"]["conditions"]}
        assert conds["CredentialVerified"]["reason"] == "RegistryAccepted"


def test_the_registry_check_can_be_turned_off(control_plane: Any, namespace: str, quay: Any) -> None:
    with harness.FunctionProcess(control_plane.kubeconfigs["dockertoken-reconciler"],
                                 env={"REGISTRY_CHECK": "false"}) as fn:
        env = Env(control_plane, namespace, quay, fn)
        env.conn_secret()
        ready(env, "unchecked")
        assert env.quay.calls.get("v2_auth", 0) == 0 and env.quay.calls.get("v2") == 1
        conds = {c["type"]: c for c in (env.get("unchecked") or {})["status"]["conditions"]}
        verified = conds["CredentialVerified"]
        assert (verified["status"], verified["reason"]) == ("Unknown", "CheckDisabled")
        assert "REGISTRY_CHECK=false" in verified["message"]


def test_a_plan_request_the_api_server_refuses_is_answered_500_with_why(env: Env) -> None:
    """A continue token the API server does not know (hostile, or expired): no retry can help."""
    from function.resync import plan_event

    resp = harness.post(env.fn.url, plan_event(env.ns, "not-a-continue-token", 10, "w-1"))
    assert resp.status_code == 500 and "cannot plan this page" in resp.text, resp.text
    resp = harness.post(env.fn.url, plan_event("Not_A_Namespace", "", 10, "w-1"))
    assert resp.status_code == 400 and "data.namespace" in resp.text, resp.text
