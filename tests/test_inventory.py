"""The bulk resync's decision, as tables of cases (milliseconds, no I/O): ``inventory.verdict``
on an ``Observed`` built as the resync builds it, ``lastaccess.to_record``, and the plan request's
parsing. The same cases on the real control plane: tests/test_bulk_resync.py."""

from __future__ import annotations

import base64
import datetime
from typing import Any

import pytest

from function import claims, conditions, decide, lastaccess, protection, pullsecret, quay, result
from function.cache import TokenListCache, ValueCache
from function.connection import parse_connection
from function.errors import BadEvent, PermanentError
from function.events import PLAN_TYPE, parse_plan
from function.inventory import Inventory, Verdict, verdict
from function.model import FINALIZER, DockerToken, Ref, Status, Token
from function.protection import CONNECTION_ANNOTATION, CONNECTION_LABEL, IN_USE_FINALIZER, key
from function.steps import Obtained, ObtainToken, Verify

NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)
HOST = "quay.example.com"
CONN = parse_connection({"host": f"https://{HOST}", "token": "t"}, secret_name="quay")
UUID = "11111111-2222-3333-4444-555555555555"
CREATED = "Mon, 07 Dec 2026 10:00:00 -0000"
TOKEN = Token(UUID, "mytoken", CREATED, "", "", "the-code")
# the connection Secret as observed: carrying our in-use finalizer (protection.py)
CONN_SECRET = {"metadata": {"namespace": "ns", "name": "quay", "finalizers": [IN_USE_FINALIZER]}}


def _obj(**status: Any) -> dict[str, Any]:
    dt_meta = {"namespace": "ns", "name": "dt", "uid": "uid-1", "generation": 1,
               "resourceVersion": "5", "finalizers": [FINALIZER],
               "labels": {claims.claim_label(HOST, "mytoken"): "true",
                          CONNECTION_LABEL: key(Ref("ns", "quay"))},
               "annotations": {CONNECTION_ANNOTATION: "ns/quay"}}
    return {"metadata": dt_meta,
            "spec": {"name": "mytoken", "connSecretRef": {"name": "quay"},
                     "retSecretRef": {"name": "pull"}},
            "status": status}


def _observed(obj: dict[str, Any], secret: dict[str, Any] | None, *, verify: bool = True,
              conn_secret: dict[str, Any] | None = CONN_SECRET) -> decide.Observed:
    dt = DockerToken.from_object(obj)
    return decide.Observed(dt=dt, now=NOW, verify=verify, wave="w", conn=CONN, conn_error=None,
                           conn_version="1", ret_secret=secret, old_ret_secret=None,
                           conn_secret=conn_secret, registered=protection.registered(obj))


def _ready_status(token: Token = TOKEN) -> dict[str, Any]:
    """The status a successful pass leaves with ``token`` (computed by the same functions
    apply.py uses)."""
    obj = _obj(uuid=UUID, tokenName="mytoken", existInQuay=True,
               retSecret={"namespace": "ns", "name": "pull"})
    ob = _observed(obj, _secret(obj, token))
    (obtain,) = [s for s in decide.plan(ob).steps if isinstance(s, ObtainToken)]
    assert isinstance(obtain.first, Verify)
    got = decide.verified(ob, obtain.first, token)
    assert isinstance(got, Obtained)
    return decide.settle(ob, obtain.ensure, got).status.merge_patch(Status())


def _secret(obj: dict[str, Any], token: Token = TOKEN) -> dict[str, Any]:
    dt = DockerToken.from_object(obj)
    secret = pullsecret.build(dt, Ref("ns", "pull"), token, [HOST])
    secret["metadata"]["resourceVersion"] = "7"
    return secret


def _verdict(obj: dict[str, Any], secret: dict[str, Any] | None, *,
             listed: dict[str, Token] | None = None, verify: bool = True,
             conn_secret: dict[str, Any] | None = CONN_SECRET) -> Verdict:
    ob = _observed(obj, secret, verify=verify, conn_secret=conn_secret)
    return verdict(ob, decide.plan(ob), {UUID: TOKEN} if listed is None else listed)


def test_an_object_in_order_needs_nothing() -> None:
    obj = _obj(**_ready_status())
    assert _verdict(obj, _secret(obj)) == Verdict()


