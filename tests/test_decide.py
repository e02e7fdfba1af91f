"""The pure decisions: token plans, leases, adoption, revocation and status patches. No I/O."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from function import claims, conditions, decide, records
from function.model import DockerToken, Status, Token

NOW = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC)


def make_dt(*, status: dict[str, Any] | None = None, title: str = "mytoken", ret: bool = True,
            uid: str = "uid-1") -> DockerToken:
    spec: dict[str, Any] = {"connSecretRef": {"name": "conn"}, "name": title}
    if ret:
        spec["retSecretRef"] = {"name": "pull"}
    return DockerToken.from_object({"metadata": {"namespace": "ns", "name": "dt", "uid": uid,
                                                 "generation": 1}, "spec": spec, "status": status or {}})


HELD = Token("u1", "mytoken", "created", code="CODE")


@pytest.mark.parametrize(
    ("status", "title", "ret", "held", "verify", "plan"),
    [
        pytest.param({}, "mytoken", True, None, False, decide.TokenStep.ACQUIRE, id="new-object"),
        pytest.param({"existInQuay": True}, "mytoken", True, None, False, decide.TokenStep.ACQUIRE,
                     id="migrated-without-uuid"),
        pytest.param({"uuid": "u1", "tokenName": "mytoken"}, "mytoken", True, HELD, False,
                     decide.TokenStep.KEEP, id="in-order-event"),
        pytest.param({"uuid": "u1", "tokenName": "mytoken"}, "mytoken", True, HELD, True,
                     decide.TokenStep.VERIFY, id="in-order-resync"),
        pytest.param({"uuid": "u1", "tokenName": "mytoken"}, "mytoken", True, None, False,
                     decide.TokenStep.FETCH, id="secret-lost"),
        pytest.param({"uuid": "u1", "tokenName": "mytoken"}, "mytoken", False, None, False,
                     decide.TokenStep.KEEP, id="no-return-secret"),
        pytest.param({"uuid": "u1", "tokenName": "old"}, "mytoken", True, HELD, False,
                     decide.TokenStep.ACQUIRE, id="renamed"),
        pytest.param({"uuid": "u1", "tokenName": "mytoken", "expiration": "Thu, 26 Nov 2026 11:00:00 -0000"},
                     "mytoken", True, HELD, False, decide.TokenStep.ACQUIRE, id="expired"),
        pytest.param({"uuid": "u1", "tokenName": "mytoken", "expiration": "Fri, 27 Nov 2026 11:00:00 -0000"},
                     "mytoken", True, HELD, False, decide.TokenStep.KEEP, id="expires-later"),
    ],
)
def test_token_step(status: dict[str, Any], title: str, ret: bool, held: Token | None, verify: bool,
                    plan: decide.TokenStep) -> None:
    got, why = decide.token_step(make_dt(status=status, title=title, ret=ret), held, verify=verify, now=NOW)
    assert got is plan
    if plan is decide.TokenStep.ACQUIRE and status.get("uuid"):
        assert why  # a replacement always says why in status


@pytest.mark.parametrize(
    ("creation", "lease"),
    [
        pytest.param(None, claims.Lease.NONE, id="none"),
        pytest.param({"id": "a", "title": "t", "since": "2026-11-26T11:59:30Z"}, claims.Lease.FRESH, id="fresh"),
        pytest.param({"id": "a", "title": "t", "since": "2026-11-26T11:50:00Z"}, claims.Lease.STALE, id="stale"),
        pytest.param({"id": "a", "title": "t", "since": "garbage"}, claims.Lease.STALE, id="unparsable"),
    ],
)
def test_lease_state(creation: dict[str, str] | None, lease: claims.Lease) -> None:
    assert claims.lease_state(make_dt(status={"creation": creation}).status.creation, NOW) is lease


def _obj(uid: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "namespace": "ns", "name": uid}, "status": status}


def test_claimed_uuids_ignore_self_and_include_pending_revocations() -> None:
    objs = [_obj("me", uuid="mine"), _obj("o1", uuid="a", pendingRevocation=["b"]), _obj("o2")]
    assert claims.claimed_uuids(objs, except_uid="me") == {"a", "b"}


def test_older_lease_wins_and_exactly_one_side_yields() -> None:
    a_lease = {"id": "1", "title": "t", "since": "2026-11-26T11:59:50Z"}
    b_lease = {"id": "2", "title": "t", "since": "2026-11-26T11:59:55Z"}
    a = make_dt(status={"creation": a_lease}, title="t", uid="a")
    b = make_dt(status={"creation": b_lease}, title="t", uid="b")
    objs = [_obj("a", creation=a_lease), _obj("b", creation=b_lease)]
    assert a.status.creation is not None and b.status.creation is not None
    assert claims.yields_to(objs, a, a.status.creation, NOW) == ""
    assert claims.yields_to(objs, b, b.status.creation, NOW) == "ns/a"
    other_title = [_obj("a", creation={**a_lease, "title": "other"})]
    assert claims.yields_to(other_title, b, b.status.creation, NOW) == ""


def test_adoption_takes_the_newest_unclaimed_unexpired_same_title_token() -> None:
    tokens = [
        Token("old", "t", "Thu, 26 Nov 2026 10:00:00 -0000", "", ""),
        Token("new", "t", "Thu, 26 Nov 2026 11:00:00 -0000", "", ""),
        Token("claimed", "t", "Thu, 26 Nov 2026 11:30:00 -0000", "", ""),
        Token("expired", "t", "Thu, 26 Nov 2026 11:40:00 -0000", "Thu, 26 Nov 2026 11:50:00 -0000", ""),
        Token("other", "x", "Thu, 26 Nov 2026 11:45:00 -0000", "", ""),
    ]
    pick = claims.pick_adoptable(tokens, title="t", claimed={"claimed"}, now=NOW)
    assert pick is not None and pick.uuid == "new"
    assert claims.pick_adoptable(tokens, title="none", claimed=set(), now=NOW) is None
    assert claims.revocable(tokens, title="t", claimed={"claimed"}) == ["old", "new", "expired"]


def test_status_patch_is_empty_when_nothing_changes() -> None:
    current = Status.from_object({"uuid": "u", "message": "", "conditions": [{"type": "Ready", "status": "True"}]})
    assert Status.from_object({"uuid": "u", "message": "", "conditions": [{"type": "Ready", "status": "True"}]}
                              ).merge_patch(current) == {}
    assert current.with_(creation=None).merge_patch(current) == {}
    assert current.with_(message="x", uuid="").merge_patch(current) == {"message": "x", "uuid": None}


def test_condition_transition_time_moves_only_when_status_changes() -> None:
    first = conditions.set_ready([], ready=True, reason="A", message="", generation=1, now="t1")
    again = conditions.set_ready(first, ready=True, reason="B", message="m", generation=2, now="t2")
    assert [c["lastTransitionTime"] for c in again] == ["t1", "t1"]
    assert {c["type"] for c in again} == {"Ready", "Successful"}
    flipped = conditions.set_ready(again, ready=False, reason="C", message="", generation=2, now="t3")
    assert [c["lastTransitionTime"] for c in flipped] == ["t3", "t3"]
    assert all(c["status"] == "False" and c["observedGeneration"] == 2 for c in flipped)


def test_claim_view_keeps_what_the_claim_and_lease_rules_read() -> None:
    lease = {"id": "1", "title": "t", "since": "2026-11-26T11:59:50Z"}
    full = {"metadata": {"uid": "o1", "namespace": "ns", "name": "o1", "managedFields": [{"x": 1}]},
            "spec": {"name": "t"}, "status": {"uuid": "a", "pendingRevocation": ["b"], "creation": lease,
                                               "conditions": [{"type": "Ready"}]}}
    view = claims.claim_view(full)
    assert "managedFields" not in view["metadata"] and "conditions" not in view["status"]
    assert claims.claimed_uuids([view], except_uid="me") == claims.claimed_uuids([full], except_uid="me") == {"a", "b"}
    me = make_dt(status={"creation": {**lease, "since": "2026-11-26T11:59:55Z"}}, title="t", uid="me")
    assert me.status.creation is not None
    assert claims.yields_to([view], me, me.status.creation, NOW) == claims.yields_to([full], me, me.status.creation, NOW) == "ns/o1"


def test_a_renew_before_the_schema_would_refuse_is_a_failure_naming_the_field() -> None:
    """Objects stored before the schema had the field skip its validation: the plan refuses them."""
    dt = DockerToken.from_object({"metadata": {"namespace": "ns", "name": "dt", "uid": "u", "generation": 1},
                                  "spec": {"connSecretRef": {"name": "conn"}, "name": "t", "renewBefore": "2d"}})
    observed = decide.Observed(dt=dt, now=NOW, verify=False, wave="", conn=None, conn_error=None,
                               conn_version="", ret_secret=None, old_ret_secret=None)
    failure = decide.plan(observed).failure
    assert failure is not None and failure.reason == "InvalidConfiguration"
    assert "spec.renewBefore" in failure.message and '"48h"' in failure.message


def test_only_the_secret_this_object_attached_is_ever_detached() -> None:
    """Issue 18: spec.retSecretRef.name now names someone else's Secret (the pass fails with
    ReturnSecretConflict), and the object is deleted: the ServiceAccount loses only the Secret
    this object wrote and attached (status.retSecret), never the one spec names now."""
    obj: dict[str, Any] = {"metadata": {"namespace": "ns", "name": "dt", "uid": "uid-1", "generation": 2,
                        "deletionTimestamp": "2026-11-26T11:00:00Z",
                        "finalizers": ["quay.herve4m.github.io/finalizer"]},
           "spec": {"connSecretRef": {"name": "conn"}, "name": "mytoken",
                    "retSecretRef": {"name": "team-registry"}, "serviceAccounts": ["builder"],
                    "preserveInQuayOnDeletion": True},
           "status": {"retSecret": {"namespace": "ns", "name": "pull"}, "serviceAccounts": ["builder"]}}
    builder = {"metadata": {"resourceVersion": "7"},
               "imagePullSecrets": [{"name": "team-registry"}, {"name": "pull"}]}
    dt = DockerToken.from_object(obj)
    for deleting in (True, False):
        if not deleting:  # the same when builder is dropped from the list (not a deletion)
            obj = {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "deletionTimestamp"},
                   "spec": {**obj["spec"], "serviceAccounts": []}}
            dt = DockerToken.from_object(obj)
        keep = () if deleting else dt.service_accounts  # as decide.plan asks
        edits, _ = decide.service_account_edits(dt, {"builder": builder}, keep=keep)
        (edit,) = edits
        assert (edit.name, edit.action, list(edit.pull_secrets)) == (
            "builder", "detach-from-serviceaccount", [{"name": "team-registry"}])
    never_wrote = DockerToken.from_object({**obj, "status": {"serviceAccounts": ["builder"]}})
    assert decide.service_account_edits(never_wrote, {"builder": builder}, keep=()) == ((), ())


def test_a_lease_of_another_quay_account_never_makes_a_creation_wait() -> None:
    """Issue 18: another tenant with its own Quay account on the same Quay, reusing our title,
    must not make our creation yield or wait; the same account still takes turns."""
    from function.model import Creation

    ours = Creation("a", "mytoken", "2026-11-26T11:59:50Z", account="acct-victim")
    dt = make_dt(status={"creation": {"id": "a", "title": "mytoken", "since": ours.since,
                                      "account": ours.account}})

    def rival(since: str, account: str) -> dict[str, Any]:
        return {"metadata": {"uid": "uid-9", "namespace": "other", "name": "rival"},
                "status": {"creation": {"id": "b", "title": "mytoken", "since": since, "account": account}}}

    older, younger = "2026-11-26T11:59:40Z", "2026-11-26T11:59:55Z"
    assert claims.yields_to([rival(older, "acct-attacker")], dt, ours, NOW) == ""
    assert claims.waits_for([rival(younger, "acct-attacker")], dt, ours, NOW) == ""
    assert claims.yields_to([rival(older, "acct-victim")], dt, ours, NOW) == "other/rival"
    assert claims.waits_for([rival(younger, "acct-victim")], dt, ours, NOW) == "other/rival"
    assert claims.yields_to([rival(older, "")], dt, ours, NOW) == "other/rival"  # a lease from before


def test_the_account_is_a_hash_of_host_and_credentials_never_the_password() -> None:
    from function.connection import Connection

    a = Connection("https://q", "q", token="t1")
    assert a.account == Connection("https://q", "q", token="t1", timeout=3).account
    assert a.account != Connection("https://q", "q", token="t2").account
    assert a.account != Connection("https://other", "other", token="t1").account
    pw1 = Connection("https://q", "q", username="u", password="p1")
    assert pw1.account == Connection("https://q", "q", username="u", password="p2").account
    assert "t1" not in a.account and len(a.account) == 24


def _with_annotation(value: str, status: dict[str, Any]) -> DockerToken:
    return DockerToken.from_object({
        "metadata": {"namespace": "ns", "name": "dt", "uid": "uid-1", "generation": 1,
                     "annotations": {"quay.herve4m.github.io/renew-request": value} if value else {}},
        "spec": {"connSecretRef": {"name": "conn"}, "name": "mytoken", "retSecretRef": {"name": "pull"}},
        "status": status})


IN_ORDER = {"uuid": "u1", "tokenName": "mytoken"}


@pytest.mark.parametrize(
    ("annotation", "status", "step"),
    [
        pytest.param("", IN_ORDER, decide.TokenStep.KEEP, id="no-request"),
        pytest.param("r1", IN_ORDER, decide.TokenStep.ROTATE, id="new-request-rotates"),
        pytest.param("r1", {**IN_ORDER, "renewRequest": "r1"}, decide.TokenStep.KEEP, id="echo-does-nothing"),
        pytest.param("r2", {**IN_ORDER, "renewRequest": "r1"}, decide.TokenStep.ROTATE, id="a-second-request"),
        pytest.param("r1", {}, decide.TokenStep.ACQUIRE, id="no-token-yet"),
    ],
)
def test_the_renew_request_rotates_once_per_value(annotation: str, status: dict[str, Any],
                                                  step: decide.TokenStep) -> None:
    dt = _with_annotation(annotation, status)
    assert decide.token_step(dt, HELD, verify=False, now=NOW)[0] is step


def test_the_token_recorded_by_a_renewal_records_the_request_it_answered() -> None:
    dt = _with_annotation("r1", IN_ORDER)
    new = Token("u2", "mytoken", "Thu, 26 Nov 2026 12:00:00 -0000", "Fri, 27 Nov 2026 12:00:00 -0000")
    st = records.recorded(dt.status, dt, new, revoke_old=True, grace_until="2026-11-26T12:02:00Z")
    assert st.renew_request == "r1" and st.pending_revocation == ("u1",)
    echo = _with_annotation("r1", {**IN_ORDER, **_raw(st)})
    assert not decide.renew_requested(echo)


def test_a_renew_request_retries_a_failing_object_at_once() -> None:
    """A new request changes the failure's inputs digest, as reconcile-request does."""
    def digest(annotation: str) -> str:
        return decide.inputs_digest(decide.Observed(
            dt=_with_annotation(annotation, IN_ORDER), now=NOW, verify=False, wave="", conn=None,
            conn_error=None, conn_version="1", ret_secret=None, old_ret_secret=None))
    assert digest("") != digest("r1") != digest("r2")


