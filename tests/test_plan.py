"""The decision table (README "The decision table"), one row per line: decide.plan and every
continuation, pure, at a fixed clock. No server, no fakes: (observed, Quay's answers) -> steps,
status, Events and report, in milliseconds. apply.py performs these steps; the end-to-end tests
prove that it does."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
from typing import Any

import pytest

from function import claims, conditions, decide, pullsecret, records, steps
from function.errors import (
    ConfigError,
    Conflict,
    KubeTransient,
    PermanentError,
    QuayAuthError,
    QuayFeatureDisabled,
    QuayInvalidRequest,
    QuayNotFound,
    QuayTLSError,
    QuayTransient,
    QuayUnexpectedResponse,
    TemporaryError,
)
from function.model import FINALIZER, RECONCILE_REQUEST, RENEW_REQUEST, DockerToken, Ref, Retry, Status, Token
from function.result import Failure, Report
from tests.builders import (
    CONN,
    CREATED,
    EARLIER,
    LATER,
    NOW,
    PULL,
    TOKEN,
    at,
    dockertoken,
    observed,
    secret,
    settled,
)


def edited(**meta: Any) -> dict[str, Any]:
    """Our pull Secret with one copy of the code edited by hand."""
    body = secret(**meta)
    body["data"]["tokenCode"] = base64.b64encode(b"EDITED").decode()
    return body


def _renew(value: str, status: dict[str, Any]) -> dict[str, Any]:
    """A settled object whose renew-request annotation (``kubectl dockertoken renew``) is ``value``."""
    obj = dockertoken(status)
    obj["metadata"]["annotations"][RENEW_REQUEST] = value
    return obj


def summary(plan: steps.Plan) -> dict[str, Any]:
    """What a row checks: the steps (by kind and action), the token's first question, the report."""
    kinds = [f"{type(s).__name__}:{getattr(s, 'action', '')}".rstrip(":") for s in plan.steps]
    first = next((s.first for s in plan.steps if isinstance(s, steps.ObtainToken)), None)
    return {"steps": kinds, "token": type(first).__name__ if first else "", "result": plan.report.result,
            "reason": plan.report.reason}


def failing(reason: str, *, deleting: bool = False, **status: Any) -> dict[str, Any]:
    """The status of an object whose last pass failed with ``reason`` (retry due in 5 min)."""
    ob = observed(dockertoken(deleting=deleting))
    failed = decide.failed(ob, Status(), Failure(reason, "m"), inputs=decide.inputs_digest(ob))
    raw = {k: v for k, v in failed.status.merge_patch(Status()).items() if v is not None}
    return {**raw, **status}


