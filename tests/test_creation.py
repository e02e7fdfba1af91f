"""The creation protocol (function/creation.py) against in-memory fakes: one row per guarantee of
its docstring, in milliseconds, on a fake clock (its waits advance the clock, nothing sleeps).

The fakes keep only what the protocol relies on: the API server's resourceVersion
compare-and-swap and JSON merge patches of status, a label-selected list, and Quay's token
store. The same rules are proven against real processes in test_concurrency.py and
test_faults.py (a real kube-apiserver, the Quay simulator holding and failing requests).
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from function import claims, conditions, creation, steps
from function.cache import TokenListCache
from function.errors import Conflict, QuayAuthError, QuayNotFound, QuayTransient, Restart, TemporaryError
from function.model import DockerToken, Status, Token
from tests.builders import CONN, CREATED, NOW, at, dockertoken

LATER = "Fri, 27 Nov 2026 12:00:00 -0000"


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 JSON merge patch, in place."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeApi:
    """DockerTokens by name, with the API server's compare-and-swap and merge patches."""

    def __init__(self, *objs: dict[str, Any]) -> None:
        self.objs = {o["metadata"]["name"]: copy.deepcopy(o) for o in objs}
        self.version = 100
        self.writes: list[dict[str, Any]] = []
        self.before_write: Callable[[FakeApi], None] = lambda api: None
        self.on_get: Callable[[FakeApi, int], None] = lambda api, n: None
        self.gets = 0

    def add(self, obj: dict[str, Any]) -> None:
        self.objs[obj["metadata"]["name"]] = copy.deepcopy(obj)

    def get_dockertoken(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets += 1
        self.on_get(self, self.gets)
        obj = self.objs.get(name)
        return copy.deepcopy(obj) if obj is not None else None

    def patch_status(self, namespace: str, name: str, status: dict[str, Any],
                     resource_version: str | None = None) -> dict[str, Any]:
        self.before_write(self)
        obj = self.objs.get(name)
        if obj is None:
            return {}
        if resource_version and resource_version != obj["metadata"]["resourceVersion"]:
            raise Conflict(f"patch status of {namespace}/{name}: the object changed meanwhile")
        self.writes.append(copy.deepcopy(status))
        _merge(obj.setdefault("status", {}), status)
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(obj)

    def iter_dockertokens(self, namespace: str | None = None, page_size: int = 500, *,
                          label_selector: str | None = None) -> Iterator[dict[str, Any]]:
        for obj in list(self.objs.values()):
            if label_selector is None or label_selector in (obj["metadata"].get("labels") or {}):
                yield copy.deepcopy(obj)


class FakeQuay:
    """Quay's token store; ``post`` decides what a POST does (answer, fail before, fail after)."""

    def __init__(self, *tokens: Token) -> None:
        self.tokens = {t.uuid: t for t in tokens}
        self.calls: list[str] = []
        self.post = "answer"  # answer | fail | lost (made, but the answer never arrives)
        self.refuse = False
        self.made = 0

    def list_tokens(self) -> list[Token]:
        self.calls.append("list")
        if self.refuse:
            raise QuayAuthError("GET /api/v1/user/apptoken: Quay answered 401")
        return [Token(t.uuid, t.title, t.created, t.expiration) for t in self.tokens.values()]

    def get_token(self, uuid: str) -> Token:
        self.calls.append(f"get {uuid}")
        if uuid not in self.tokens:
            raise QuayNotFound(f"GET /api/v1/user/apptoken/{uuid}: Quay answered 404")
        t = self.tokens[uuid]
        return Token(t.uuid, t.title, t.created, t.expiration, t.last_accessed, code=t.code or f"CODE-{uuid}")

    def create_token(self, title: str) -> Token:
        self.calls.append("post")
        if self.post == "fail":
            raise QuayTransient("POST /api/v1/user/apptoken: Quay answered 503")
        self.made += 1
        token = Token(f"new{self.made}", title, CREATED, "", "", code=f"CODE{self.made}")
        self.tokens[token.uuid] = token
        if self.post == "lost":
            raise QuayTransient("POST /api/v1/user/apptoken: no answer within 10 s")
        return token


class Clock:
    """Monotonic seconds that move only when the protocol waits."""

    def __init__(self) -> None:
        self.now, self.slept = 0.0, 0.0

    def __call__(self) -> float:
        return self.now

    def elapse(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


class World:
    def __init__(self, api: FakeApi, quay: FakeQuay) -> None:
        self.api, self.quay, self.clock = api, quay, Clock()
        self.actions: list[str] = []
        self.stored: list[tuple[Status, bool]] = []
        self.revoked: list[str] = []
        self.cache = TokenListCache(clock=self.clock)
        self.creator = creation.Creator(
            api, lambda: quay, self.cache, CONN, act=self.actions.append,
            stored=lambda st, held: self.stored.append((st, held)), revoke=self._revoke,
            clock=self.clock, sleep=self.clock.elapse, new_id=lambda: "lease-1")

    def _revoke(self, uuids: Iterable[str], action: str) -> None:
        for uid in uuids:
            self.quay.tokens.pop(uid, None)
            self.revoked.append(uid)
            self.actions.append(action)

    def acquire(self, name: str = "dt", *, rotation: bool = False) -> creation.Created:
        obj = self.api.objs[name]
        dt = DockerToken.from_object(obj)
        step = steps.Acquire(dt.title, rotation=rotation, revoke_old=True,
                              grace_until=at(2) if rotation else "", why="", status=dt.status)
        return self.creator.acquire(dt, step, NOW)


LABEL = claims.claim_label(CONN.registry, "mytoken")


def obj(name: str = "dt", status: dict[str, Any] | None = None, *, uid: str | None = None) -> dict[str, Any]:
    """A DockerToken titled mytoken, labelled as the function labels it before its lease."""
    body = dockertoken(status)
    body["metadata"].update(name=name, uid=uid or f"uid-{name}", labels={LABEL: "true"})
    return body


def lease(since: str, id_: str = "other") -> dict[str, Any]:
    return {"creation": {"id": id_, "title": "mytoken", "since": since}}


ORPHAN = Token("orphan", "mytoken", CREATED)


# -- one row per guarantee ----------------------------------------------------------------------
def test_creates_one_token_and_records_it_in_the_write_that_frees_the_lease() -> None:
    w = World(FakeApi(obj()), FakeQuay())
    made = w.acquire()
    assert (made.token.uuid, made.adopted) == ("new1", False)
    assert w.actions == ["list-tokens", "take-lease", "create-token"]
    take, record = w.api.writes
    assert take == {"creation": {"id": "lease-1", "title": "mytoken", "since": at(0)}}
    assert record["uuid"] == "new1" and record["creation"] is None and record["tokenName"] == "mytoken"
    assert made.status == Status.from_object(w.api.objs["dt"]["status"]) and made.status.creation is None
    assert [held for _, held in w.stored] == [True, False]
    assert w.clock.slept == 0


def test_credentials_are_checked_before_any_write() -> None:
    w = World(FakeApi(obj()), FakeQuay())
    w.quay.refuse = True
    with pytest.raises(QuayAuthError):
        w.acquire()
    assert w.api.writes == [] and w.quay.calls == ["list"]


@pytest.mark.parametrize(("tokens", "others", "adopted"), [
    pytest.param([ORPHAN], [], "orphan", id="orphan-adopted"),
    pytest.param([ORPHAN], [obj("b", {"uuid": "orphan"})], "", id="tracked-by-another-is-not"),
    pytest.param([ORPHAN], [obj("b", {"pendingRevocation": ["orphan"]})], "", id="awaiting-revocation-is-not"),
    pytest.param([Token("old", "mytoken", CREATED, "Thu, 26 Nov 2026 11:00:00 -0000")], [], "",
                 id="expired-is-not"),
    pytest.param([Token("x", "other title", CREATED)], [], "", id="another-title-is-not"),
])
def test_adopt_before_create(tokens: list[Token], others: list[dict[str, Any]], adopted: str) -> None:
    w = World(FakeApi(obj(), *others), FakeQuay(*tokens))
    made = w.acquire()
    assert made.adopted is bool(adopted)
    assert made.token.uuid == (adopted or "new1")
    assert ("post" in w.quay.calls) is not bool(adopted)


def test_an_orphan_gone_between_list_and_get_is_not_adopted() -> None:
    quay = FakeQuay(ORPHAN)
    w = World(FakeApi(obj()), quay)
    w.cache.get(CONN.fingerprint, quay.list_tokens)  # listed earlier
    del quay.tokens["orphan"]  # revoked by hand since
    assert w.acquire().token.uuid == "new1"


def test_a_lost_post_is_found_and_adopted() -> None:
    w = World(FakeApi(obj()), FakeQuay())
    w.quay.post = "lost"
    made = w.acquire()
    assert (made.token.uuid, made.adopted) == ("new1", True)
    assert w.quay.made == 1 and "adopt-lost-token" in w.actions
    assert w.clock.slept == creation.LOST_POST_GRACE_SECONDS  # Quay finishing what it was sent


def test_a_failed_post_leaves_the_lease_to_the_callers_failure_write() -> None:
    w = World(FakeApi(obj()), FakeQuay())
    w.quay.post = "fail"
    with pytest.raises(QuayTransient):
        w.acquire()
    assert w.stored[-1][1] is True  # held: decide.on_error frees it in the failure's one write
    assert len(w.api.writes) == 1  # the lease only; no token made, nothing else written


def test_a_retry_after_a_failure_lists_afresh() -> None:
    quay = FakeQuay()
    w = World(FakeApi(obj(status={"retry": {"inputs": "x", "attempts": 1, "notBefore": at(-1)}})), quay)
    w.cache.get(CONN.fingerprint, quay.list_tokens)  # a list from before the lost POST
    quay.tokens["orphan"] = ORPHAN
    assert w.acquire().token.uuid == "orphan"


def test_a_fresh_lease_of_another_delivery_is_waited_for_then_the_pass_restarts() -> None:
    api = FakeApi(obj(status=lease(at(0))))
    api.on_get = lambda api, n: api.objs["dt"]["status"].pop("creation") if n == 3 else None
    w = World(api, FakeQuay())
    with pytest.raises(Restart):
        w.acquire()
    assert api.writes == [] and "post" not in w.quay.calls
    assert w.clock.slept == pytest.approx(3 * creation.LEASE_POLL_SECONDS)


def test_a_lease_that_stays_is_answered_503_after_the_wait() -> None:
    w = World(FakeApi(obj(status=lease(at(0)))), FakeQuay())
    with pytest.raises(TemporaryError) as caught:
        w.acquire()
    assert caught.value.reason == conditions.CREATION_IN_PROGRESS
    assert w.clock.slept >= creation.LEASE_WAIT_SECONDS and w.api.writes == []


def test_a_stale_lease_is_taken_over() -> None:
    w = World(FakeApi(obj(status=lease(at(-3)))), FakeQuay(ORPHAN))
    made = w.acquire()
    assert "take-over-stale-lease" in w.actions and made.token.uuid == "orphan"  # the dead holder's


def test_of_two_deliveries_one_wins_the_compare_and_swap() -> None:
    api = FakeApi(obj())

    def other_delivery_wins(api: FakeApi) -> None:
        api.before_write = lambda api: None
        api.patch_status("ns", "dt", lease(at(0)), api.objs["dt"]["metadata"]["resourceVersion"])

    api.before_write = other_delivery_wins
    w = World(api, FakeQuay())
    with pytest.raises(Conflict):
        w.acquire()
    assert "post" not in w.quay.calls


def test_the_younger_of_two_same_title_objects_yields_and_frees_its_lease() -> None:
    older = obj("a", lease(at(-0.5)), uid="uid-a")
    w = World(FakeApi(obj(), older), FakeQuay())
    with pytest.raises(TemporaryError) as caught:
        w.acquire()
    assert "ns/a" in str(caught.value) and "post" not in w.quay.calls
    assert w.api.writes[-1] == {"creation": None} and "creation" not in w.api.objs["dt"]["status"]


def test_the_older_waits_for_the_younger_and_sees_its_token_claimed() -> None:
    younger = obj("b", lease(at(1)), uid="uid-b")
    api = FakeApi(obj(), younger)
    quay = FakeQuay()
    w = World(api, quay)
    polls = 0

    def younger_finishes(seconds: float) -> None:
        nonlocal polls
        polls += 1
        Clock.elapse(w.clock, seconds)
        if polls == 2:  # b records the token it made meanwhile
            quay.tokens["theirs"] = Token("theirs", "mytoken", CREATED)
            api.objs["b"]["status"] = {"uuid": "theirs"}

    w.creator._sleep = younger_finishes
    made = w.acquire()
    assert made.token.uuid == "new1" and polls == 2  # never theirs


def test_a_younger_that_never_finishes_is_a_503() -> None:
    w = World(FakeApi(obj(), obj("b", lease(at(1)), uid="uid-b")), FakeQuay())
    with pytest.raises(TemporaryError):
        w.acquire()
    assert w.clock.slept > creation.LEASE_WAIT_SECONDS and "creation" not in w.api.objs["dt"]["status"]


def test_an_object_gone_before_its_lease_restarts() -> None:
    api = FakeApi(obj())
    w = World(api, FakeQuay())
    api.before_write = lambda api: api.objs.clear()
    with pytest.raises(Restart):
        w.acquire()
    assert "post" not in w.quay.calls


def test_a_token_made_for_an_object_gone_meanwhile_is_revoked() -> None:
    api = FakeApi(obj())
    quay = FakeQuay()
    w = World(api, quay)
    real = quay.create_token

    def create_then_object_goes(title: str) -> Token:
        token = real(title)
        api.objs.pop("dt")  # its finalizer removed by hand while Quay answered
        return token

    quay.create_token = create_then_object_goes  # type: ignore[method-assign]
    with pytest.raises(Restart):
        w.acquire()
    assert w.revoked == ["new1"] and w.actions[-1] == "revoke-unrecorded-token"


def test_an_object_deleted_meanwhile_restarts_with_its_token_recorded() -> None:
    api = FakeApi(obj())
    quay = FakeQuay()
    w = World(api, quay)
    real = quay.create_token

    def create_then_delete(title: str) -> Token:
        api.objs["dt"]["metadata"]["deletionTimestamp"] = at(0)
        return real(title)

    quay.create_token = create_then_delete  # type: ignore[method-assign]
    with pytest.raises(Restart):
        w.acquire()
    assert api.objs["dt"]["status"]["uuid"] == "new1" and w.revoked == []  # the deletion revokes it


def test_a_rotation_keeps_the_old_token_until_its_grace_is_over() -> None:
    w = World(FakeApi(obj(status={"uuid": "u1", "tokenName": "mytoken", "expiration": LATER})), FakeQuay())
    made = w.acquire(rotation=True)
    assert made.status.uuid == "new1" and made.status.pending_revocation == ("u1",)
    assert made.status.revoke_after == at(2)


def test_waits_read_the_clock_it_is_given() -> None:
    """No wait in this file sleeps: the fake clock moved, the wall clock barely did."""
    started = datetime.datetime.now(datetime.UTC)
    w = World(FakeApi(obj(status=lease(at(0)))), FakeQuay())
    with pytest.raises(TemporaryError):
        w.acquire()
    assert w.clock.slept >= creation.LEASE_WAIT_SECONDS
    assert datetime.datetime.now(datetime.UTC) - started < datetime.timedelta(seconds=1)
