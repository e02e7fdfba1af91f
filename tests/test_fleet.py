"""The fleet audit's pure decisions (fleet.py) and the plugin's report (kubectl.describe). No I/O."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from function import fleet, kubectl
from function.errors import ConfigError
from function.model import Token

NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)
OLD = "Sat, 01 Aug 2026 12:00:00 -0000"     # 128 days before NOW
RECENT = "Mon, 07 Dec 2026 11:00:00 -0000"  # an hour before NOW


def dt(name: str, *, title: str = "t", status: dict[str, Any] | None = None,
       conn: str = "conn") -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "uid": name},
            "spec": {"connSecretRef": {"name": conn}, "name": title}, "status": status or {}}


OBJECTS = [
    dt("a", title="a", status={"uuid": "u-tracked"}),
    dt("b", title="b", status={"uuid": "u-new", "pendingRevocation": ["u-old"],
                               "revokeAfter": "2026-12-07T12:02:00Z"}),
    dt("c", title="c"),  # no token yet: would adopt one titled "c"
    dt("d", title="d", status={"uuid": "u-d", "creation": {"id": "x", "title": "d",
                                                           "since": "2026-12-07T11:59:30Z"}}),
]
TOKENS = [
    Token("u-tracked", "a", OLD, "", RECENT),
    Token("u-new", "b", RECENT),
    Token("u-old", "b", OLD),
    Token("u-c", "c", OLD),
    Token("u-d2", "d", OLD),
    Token("u-hand", "made by hand", OLD),
    Token("u-expired", "c", OLD, "Sun, 01 Nov 2026 12:00:00 -0000"),  # expired: nobody adopts it
    Token("u-young", "left", RECENT),
]


def test_every_token_gets_its_state_and_only_unclaimed_ones_are_orphans() -> None:
    rows = {r.uuid: r for r in fleet.classify(TOKENS, fleet.claims(OBJECTS, NOW), now=NOW,
                                               unused_after=datetime.timedelta(days=30))}
    assert {u: (r.state, r.owner) for u, r in rows.items()} == {
        "u-tracked": ("tracked", "ns/a"), "u-new": ("tracked", "ns/b"), "u-old": ("pending", "ns/b"),
        "u-c": ("adoptable", "ns/c"), "u-d2": ("adoptable", "ns/d"), "u-hand": ("orphan", ""),
        "u-expired": ("orphan", ""), "u-young": ("orphan", "")}
    assert rows["u-expired"].expired and not rows["u-hand"].expired
    assert rows["u-hand"].unused_days == 128 and rows["u-tracked"].unused_days is None
    assert rows["u-young"].unused_days is None
    assert rows["u-tracked"].created == "2026-08-01T12:00:00Z" and rows["u-tracked"].expiration == ""


def test_only_orphans_older_than_the_limit_are_revocable() -> None:
    rows = fleet.classify([*TOKENS, Token("u-undated", "x")], fleet.claims(OBJECTS, NOW), now=NOW,
                          unused_after=datetime.timedelta(days=30))
    got = [r.uuid for r in fleet.revocable(rows, older_than=datetime.timedelta(days=30), now=NOW)]
    assert got == ["u-hand", "u-expired"]  # never a tracked, pending or adoptable one; never undated
    with pytest.raises(ConfigError, match="--older-than: at least 2m"):
        fleet.revocable(rows, older_than=datetime.timedelta(seconds=30), now=NOW)


def test_tokens_gone_from_quay_are_reported_against_their_dockertoken() -> None:
    missing = fleet.missing([Token("u-tracked", "a")], fleet.claims(OBJECTS[:2], NOW))
    assert missing == [fleet.Missing("ns/b", "u-new")]


@pytest.mark.parametrize(("text", "seconds"), [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400)])
def test_ages(text: str, seconds: int) -> None:
    assert fleet.parse_age(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["30", "0d", "-1d", "1w", "1.5d", "30 d", ""])
def test_bad_ages_name_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match=r"--older-than: .* such as 30d"):
        fleet.parse_age(text)


@pytest.mark.parametrize(("when", "text"), [
    ("2026-12-07T12:00:30Z", "in 30s"), ("2026-12-07T11:58:00Z", "2m ago"),
    ("2026-12-08T15:05:00Z", "in 1d3h"), ("2026-12-07T13:30:00Z", "in 1h30m"), ("", "")])
def test_relative_times(when: str, text: str) -> None:
    assert kubectl.ago(when, NOW) == text


def test_status_report_says_why_and_what_waits() -> None:
    obj = dt("b", title="b", status={
        "uuid": "u-new", "createdTime": "2026-12-07T11:00:00Z", "expirationTime": "2026-12-08T11:00:00Z",
        "renewalTime": "2026-12-08T03:00:00Z", "pendingRevocation": ["u-old"],
        "revokeAfter": "2026-12-07T12:02:00Z", "registryHost": "quay.example.com",
        "conditions": [{"type": "Ready", "status": "True", "reason": "TokenReady", "message": ""}]})
    obj["metadata"]["annotations"] = {"quay.herve4m.github.io/renew-request": "r1"}
    obj["status"]["renewRequest"] = "r1"
    text = kubectl.describe(obj, [{"type": "Normal", "reason": "TokenRotated", "note": "replaced",
                                   "eventTime": "2026-12-07T11:59:00.000000Z"}], NOW)
    assert "ns/b: Quay token 'b' for quay.example.com" in text
    assert "Ready               True  TokenReady" in text
    assert "Expires             2026-12-08T11:00:00Z  (in 23h)" in text
    assert "Last accessed       never" in text
    assert "Pending revocation  u-old  after 2026-12-07T12:02:00Z (in 2m)" in text
    assert "Renew request       r1  (done)" in text
    assert "1m ago  Normal   TokenRotated     replaced" in text