# -- plan(): one row per line of the decision table ---------------------------------------------
ROWS = [
    # (id, observed, expected summary)
    ("new-object", observed(dockertoken(finalizer=False)),
     {"steps": ["PatchMetadata:add-finalizer", "ObtainToken"], "token": "Acquire", "result": "ready"}),
    ("claim-labels-first", observed(dockertoken()),
     {"steps": ["PatchMetadata:set-labels", "ObtainToken"], "token": "Acquire"}),
    ("migrated-without-uuid", observed(dockertoken({"existInQuay": True})),
     {"token": "Acquire"}),
    ("in-order-event", observed(dockertoken(settled()), ret_secret=secret()),
     {"steps": ["PatchMetadata:set-labels", "WriteStatus"], "token": "", "result": "ready",
      "reason": "TokenReady"}),
    ("in-order-resync", observed(dockertoken(settled()), ret_secret=secret(), verify=True),
     {"token": "Verify"}),
    ("secret-deleted", observed(dockertoken(settled()), ret_secret=None),
     {"token": "Fetch"}),
    ("secret-edited", observed(dockertoken(settled()), ret_secret=edited()),
     {"token": "Fetch"}),
    ("no-return-secret", observed(dockertoken(settled(), ret=False)),
     {"token": "", "result": "ready"}),
    ("renamed", observed(dockertoken(settled(), title="other"), ret_secret=secret()),
     {"token": "Acquire"}),
    ("expired", observed(dockertoken(settled(expiration=EARLIER)), ret_secret=secret()),
     {"token": "Acquire"}),
    ("renewal-due", observed(dockertoken(settled(expiration=LATER, renewalTime=at(-1))), ret_secret=secret()),
     {"token": "Acquire"}),
    ("renew-requested", observed(_renew("r1", settled(expiration=LATER)), ret_secret=secret()),
     {"token": "Acquire"}),
    ("renew-request-answered", observed(_renew("r1", settled(renewRequest="r1")), ret_secret=secret()),
     {"token": "", "result": "ready"}),
    ("renewal-not-due", observed(dockertoken(settled(expiration=LATER, renewalTime=at(60))), ret_secret=secret()),
     {"token": "", "result": "ready"}),
    ("grace-running", observed(dockertoken(settled(pendingRevocation=["u0"], revokeAfter=at(1))),
                               ret_secret=secret()),
     {"steps": ["PatchMetadata:set-labels", "WriteStatus"]}),
    ("grace-over", observed(dockertoken(settled(pendingRevocation=["u0"], revokeAfter=at(-1))),
                            ret_secret=secret()),
     {"steps": ["PatchMetadata:set-labels", "Revoke:revoke-old-token", "WriteStatus"]}),
    ("ret-secret-moved", observed(dockertoken(settled(retSecret={"namespace": "ns", "name": "old"})),
                                  ret_secret=secret(), old_ret_secret=secret(name="old")),
     {"steps": ["PatchMetadata:set-labels", "DeleteSecret:delete-secret", "WriteStatus"]}),
    ("service-account-attached", observed(dockertoken(settled(), serviceAccounts=["builder"]),
                                          ret_secret=secret(), service_accounts={"builder": {
                                              "metadata": {"resourceVersion": "3"}}}),
     {"steps": ["PatchMetadata:set-labels", "EditServiceAccount:attach-to-serviceaccount",
                "WriteStatus"]}),
    ("service-account-missing", observed(dockertoken(settled(), serviceAccounts=["later"]),
                                         ret_secret=secret(), service_accounts={"later": None}),
     {"steps": ["PatchMetadata:set-labels", "WriteStatus"], "result": "ready"}),
    # failures recorded before any Quay call
    ("invalid-configuration", observed(dockertoken(title="")),
     {"steps": ["WriteStatus"], "result": "failed", "reason": "InvalidConfiguration"}),
    ("invalid-renew-before", observed(dockertoken(renewBefore="2d")),
     {"result": "failed", "reason": "InvalidConfiguration"}),
    ("invalid-template", observed(dockertoken(secretTemplate={"labels": {"x y": "1"}})),
     {"result": "failed", "reason": "InvalidConfiguration"}),
    ("connection-secret-not-found", observed(conn_error=PermanentError("connSecretRef: conn: secret not found")
                                             .with_reason(conditions.SECRET_NOT_FOUND)),
     {"steps": ["WriteStatus"], "result": "failed", "reason": "ConnectionSecretNotFound"}),
    ("connection-secret-invalid", observed(conn_error=ConfigError('connSecretRef: conn: key "host" is missing')),
     {"result": "failed", "reason": "InvalidConfiguration"}),
    ("cross-namespace-denied", observed(consent_error=PermanentError("denied")
                                        .with_reason(conditions.CROSS_NAMESPACE_DENIED)),
     {"result": "failed", "reason": "CrossNamespaceRefDenied"}),
    ("return-secret-conflict", observed(ret_secret={"metadata": {"name": PULL, "resourceVersion": "1"}}),
     {"result": "failed", "reason": "ReturnSecretConflict"}),
    # the convergence rule: backoff, and what resets it
    ("backoff", observed(dockertoken(failing("QuayAuthenticationFailed"))),
     {"steps": [], "token": "", "result": "backoff",
      "reason": "QuayAuthenticationFailed"}),
    ("backoff-due", observed(dockertoken(failing("QuayUnavailable")), now=NOW + datetime.timedelta(minutes=5)),
     {"token": "Acquire", "result": "ready"}),
    ("backoff-reset-by-spec", observed(dockertoken(failing("QuayAuthenticationFailed"), generation=2)),
     {"token": "Acquire"}),
    ("backoff-reset-by-connection", observed(dockertoken(failing("QuayAuthenticationFailed")), conn_version="8"),
     {"token": "Acquire"}),
    # deletion
    ("deletion-with-token", observed(dockertoken(settled(), deleting=True), ret_secret=secret()),
     {"steps": ["Revoke:revoke-token", "WriteStatus", "ReleaseConnection", "DeleteSecret:delete-secret",
                "RemoveFinalizer:remove-finalizer"], "result": "finalized"}),
    ("deletion-preserve", observed(dockertoken(settled(), deleting=True, preserveInQuayOnDeletion=True),
                                   ret_secret=secret()),
     {"steps": ["ReleaseConnection", "DeleteSecret:delete-secret", "RemoveFinalizer:remove-finalizer"],
      "result": "finalized"}),
    ("deletion-never-made-a-token", observed(dockertoken(deleting=True), conn_error=PermanentError("gone")),
     {"steps": ["ReleaseConnection", "RemoveFinalizer:remove-finalizer"], "result": "finalized"}),
    ("deletion-old-operator-object", observed(dockertoken({"existInQuay": True}, deleting=True)),
     {"steps": ["RevokeByTitle", "WriteStatus", "ReleaseConnection", "RemoveFinalizer:remove-finalizer"],
      "result": "finalized"}),
    ("deletion-during-creation", observed(dockertoken(
        {"creation": {"id": "x", "title": "mytoken", "since": at(0)}}, deleting=True)),
     {"steps": ["WaitForCreator", "RevokeByTitle", "WriteStatus", "ReleaseConnection",
                "RemoveFinalizer:remove-finalizer"]}),
    ("deletion-cleanup-blocked", observed(dockertoken(settled(), deleting=True), conn_error=PermanentError(
        "connSecretRef: conn: secret not found").with_reason(conditions.SECRET_NOT_FOUND)),
     {"steps": ["WriteStatus"], "result": "blocked", "reason": "CleanupBlocked"}),
    ("deletion-backoff", observed(dockertoken(failing("CleanupBlocked", deleting=True, uuid="u1"), deleting=True)),
     {"steps": [], "result": "backoff"}),
    ("deleted-without-finalizer", observed(dockertoken(deleting=True, finalizer=False)),
     {"steps": [], "result": "gone"}),
]


