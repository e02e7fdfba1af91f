"""The fleet audit (``python -m function.audit``, issue 23) on the real control plane and two Quay
simulators: seeded with tracked, pending, adoptable, orphaned (made by hand; left by an object
whose finalizer was removed) and expired tokens, it finds every orphan, reports no tracked token
as one, lists each Quay once, and ``--revoke-orphans`` revokes exactly the orphans."""

from __future__ import annotations

import datetime
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from function import audit
from function.kube import Kube
from function.model import Ref
from tests.controlplane import ROOT
from tests.env import USER, Env, G, P, V
from tests.quaysim import ADMIN_TOKEN, QuaySimulator

pytestmark = pytest.mark.controlplane
DAY = 86400.0
LATER = 31 * DAY  # the audit runs as if a month had passed: every orphan is then old enough


@pytest.fixture
def other_quay() -> Iterator[QuaySimulator]:
    with QuaySimulator() as sim:
        yield sim


def _seed(env: Env, other: QuaySimulator) -> dict[str, str]:
    """Every kind of token; returns uuid by role."""
    env.conn_secret()
    env.conn_secret("same-account")  # another Secret with the same Quay account: the same list
    env.conn_secret("other-quay", host=other.base_url, token=ADMIN_TOKEN)
    ids: dict[str, str] = {}
    env.dockertoken("tracked", title="tracked", ret="tracked-pull")
    env.dockertoken("rotating", title="rotating", ret="rotating-pull")
    env.dockertoken("revoked-by-hand", title="gone", ret="gone-pull")
    env.dockertoken("finalizer-removed", title="left", ret="left-pull")
    env.dockertoken("same-account", title="shared", ret=None, connSecretRef={"name": "same-account"})
    for name in ("tracked", "rotating", "revoked-by-hand", "finalizer-removed", "same-account"):
        assert env.send("add", name).status_code == 204
        ids[name] = (env.get(name) or {})["status"]["uuid"]
    # a rotation asked for by hand: the old token waits for revocation (2 minutes)
    env.custom.patch_namespaced_custom_object(G, V, env.ns, P, "rotating", {"metadata": {"annotations": {
        "quay.herve4m.github.io/renew-request": "r1"}}})
    assert env.send("update", "rotating").status_code == 204
    status = (env.get("rotating") or {})["status"]
    assert status["pendingRevocation"] == [ids["rotating"]]
    ids["pending"], ids["rotating"] = ids["rotating"], status["uuid"]
    # a finalizer removed by hand, then the object deleted: its token stays in Quay, untracked
    env.custom.patch_namespaced_custom_object(G, V, env.ns, P, "finalizer-removed",
                                              {"metadata": {"finalizers": None}})
    env.delete("finalizer-removed")
    ids["left-orphan"] = ids.pop("finalizer-removed")
    env.quay_revoke(ids["revoked-by-hand"])
    ids["by-hand"] = env.quay_create("made in the UI")
    now = env.quay.state.now()
    ids["expired"] = env.quay.state.create_token(USER, "expired", created=now - 3 * DAY,
                                                 expiration=now - DAY, use_config=False).uuid
    # an object with no token yet (no event sent): the token titled like it is its to adopt
    env.dockertoken("waiting", title="adopt-me", ret=None)
    ids["adoptable"] = env.quay_create("adopt-me")
    ids["other-orphan"] = other.state.create_token(USER, "elsewhere").uuid
    env.dockertoken("on-other-quay", title="not-made-yet", ret=None, connSecretRef={"name": "other-quay"})
    env.quay.reset_counters()
    other.reset_counters()
    return ids


def _run(env: Env, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=LATER)
    code = audit.main(list(argv), kube=Kube.from_kubeconfig(env.cp.kubeconfigs["admin"]), out=out,
                      now=lambda: later)
    return code, out.getvalue()


def _mine(doc: dict[str, Any], env: Env, other: QuaySimulator) -> dict[str, dict[str, Any]]:
    """Rows by uuid, of this test's two Quays (other tests' objects live in the cluster too)."""
    hosts = {env.quay.base_url, other.base_url}
    return {r["uuid"]: r for c in doc["connections"] if c["host"] in hosts for r in c["tokens"]}