def _edit(secret: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    data = dict(secret["data"])
    data[key] = base64.b64encode(value.encode()).decode()
    return {**secret, "data": data}


CASES = [
    # (what changed, change to the object, change to the Secret, Quay's list, expected drift)
    ("no token yet", lambda o: o.update(status={}), None, None, "token-missing"),
    ("token revoked in Quay", None, None, {}, "token-gone"),
    ("token expired in Quay", None, None,
     {UUID: Token(UUID, "mytoken", CREATED, "Mon, 07 Dec 2026 11:00:00 -0000")}, "token-gone"),
    ("expiration recorded has passed",
     lambda o: o["status"].update(expiration="Mon, 07 Dec 2026 11:00:00 -0000"), None, None,
     "token-expired"),
    ("renewal due", lambda o: o["status"].update(renewalTime="2026-12-07T11:00:00Z"), None, None,
     "renewal-due"),
    ("renew requested (kubectl dockertoken renew)",
     lambda o: o["metadata"]["annotations"].update({"quay.herve4m.github.io/renew-request": "r1"}),
     None, None, "renew-requested"),
    ("renew request already acted on",
     lambda o: (o["metadata"]["annotations"].update({"quay.herve4m.github.io/renew-request": "r1"}),
                o["status"].update(renewRequest="r1")), None, None, ""),
    ("spec.name changed", lambda o: (o["spec"].update(name="other"),
                                     o["metadata"]["labels"].update({claims.claim_label(HOST, "other"): "true"})),
     None, None, "spec-changed"),
    ("generation moved (another spec field)",
     lambda o: o["metadata"].update(generation=2), None, None, "status"),
    ("Secret deleted", None, "delete", None, "secret-missing"),
    ("code edited", None, lambda s: _edit(s, "tokenCode", "x"), None, "secret-edited"),
    ("username edited", None, lambda s: _edit(s, "username", "x"), None, "secret-edited"),
    ("our finalizer removed", lambda o: o["metadata"].update(finalizers=[]), None, None, "metadata"),
    ("claim label removed", lambda o: o["metadata"]["labels"].pop(claims.claim_label(HOST, "mytoken")),
     None, None, "metadata"),
    ("registration as the connection's user removed",
     lambda o: (o["metadata"]["labels"].pop(CONNECTION_LABEL), o["metadata"].pop("annotations")),
     None, None, "protection"),
    ("Secret moved", lambda o: o["spec"].update(retSecretRef={"name": "pull2"}), "moved", None,
     "secret-moved"),
    ("deleted", lambda o: o["metadata"].update(deletionTimestamp="2026-12-07T11:00:00Z"), None,
     None, "deletion"),
    ("pending revocation due",
     lambda o: o["status"].update(pendingRevocation=["old"], revokeAfter="2026-12-07T11:00:00Z"),
     None, None, "revocation-due"),
    ("Quay list failed", None, None, "failed", "token-unverified"),
]


@pytest.mark.parametrize(("what", "change", "secret_change", "listed", "drift"), CASES,
                         ids=[c[0] for c in CASES])
def test_each_kind_of_drift_is_named(what: str, change: Any, secret_change: Any, listed: Any,
                                     drift: str) -> None:
    obj = _obj(**_ready_status())
    secret: dict[str, Any] | None = _secret(obj)
    if change is not None:
        change(obj)
    if secret_change == "moved":  # nothing at the new place yet; ours at the old one
        ob = decide.Observed(**{**_observed(obj, None).__dict__, "old_ret_secret": secret})
        assert verdict(ob, decide.plan(ob), {UUID: TOKEN}) == Verdict(drift)
        return
    if secret_change == "delete":
        secret = None
    elif secret_change is not None:
        secret = secret_change(secret)
    if listed == "failed":
        ob = _observed(obj, secret)
        assert verdict(ob, decide.plan(ob), None) == Verdict(drift)
        return
    assert _verdict(obj, secret, listed=listed) == Verdict(drift), what


def test_the_in_use_finalizer_missing_from_the_connection_secret_is_drift() -> None:
    """issue 20: the bulk resync puts the protection back as the per-object pass would."""
    obj = _obj(**_ready_status())
    bare = {"metadata": {"namespace": "ns", "name": "quay"}}
    assert _verdict(obj, _secret(obj), conn_secret=bare) == Verdict("protection")


def test_a_failure_waiting_for_its_retry_is_failing_and_a_due_one_is_drift() -> None:
    obj = _obj(**_ready_status())
    dt = DockerToken.from_object(obj)
    error = PermanentError("connSecretRef: quay: secret not found").with_reason("ConnectionSecretNotFound")
    ob = decide.Observed(dt=dt, now=NOW, verify=True, wave="w", conn=None, conn_error=error,
                         conn_version="", ret_secret=_secret(obj), old_ret_secret=None,
                         registered=Ref("ns", "quay"))
    assert verdict(ob, decide.plan(ob), None) == Verdict("new-failure")
    failure = result.failure_of(error)
    assert failure is not None
    failed = decide.failed(ob, dt.status, failure, inputs=decide.inputs_digest(ob)).status
    obj = _obj(**failed.merge_patch(Status()))
    ob = decide.Observed(**{**ob.__dict__, "dt": DockerToken.from_object(obj)})
    assert verdict(ob, decide.plan(ob), None) == Verdict(failing="ConnectionSecretNotFound")
    later = decide.Observed(**{**ob.__dict__, "now": NOW + datetime.timedelta(minutes=10)})
    assert verdict(later, decide.plan(later), None) == Verdict("retry-due")


@pytest.mark.parametrize(("held", "used", "drift"), [
    pytest.param("", "Mon, 07 Dec 2026 10:00:03 -0000", "", id="our-own-registry-check"),
    pytest.param("", "Mon, 07 Dec 2026 10:10:00 -0000", "last-accessed", id="the-first-real-use"),
    pytest.param("Mon, 07 Dec 2026 10:10:00 -0000", "Mon, 07 Dec 2026 11:50:00 -0000", "",
                 id="used-again-within-the-day"),
    pytest.param("Mon, 07 Dec 2026 10:10:00 -0000", "Tue, 08 Dec 2026 10:10:00 -0000", "last-accessed",
                 id="used-again-a-day-on"),
])
def test_last_accessed_in_quay_is_written_at_first_use_then_once_a_day_at_most(
        held: str, used: str, drift: str) -> None:
    token = Token(UUID, "mytoken", CREATED, "", held, "the-code")
    obj = _obj(**_ready_status(token))
    secret = _secret(obj, token)
    listed = Token(UUID, "mytoken", CREATED, "", used)
    assert _verdict(obj, secret, listed={UUID: listed}) == Verdict(drift)


def test_last_accessed_refresh_is_the_deployments_setting() -> None:
    """LAST_ACCESSED_REFRESH reaches the plan through Observed (main.py reads it once)."""
    token = Token(UUID, "mytoken", CREATED, "", "Mon, 07 Dec 2026 10:10:00 -0000", "the-code")
    obj = _obj(**_ready_status(token))
    secret = _secret(obj, token)
    listed = {UUID: Token(UUID, "mytoken", CREATED, "", "Mon, 07 Dec 2026 11:50:00 -0000")}
    ob = _observed(obj, secret, verify=True, conn_secret=CONN_SECRET)
    assert verdict(ob, decide.plan(ob), listed) == Verdict()
    hourly = decide.Observed(**{**ob.__dict__, "last_accessed_refresh": datetime.timedelta(hours=1)})
    assert verdict(hourly, decide.plan(hourly), listed) == Verdict("last-accessed")


# CREATED is 10:00:00; the self-check window is 2 minutes, the interval a day
@pytest.mark.parametrize(("held", "listed", "want"), [
    pytest.param("", "", "", id="never-used"),
    pytest.param("", "Mon, 07 Dec 2026 10:00:05 -0000", "", id="the-self-check-after-creation"),
    pytest.param("", "Mon, 07 Dec 2026 10:02:00 -0000", "", id="two-minutes-on-may-still-be-the-check"),
    pytest.param("", "Mon, 07 Dec 2026 10:02:01 -0000", "Mon, 07 Dec 2026 10:02:01 -0000",
                 id="the-first-use-past-the-window"),
    pytest.param("", "Tue, 08 Dec 2026 10:00:00 -0000", "Tue, 08 Dec 2026 10:00:00 -0000",
                 id="the-first-use-a-day-on"),
    pytest.param("Tue, 08 Dec 2026 10:00:00 -0000", "Tue, 08 Dec 2026 22:00:00 -0000",
                 "Tue, 08 Dec 2026 10:00:00 -0000", id="12-h-later-not-yet"),
    pytest.param("Tue, 08 Dec 2026 10:00:00 -0000", "Wed, 09 Dec 2026 10:00:00 -0000",
                 "Wed, 09 Dec 2026 10:00:00 -0000", id="a-day-later"),
    pytest.param("Tue, 08 Dec 2026 10:00:00 -0000", "", "Tue, 08 Dec 2026 10:00:00 -0000",
                 id="quay-says-nothing"),
    pytest.param("garbage", "Mon, 07 Dec 2026 10:01:00 -0000", "garbage", id="unreadable-held-as-none"),
    pytest.param("garbage", "Wed, 09 Dec 2026 10:00:00 -0000", "Wed, 09 Dec 2026 10:00:00 -0000",
                 id="unreadable-held-replaced-by-a-use"),
])
def test_last_accessed_rule(held: str, listed: str, want: str) -> None:
    assert lastaccess.to_record(held, listed, CREATED, datetime.timedelta(hours=24)) == want


def test_the_self_check_window_covers_a_pass() -> None:
    """The check runs in the pass that made the token, whose Quay requests end within its budget."""
    assert datetime.timedelta(seconds=quay.PASS_BUDGET_SECONDS) < lastaccess.SELF_CHECK_WINDOW
    # no creation date from Quay: nothing to tell the check from, so Quay's value is taken
    assert lastaccess.to_record("", "Mon, 07 Dec 2026 10:00:05 -0000", "") == "Mon, 07 Dec 2026 10:00:05 -0000"


def test_last_accessed_interval_setting() -> None:
    assert lastaccess.parse_interval("") == datetime.timedelta(hours=24)
    assert lastaccess.parse_interval("30m") == datetime.timedelta(minutes=30)
    with pytest.raises(Exception, match="LAST_ACCESSED_REFRESH"):
        lastaccess.parse_interval("1d")


def test_the_challenge_is_fetched_once_per_key_and_ttl() -> None:
    now = [0.0]
    fetched: list[str] = []
    cache: ValueCache[str] = ValueCache(10, clock=lambda: now[0])

    def fetch(key: str) -> str:
        fetched.append(key)
        return key.upper()

    got = [cache.get(k, lambda: fetch(k)) for k in ("a", "a", "b", "a")]  # noqa: B023 (called at once)
    assert got == ["A", "A", "B", "A"]
    now[0] = 11
    assert cache.get("a", lambda: fetch("a")) == "A"
    assert fetched == ["a", "b", "a"]


@pytest.mark.parametrize(("data", "error"), [
    ([], "data must be a JSON object"),
    ({"namespace": "Not_A_Namespace"}, "data.namespace"),
    ({"continue": 5}, "data.continue"),
    ({"continue": "x" * 5000}, "data.continue"),
    ({"limit": 0}, "data.limit"),
    ({"limit": 1001}, "data.limit"),
    ({"limit": True}, "data.limit"),
])
def test_a_hostile_plan_request_is_refused_naming_the_field(data: Any, error: str) -> None:
    with pytest.raises(BadEvent, match=error):
        parse_plan({"type": PLAN_TYPE}, data, 500)


def test_plan_request_defaults() -> None:
    page = parse_plan({"type": PLAN_TYPE, "resyncwave": "w-1"}, None, 500)
    assert (page.namespace, page.cont, page.limit, page.wave) == ("", "", 500, "w-1")
    assert parse_plan({"resyncwave": "bad wave!"}, {}, 500).wave == ""


class _RefusingKube:
    """The page's lists answer; reading the connection Secret is refused (403), as where the
    Secret rights were narrowed to some namespaces (docs/deploy.md)."""

    def __init__(self, objs: list[dict[str, Any]]) -> None:
        self.objs = objs

    def session(self) -> _RefusingKube:
        return self

    def list_dockertokens_page(self, namespace: str | None, cont: str, limit: int
                               ) -> tuple[list[dict[str, Any]], str]:
        return self.objs, ""

    def iter_secrets(self, selector: str, page_size: int) -> list[dict[str, Any]]:
        return []

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        raise PermanentError(f"GET secrets {namespace}/{name}: 403 forbidden")


def test_a_connection_secret_it_may_not_read_fails_its_objects_not_the_page() -> None:
    objs = [_obj(**_ready_status()), {**_obj(), "metadata": {**_obj()["metadata"], "name": "dt2"}}]
    inventory = Inventory(_RefusingKube(objs), TokenListCache(), clock=lambda: NOW)  # type: ignore[arg-type]
    report = inventory.plan_page(namespace="ns", wave="w-1")
    assert report.seen == 2 and report.up_to_date == 0 and report.quay_calls == 0
    # each object goes to a reconcile of its own, which records SecretUnreadable
    assert [d["name"] for d in report.drifted] == ["dt", "dt2"]
    assert {d["drift"] for d in report.drifted} == {"new-failure"}
    # once that failure is recorded (as the reconcile records it), the object waits for its
    # retry time: counted as failing, not sent again
    error = PermanentError("403").with_reason(conditions.SECRET_UNREADABLE)
    _, failed = decide.unobserved(DockerToken.from_object(objs[0]), error, NOW)
    assert failed.status is not None
    objs[0] = _obj(**failed.status.merge_patch(Status()))
    report = Inventory(_RefusingKube(objs[:1]), TokenListCache(),  # type: ignore[arg-type]
                       clock=lambda: NOW).plan_page(namespace="ns", wave="w-2")
    assert (report.drifted, report.failing) == ([], {conditions.SECRET_UNREADABLE: 1})