@pytest.mark.parametrize(("ob", "expected"), [pytest.param(ob, exp, id=i) for i, ob, exp in ROWS])
def test_plan(ob: decide.Observed, expected: dict[str, Any]) -> None:
    got = summary(decide.plan(ob))
    assert {k: got[k] for k in expected} == expected


def test_a_settled_object_plans_no_write_and_no_event() -> None:
    """The convergence rule's success half: the echo of a pass's own write changes nothing."""
    ob = observed(dockertoken(settled(), finalizer=True), ret_secret=secret())
    plan = decide.plan(ob)
    assert plan.status is not None and plan.status.merge_patch(ob.dt.status) == {} and not plan.events


def test_a_failure_records_its_retry_and_its_echo_backs_off() -> None:
    """The failure half: the status the failure writes makes the next plan a backoff."""
    ob = observed(conn_error=QuayAuthError("refused"))
    plan = decide.plan(ob)
    assert plan.status is not None and plan.status.retry is not None
    assert plan.status.retry.attempts == 1 and plan.status.retry.not_before == at(5)
    assert [e.reason for e in plan.events] == ["QuayAuthenticationFailed"]  # Ready turned False
    raw = {k: v for k, v in plan.status.merge_patch(Status()).items() if v is not None}
    echo = decide.plan(observed(dockertoken(raw), conn_error=QuayAuthError("refused")))
    assert echo.report.result == "backoff" and not echo.events and echo.steps == ()


@pytest.mark.parametrize(("attempts", "delay_minutes"), [(1, 5), (2, 10), (3, 20), (7, 320), (8, 360), (30, 360)])
def test_backoff_doubles_up_to_six_hours(attempts: int, delay_minutes: int) -> None:
    ob = observed()
    previous = Status.from_object(failing("QuayUnavailable")).retry
    assert previous is not None
    status = Status(retry=Retry(previous.inputs, attempts - 1, previous.not_before, True))
    retry = records.retry_record(status, decide.inputs_digest(ob), Failure("QuayUnavailable", "m"), NOW)
    assert (retry.attempts, retry.not_before) == (attempts, at(delay_minutes))