def test_the_audit_finds_every_orphan_and_only_orphans(env: Env, other_quay: QuaySimulator) -> None:
    ids = _seed(env, other_quay)
    code, text = _run(env, "--json")
    doc = json.loads(text)
    # other tests' objects share the cluster, some with connections that cannot be audited
    assert code == (1 if doc["totals"]["errors"] else 0)
    assert not [c for c in doc["connections"] if c["error"] and c["secrets"][0].startswith(f"{env.ns}/")]
    rows = _mine(doc, env, other_quay)
    states = {role: (rows[u]["state"], rows[u]["owner"]) for role, u in ids.items() if u in rows}
    ns = env.ns
    assert states == {
        "tracked": ("tracked", f"{ns}/tracked"), "rotating": ("tracked", f"{ns}/rotating"),
        "pending": ("pending", f"{ns}/rotating"), "same-account": ("tracked", f"{ns}/same-account"),
        "left-orphan": ("orphan", ""), "by-hand": ("orphan", ""), "expired": ("orphan", ""),
        "adoptable": ("adoptable", f"{ns}/waiting"), "other-orphan": ("orphan", ""),
    }
    assert ids["revoked-by-hand"] not in rows
    assert rows[ids["expired"]]["expired"] and not rows[ids["by-hand"]]["expired"]
    assert rows[ids["by-hand"]]["unused_days"] == 31  # never used, made a month before the audit
    missing = [m for c in doc["connections"] for m in c["missing"] if m["owner"].startswith(f"{ns}/")]
    assert missing == [{"owner": f"{ns}/revoked-by-hand", "uuid": ids["revoked-by-hand"]}]
    # one list per Quay account: the two Secrets of the same account shared theirs
    shared = next(c for c in doc["connections"] if c["host"] == env.quay.base_url)
    assert sorted(shared["secrets"]) == [f"{ns}/quay-credentials", f"{ns}/same-account"]
    assert env.quay.calls == {"list": 1} and other_quay.calls == {"list": 1}

    # the table a person reads says the same
    code, table = _run(env, "--connection", f"{ns}/quay-credentials")
    assert code == 0
    line = next(x for x in table.splitlines() if ids["by-hand"] in x)
    assert line.split()[0] == "orphan" and "unused 31d" in line and "made in the UI" in line
    assert f"missing from Quay: {ns}/revoked-by-hand records {ids['revoked-by-hand']}" in table


def test_revoke_orphans_prints_its_plan_and_needs_yes(env: Env, other_quay: QuaySimulator) -> None:
    ids = _seed(env, other_quay)
    orphans = {ids[k] for k in ("left-orphan", "by-hand", "expired")}
    before = {t["uuid"] for t in env.tokens()}

    code, plan = _run(env, "--connection", f"{env.ns}/quay-credentials", "--revoke-orphans",
                      "--older-than", "30d")
    assert code == 0
    assert all(u in plan for u in orphans) and "Nothing revoked: run again with --yes" in plan
    assert {t["uuid"] for t in env.tokens()} == before and "revoke" not in env.quay.calls

    code, done = _run(env, "--connection", f"{env.ns}/quay-credentials", "--revoke-orphans",
                      "--older-than", "30d", "--yes")
    assert code == 0, done
    assert f"{len(orphans)} orphan(s) revoked." in done
    assert {t["uuid"] for t in env.tokens()} == before - orphans  # exactly the orphans
    assert env.quay.calls.get("revoke") == len(orphans)
    assert {t["uuid"] for t in other_quay.tokens()} == {ids["other-orphan"]}  # not the named connection


def test_revoke_refuses_young_limits_and_missing_flags(env: Env) -> None:
    env.conn_secret()
    for argv, fragment in ((["--revoke-orphans"], "--revoke-orphans needs --older-than"),
                           (["--yes"], "go with --revoke-orphans"),
                           (["--revoke-orphans", "--older-than", "1d2h"], "--older-than: '1d2h'"),
                           (["--connection", "nope"], "--connection: 'nope' is not NAMESPACE/NAME"),
                           (["--connection", "../x"], "--connection: '../x' is not NAMESPACE/NAME")):
        proc = subprocess.run([sys.executable, "-m", "function.audit", *argv], capture_output=True,
                              text=True, cwd=ROOT, timeout=60,
                              env={"KUBECONFIG": str(env.cp.kubeconfigs["admin"]), "PATH": ""})
        assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr
    code, _ = _run(env, "--revoke-orphans", "--older-than", "1m")
    assert code == 2


def test_the_command_runs_as_a_process_and_reports_a_broken_connection(env: Env) -> None:
    env.conn_secret("broken", host="", token="x")
    env.dockertoken("broken", ret=None, connSecretRef={"name": "broken"})
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "function.audit", "--connection", f"{env.ns}/broken"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={"KUBECONFIG": str(env.cp.kubeconfigs["admin"]), "PATH": ""})
    assert proc.returncode == 1, proc.stderr
    assert f"Connection {env.ns}/broken" in proc.stdout and "error: connSecretRef" in proc.stdout
    assert time.monotonic() - started < 30


def test_an_orphan_claimed_between_the_audit_and_the_revocation_is_kept(env: Env,
                                                                        other_quay: QuaySimulator) -> None:
    ids = _seed(env, other_quay)
    kube = Kube.from_kubeconfig(env.cp.kubeconfigs["admin"])
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=LATER)
    report = audit.audit(kube, now=later, unused_after=datetime.timedelta(days=30),
                         connection=Ref(env.ns, "quay-credentials"))
    # meanwhile a DockerToken records the hand-made token (as an adoption would)
    env.dockertoken("adopter", title="made in the UI", ret=None)
    env.custom.patch_namespaced_custom_object_status(G, V, env.ns, P, "adopter",
                                                     {"status": {"uuid": ids["by-hand"]}})
    out = io.StringIO()
    count = audit.revoke_orphans(kube, report, older_than=datetime.timedelta(days=30), now=later, out=out)
    assert f"kept {ids['by-hand']}: a DockerToken claims it now" in out.getvalue()
    left = {t["uuid"] for t in env.tokens()}
    assert count == 2 and ids["by-hand"] in left
    assert ids["left-orphan"] not in left and ids["expired"] not in left