def test_token_times_are_rfc3339_and_absent_when_quay_gives_none() -> None:
    token = Token("u", "t", "Thu, 26 Nov 2026 12:00:00 -0000", "Fri, 27 Nov 2026 12:00:00 +0100", "")
    assert records.token_times(token) == {"created_time": "2026-11-26T12:00:00Z",
                                         "expiration_time": "2026-11-27T11:00:00Z",
                                         "last_accessed_time": ""}
    assert "lastAccessedTime" not in _raw(Status().with_(**records.token_times(token)))


def test_a_huge_renew_request_is_recorded_as_its_digest_and_acted_on_once() -> None:
    """An annotation may hold 256 KiB: status records a digest, and the echo still matches."""
    huge = "x" * 200_000
    dt = _with_annotation(huge, IN_ORDER)
    assert dt.renew_request.startswith("sha256:") and len(dt.renew_request) == 71
    assert decide.token_step(dt, HELD, verify=False, now=NOW)[0] is decide.TokenStep.ROTATE
    st = records.recorded(dt.status, dt, Token("u2", "mytoken"), revoke_old=True)
    assert st.renew_request == dt.renew_request
    assert not decide.renew_requested(_with_annotation(huge, {**IN_ORDER, **_raw(st)}))


def _raw(status: Status) -> dict[str, Any]:
    """``status`` as the object stores it."""
    return {k: v for k, v in status.merge_patch(Status()).items() if v is not None}