def test_the_reconcile_request_annotation_resets_the_backoff() -> None:
    obj = dockertoken(failing("QuayAuthenticationFailed"))
    assert decide.plan(observed(obj)).report.result == "backoff"
    obj["metadata"]["annotations"] = {RECONCILE_REQUEST: "1"}
    assert decide.plan(observed(obj)).report.result == "ready"


def test_new_object_acquires_with_the_old_token_revoked_after() -> None:
    first = decide.plan(observed(dockertoken(finalizer=False))).steps[-1]
    assert isinstance(first, steps.ObtainToken) and first.first == steps.Acquire(
        "mytoken", rotation=False, revoke_old=True, grace_until="", why="", status=Status())


@pytest.mark.parametrize(("obj", "why", "rotation", "grace"), [
    pytest.param(dockertoken(settled(), title="other"), "spec.name changed from 'mytoken'; replaced the token",
                 False, "", id="renamed"),
    pytest.param(dockertoken(settled(expiration=EARLIER)), f"token u1 expired on {EARLIER}; created a replacement",
                 False, "", id="expired"),
    pytest.param(dockertoken(settled(expiration=LATER, renewalTime=at(-1))), "", True, at(2), id="rotation"),
])
def test_replacements_say_why(obj: dict[str, Any], why: str, rotation: bool, grace: str) -> None:
    step = decide.plan(observed(obj, ret_secret=secret())).steps[-1]
    assert isinstance(step, steps.ObtainToken) and isinstance(step.first, steps.Acquire)
    assert (step.first.why, step.first.rotation, step.first.grace_until) == (why, rotation, grace)


def test_deletion_with_a_token_revokes_uuid_and_pending_then_detaches() -> None:
    obj = dockertoken(settled(pendingRevocation=["u0"], serviceAccounts=["builder"]), deleting=True,
                      serviceAccounts=["builder"])
    ob = observed(obj, ret_secret=secret(), service_accounts={"builder": {
        "metadata": {"resourceVersion": "3"}, "imagePullSecrets": [{"name": "mirror"}, {"name": PULL}]}})
    revoke, forget, release, detach, delete, remove = decide.plan(ob).steps
    assert revoke == steps.Revoke(("u1", "u0"), "revoke-token")
    # nothing left in Quay, said before the connection Secret is released
    assert isinstance(forget, steps.WriteStatus) and forget.status.uuid == "" and not forget.status.exist_in_quay
    assert release == steps.ReleaseConnection(Ref("ns", "conn"))
    assert detach == steps.EditServiceAccount("ns", "builder", ({"name": "mirror"},), "3",
                                               "detach-from-serviceaccount")
    assert delete == steps.DeleteSecret(Ref("ns", PULL), "secret-uid")
    assert remove == steps.RemoveFinalizer(())


# -- continuations: one row per answer ----------------------------------------------------------
VERIFY = steps.Verify("u1", TOKEN, "w", Status(uuid="u1"))
LISTED = Token("u1", "mytoken", CREATED, LATER, "Thu, 26 Nov 2026 11:59:00 -0000")
USED = Token("u1", "mytoken", CREATED, LATER, "Fri, 27 Nov 2026 10:00:00 -0000")
SELF_CHECKED = Token("u1", "mytoken", CREATED, LATER, "Thu, 26 Nov 2026 09:00:30 -0000")  # 30 s on


@pytest.mark.parametrize(("listed", "expected"), [
    # the Secret holds no lastAccessed: Quay's, past the self-check window, is the first use
    # (lastaccess.py)
    pytest.param(LISTED, steps.Obtained(Token("u1", "mytoken", CREATED, LATER, LISTED.last_accessed,
                                              "CODE1"), "kept", "", VERIFY.status),
                 id="listed-keeps-with-quays-dates-and-first-use"),
    pytest.param(SELF_CHECKED, steps.Obtained(Token("u1", "mytoken", CREATED, LATER, "", "CODE1"),
                                              "kept", "", VERIFY.status), id="our-own-check-is-not-a-use"),
    pytest.param(USED, steps.Obtained(Token("u1", "mytoken", CREATED, LATER, USED.last_accessed, "CODE1"),
                                       "kept", "", VERIFY.status), id="last-accessed-a-day-on-is-kept"),
    pytest.param(None, steps.Fetch("u1", VERIFY.status), id="missing-is-confirmed-with-a-get"),
    pytest.param(Token("u1", "mytoken", CREATED, EARLIER), steps.Fetch("u1", VERIFY.status),
                 id="expired-in-the-list-is-confirmed"),
])
def test_verified(listed: Token | None, expected: steps.TokenWork) -> None:
    assert decide.verified(observed(), VERIFY, listed) == expected


def test_fetched() -> None:
    fetch = steps.Fetch("u1", Status(uuid="u1"))
    assert decide.fetched(observed(), fetch, TOKEN) == steps.Obtained(TOKEN, "fetched", "", fetch.status)
    gone = decide.fetched(observed(), fetch, None)
    assert gone == steps.Acquire("mytoken", rotation=False, revoke_old=False, grace_until="", why=(
        "token u1 no longer exists in Quay (revoked or expired); created a replacement"), status=fetch.status)


@pytest.mark.parametrize(("rotation", "adopted", "how"), [
    (False, False, "created"), (False, True, "adopted"), (True, False, "rotated"), (True, True, "rotated")])
def test_acquired(rotation: bool, adopted: bool, how: str) -> None:
    step = steps.Acquire("mytoken", rotation, True, "", "", Status())
    assert decide.acquired(step, TOKEN, adopted=adopted, status=Status(uuid="u1")) == steps.CheckRegistry(
        TOKEN, how, "", Status(uuid="u1"))


class _Challenge:
    def __init__(self, realm: str, service: str | None) -> None:
        self.realm, self.service = realm, service


def _verified(work: steps.TokenWork) -> dict[str, Any]:
    assert isinstance(work, steps.Obtained)
    cond = Status(conditions=work.status.conditions).condition(conditions.CREDENTIAL_VERIFIED) or {}
    return {"status": cond.get("status"), "reason": cond.get("reason")}


CHECK = steps.CheckRegistry(TOKEN, "created", "", Status(uuid="u1"))


def test_registry_answers() -> None:
    ob = observed()
    assert _verified(decide.challenged(ob, CHECK, None)) == {"status": "Unknown", "reason": "NoRegistryChallenge"}
    same = decide.challenged(ob, CHECK, _Challenge("https://quay.example/v2/auth", CONN.registry))
    assert isinstance(same, steps.CheckCredential) and same.status.registry == ""
    other = decide.challenged(ob, CHECK, _Challenge("https://quay.example/v2/auth", "registry.example"))
    assert isinstance(other, steps.CheckCredential) and other.status.registry == "registry.example"
    assert _verified(decide.credential_checked(ob, other, True, "ok")) == {"status": "True",
                                                                          "reason": "RegistryAccepted"}
    assert _verified(decide.credential_checked(ob, other, False, "401")) == {"status": "False",
                                                                            "reason": "RegistryRefused"}
    failed = decide.unchecked(ob, other, QuayTransient("GET /v2/auth: 503"))
    assert _verified(failed) == {"status": "Unknown", "reason": "CheckFailed"}
    assert isinstance(failed, steps.Obtained) and failed.status.registry == "registry.example"


def test_registry_check_turned_off_costs_no_login_but_learns_the_registry() -> None:
    """REGISTRY_CHECK=false: no /v2/auth (one bcrypt in Quay per new token); the challenge's
    registry name still reaches status and the pull Secret."""
    ob = dataclasses.replace(observed(), registry_check=False)
    done = decide.challenged(ob, CHECK, _Challenge("https://quay.example/v2/auth", "registry.example"))
    assert _verified(done) == {"status": "Unknown", "reason": "CheckDisabled"}
    assert isinstance(done, steps.Obtained) and done.status.registry == "registry.example"


NEW = Token("u2", "mytoken", CREATED, code="CODE2")


def _settle(how: str, *, ret_secret: dict[str, Any] | None = None, token: Token = NEW,
            registry: str = "") -> steps.Settlement:
    """settle() of a settled object whose Secret needs its token again (``ret_secret``)."""
    ob = observed(dockertoken(settled()), ret_secret=ret_secret)
    ensure = steps.Ensure(held=None, write_secret=Ref("ns", PULL), deletes=(), sa_edits=(), attached=())
    return decide.settle(ob, ensure, steps.Obtained(token, how, "", ob.dt.status.with_(registry=registry)))


@pytest.mark.parametrize(("how", "events"), [
    ("created", ["TokenCreated"]), ("adopted", ["TokenAdopted"]), ("rotated", ["TokenRotated"]), ("fetched", [])])
def test_settle_records_the_transition(how: str, events: list[str]) -> None:
    done = _settle(how, ret_secret=edited())
    assert [e.reason for e in done.events] == events
    assert [type(s).__name__ for s in done.steps] == ["ReplaceSecret", "WriteStatus"]
    assert done.status.ret_secret == Ref("ns", PULL) and done.report == Report("ready", "TokenReady", "")


def test_settle_restores_a_deleted_secret_naming_the_registry_too() -> None:
    done = _settle("fetched", token=TOKEN, registry="registry.example")
    create, _ = done.steps
    assert isinstance(create, steps.CreateSecret)
    assert [e.reason for e in done.events] == ["SecretRestored"]
    auths = json.loads(pullsecret.decoded(create.body)[".dockerconfigjson"])["auths"]
    assert set(auths) == {"quay.example", "registry.example"}


def test_settle_recreates_a_secret_of_another_type() -> None:
    current = secret()
    current["type"] = "Opaque"
    recreate, _ = _settle("fetched", token=TOKEN, ret_secret=current).steps
    assert isinstance(recreate, steps.RecreateSecret) and recreate.uid == "secret-uid"


def test_settle_keeps_labels_others_added() -> None:
    current = edited(labels={"team": "blue"})
    replace, _ = _settle("fetched", token=TOKEN, ret_secret=current).steps
    assert isinstance(replace, steps.ReplaceSecret)
    assert replace.body["metadata"]["labels"]["team"] == "blue"
    assert replace.body["metadata"]["resourceVersion"] == "5"


def test_a_replacement_says_why_until_the_next_change() -> None:
    ob = observed(dockertoken(settled()))
    ensure = next(s.ensure for s in decide.plan(ob).steps if isinstance(s, steps.ObtainToken))
    done = decide.settle(ob, ensure, steps.Obtained(TOKEN, "created", "token u0 expired", ob.dt.status))
    assert done.report == Report("ready", "TokenReplaced", "token u0 expired")
    raw = {k: v for k, v in done.status.merge_patch(Status()).items() if v is not None}
    again = decide.plan(observed(dockertoken(raw), ret_secret=secret()))
    assert again.report == Report("ready", "TokenReplaced", "token u0 expired")


@pytest.mark.parametrize(("exc", "result", "reason", "temporary"), [
    (QuayAuthError("401"), "failed", "QuayAuthenticationFailed", False),
    (QuayTLSError("cert"), "failed", "QuayTLSError", False),
    (QuayInvalidRequest("400"), "failed", "QuayInvalidRequest", False),
    (QuayFeatureDisabled("404"), "failed", "QuayFeatureDisabled", False),
    (QuayNotFound("404"), "failed", "QuayNotFound", False),
    (QuayUnexpectedResponse("?"), "failed", "QuayUnexpectedResponse", False),
    (QuayTransient("503"), "retrying", "QuayUnavailable", True),
    (ConfigError("retSecretRef.namespace: missing"), "failed", "InvalidConfiguration", False),
    (KubeTransient("503"), None, None, None),
    (Conflict("409"), None, None, None),
    (TemporaryError("rival").with_reason(conditions.CREATION_IN_PROGRESS), None, None, None),
    (RuntimeError("bug"), None, None, None),
])
def test_on_error(exc: Exception, result: str | None, reason: str | None, temporary: bool | None) -> None:
    plan = decide.plan(observed())
    done = decide.on_error(observed(), plan, plan.steps[-1], Status(), exc, lease_held=False)
    if result is None:
        assert done is None  # nothing recorded: 503, redelivered
        return
    assert done is not None
    assert (done.report.result, done.report.reason, done.report.temporary) == (result, reason, temporary)
    assert done.status.retry is not None and done.report.retry_at == done.status.retry.not_before


def test_on_error_frees_our_lease_and_blocks_a_deletion() -> None:
    lease = {"creation": {"id": "ours", "title": "mytoken", "since": at(0)}}
    plan = decide.plan(observed())
    held = decide.on_error(observed(), plan, plan.steps[-1], Status.from_object(lease), QuayTransient("503"),
                           lease_held=True)
    assert held is not None and held.status.creation is None
    gone = decide.plan(observed(dockertoken(settled(), deleting=True)))
    blocked = decide.on_error(observed(), gone, gone.steps[0], Status(), QuayAuthError("401"), lease_held=False)
    assert blocked is not None and blocked.report.result == "blocked"
    assert blocked.report.reason == "CleanupBlocked" and FINALIZER in blocked.report.message
    meta = steps.PatchMetadata(None, {"a": "true"}, "set-labels")
    refused = decide.on_error(observed(), plan, meta, Status(), PermanentError("422"), lease_held=False)
    assert refused is not None and refused.report.reason == "Failed"  # any phase's refusal is recorded
    failing = decide.plan(observed(conn_error=QuayAuthError("401")))
    assert decide.on_error(observed(), failing, failing.steps[-1], Status(), PermanentError("422"),
                           lease_held=False) is None  # the failure's own write: nothing more to record


def test_by_title_spares_tokens_others_track() -> None:
    others = [{"metadata": {"uid": "other"}, "status": {"uuid": "t2"}}]
    tokens = [Token("t1", "mytoken"), Token("t2", "mytoken"), Token("t3", "else")]
    step = steps.RevokeByTitle("mytoken", ("p1",))
    assert decide.by_title(observed(), step, others, tokens) == steps.Revoke(("p1", "t1"), "revoke-token")


def test_recorded_keeps_the_old_token_for_its_grace() -> None:
    dt = DockerToken.from_object(dockertoken(settled(expiration=LATER)))
    new = Token("u2", "mytoken", CREATED, LATER, code="CODE2")
    rotated = records.recorded(dt.status, dt, new, revoke_old=True, grace_until=at(2))
    assert (rotated.uuid, rotated.pending_revocation, rotated.revoke_after, rotated.creation) == (
        "u2", ("u1",), at(2), None)
    replaced = records.recorded(dt.status, dt, new, revoke_old=False)
    assert replaced.pending_revocation == () and replaced.revoke_after == ""


def _labelled(status: dict[str, Any]) -> dict[str, Any]:
    """An object carrying the claim label its passes put on it."""
    obj = dockertoken(status)
    obj["metadata"]["labels"][claims.claim_label(CONN.registry, "mytoken")] = "true"
    return obj


@pytest.mark.parametrize(("ob", "listed", "in_order"), [
    pytest.param(observed(_labelled(settled()), ret_secret=secret(), verify=True),
                 {"u1": Token("u1", "mytoken", CREATED)}, True, id="listed-and-intact"),
    pytest.param(observed(_labelled(settled()), ret_secret=secret(), verify=True), {}, False,
                 id="missing-from-the-list-needs-a-get"),
    pytest.param(observed(_labelled(settled()), ret_secret=secret(), verify=True), None, False,
                 id="no-list"),
    # Quay's lastAccessed is written at its first use past the self-check window, then at most
    # once per LAST_ACCESSED_REFRESH (lastaccess.py); the Secret here holds none
    pytest.param(observed(_labelled(settled()), ret_secret=secret(), verify=True),
                 {"u1": Token("u1", "mytoken", CREATED, "", "Thu, 26 Nov 2026 09:00:30 -0000")}, True,
                 id="last-accessed-moved-by-our-own-check"),
    pytest.param(observed(_labelled(settled()), ret_secret=secret(), verify=True),
                 {"u1": Token("u1", "mytoken", CREATED, "", "Thu, 26 Nov 2026 11:59:00 -0000")}, False,
                 id="last-accessed-first-use"),
    pytest.param(observed(_labelled(settled()), ret_secret=None, verify=True),
                 {"u1": Token("u1", "mytoken", CREATED)}, False, id="secret-deleted"),
    pytest.param(observed(_labelled(failing("QuayAuthenticationFailed"))), {}, True, id="backing-off"),
])
def test_a_bulk_resync_plans_a_page_from_one_list(ob: decide.Observed, listed: dict[str, Token] | None,
                                                  in_order: bool) -> None:
    """The same core over objects observed from lists (issue 22): which need a reconcile."""
    assert decide.is_in_order(ob, decide.without_quay(ob, decide.plan(ob), listed)) is in_order

