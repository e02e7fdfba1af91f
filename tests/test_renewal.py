"""function.renewal: spec.renewBefore parsing, renewal times, the resync window. Pure, no I/O."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest
import yaml

from function.errors import ConfigError
from function.renewal import (
    MAX_RENEW_BEFORE,
    PATTERN,
    Renewal,
    format_duration,
    is_due,
    parse_duration,
    plan_renewal,
    renewal_time,
    resync_window_problem,
    rfc3339,
)

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime.datetime(2026, 11, 26, 17, 22, 43, tzinfo=datetime.UTC)


def s(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


# -- parse_duration -------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    pytest.param("10m", 600, id="minutes"),
    pytest.param("12h", 43200, id="hours"),
    pytest.param("1h30m", 5400, id="hours-minutes"),
    pytest.param("90s", 90, id="seconds"),
    pytest.param("1h1m1s", 3661, id="all-units"),
    pytest.param("1.5h", 5400, id="fraction"),
    pytest.param("0.5s", 0.5, id="sub-second"),
    pytest.param("30m1h", 5400, id="any-order-as-go"),
    pytest.param("1m1m", 120, id="repeated-unit-as-go"),
    pytest.param(" 10m ", 600, id="surrounding-space"),
    pytest.param("87600h", 87600 * 3600, id="maximum"),
    pytest.param("00010m", 600, id="leading-zeros"),
])
def test_parse_duration_accepts(text: str, seconds: float) -> None:
    assert parse_duration(text) == s(seconds)


@pytest.mark.parametrize(("value", "fragment"), [
    pytest.param("1d", 'for 1d write "24h"', id="days"),
    pytest.param("2w", 'for 2w write "336h"', id="weeks"),
    pytest.param("500ms", "the smallest unit is s", id="milliseconds"),
    pytest.param("-5m", "it must be positive", id="negative"),
    pytest.param("10M", "units are lower-case", id="upper-case"),
    pytest.param("1h 30m", "no spaces", id="inner-space"),
    pytest.param("10", 'such as "10m"', id="no-unit"),
    pytest.param("m", 'such as "10m"', id="no-number"),
    pytest.param(".5h", 'such as "10m"', id="bare-fraction"),
    pytest.param("", 'such as "10m"', id="empty"),
    pytest.param("P1D", 'such as "10m"', id="iso8601"),
    pytest.param(600, "600 is not", id="number"),
    pytest.param(None, "None is not", id="null"),
    pytest.param("0s", "not a positive duration", id="zero"),
    pytest.param("0h0m", "not a positive duration", id="zero-parts"),
    pytest.param("87600h1s", "longer than 87600h", id="above-maximum"),
    pytest.param("9" * 400 + "h", "longer than 87600h", id="overflow"),
])
def test_parse_duration_refuses_naming_the_field_and_the_fix(value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(value)
    message = str(caught.value)
    assert message.startswith("spec.renewBefore: ")
    assert fragment in message
    assert caught.value.reason == "InvalidConfiguration"


def test_parse_duration_names_another_field() -> None:
    with pytest.raises(ConfigError, match=r"^RESYNC_PERIOD: "):
        parse_duration("1d", field="RESYNC_PERIOD")


@pytest.mark.parametrize(("text", "ok"), [
    pytest.param(text, ok, id=f"{text or 'empty'}-{'ok' if ok else 'refused'}")
    for text, ok in [("10m", True), ("1h30m", True), ("1.5h", True), ("1d", False),
                     ("500ms", False), ("-5m", False), ("10", False), ("", False),
                     (".5h", False), ("1h 30m", False)]
])
def test_schema_pattern_is_the_parsers(text: str, ok: bool) -> None:
    """The CRD's pattern for spec.renewBefore is PATTERN, and it agrees with the parser."""
    crd = yaml.safe_load((ROOT / "knative" / "base" / "crd-dockertoken.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["renewBefore"]["pattern"] == PATTERN
    assert bool(re.search(PATTERN, text)) is ok
    if ok:
        parse_duration(text)
    else:
        with pytest.raises(ConfigError):
            parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [
    pytest.param(0, "0s", id="zero"),
    pytest.param(90, "1m30s", id="minute-and-a-half"),
    pytest.param(5400, "1h30m", id="hour-and-a-half"),
    pytest.param(43200, "12h", id="half-day"),
    pytest.param(3661, "1h1m1s", id="all-parts"),
    pytest.param(0.5, "0.5s", id="sub-second"),
    pytest.param(-600, "-10m", id="negative"),
    pytest.param(MAX_RENEW_BEFORE.total_seconds(), "87600h", id="maximum"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(s(seconds)) == text
    if seconds > 0:
        assert parse_duration(text) == s(seconds)


# -- renewal times ---------------------------------------------------------------------------

@pytest.mark.parametrize(("lifetime", "renew_before", "after_creation", "note"), [
    pytest.param(30, None, 20, "", id="default-two-thirds-30s"),
    pytest.param(86400, None, 57600, "", id="default-two-thirds-1d"),
    pytest.param(10, None, 6, "", id="default-cut-to-whole-seconds"),
    pytest.param(86400, 43200, 43200, "", id="renew-before-12h-of-1d"),
    pytest.param(86400, 600, 85800, "", id="renew-before-10m-of-1d"),
    pytest.param(30, 10, 20, "", id="renew-before-10s-of-30s"),
    pytest.param(30, 29.5, 0, "", id="renew-before-just-shorter"),
    pytest.param(30, 30, 20, "is not shorter than the token lifetime (30s); renewing at 2/3",
                 id="renew-before-equal-lifetime-clamped"),
    pytest.param(30, 3600, 20, "spec.renewBefore (1h) is not shorter than the token lifetime",
                 id="renew-before-longer-clamped"),
    pytest.param(0, None, 0, "not after its creation; renewing it now", id="zero-lifetime"),
    pytest.param(-5, 600, -5, "not after its creation", id="negative-lifetime"),
])
def test_plan_renewal(lifetime: float, renew_before: float | None, after_creation: float,
                      note: str) -> None:
    expiration = T0 + s(lifetime)
    plan = plan_renewal(T0, expiration, None if renew_before is None else s(renew_before))
    assert plan is not None
    assert plan.at == T0 + s(after_creation)
    assert plan.at.microsecond == 0
    assert (note in plan.note) if note else plan.note == ""
    assert renewal_time(T0, expiration, None if renew_before is None else s(renew_before)) \
        == plan.at


@pytest.mark.parametrize(("created", "expiration"), [
    pytest.param(T0, None, id="never-expires"),
    pytest.param(None, T0, id="creation-unknown"),
    pytest.param(None, None, id="nothing-known"),
])
def test_no_renewal_without_a_lifetime(created: datetime.datetime | None,
                                       expiration: datetime.datetime | None) -> None:
    assert plan_renewal(created, expiration, s(600)) is None
    assert renewal_time(created, expiration) is None


def test_renewal_respects_time_zones() -> None:
    paris = datetime.timezone(datetime.timedelta(hours=1))
    plan = plan_renewal(T0.astimezone(paris), T0 + s(30))
    assert plan == Renewal(T0 + s(20))
    assert rfc3339(plan.at) == "2026-11-26T17:23:03Z"


@pytest.mark.parametrize(("renewal_at", "now", "due"), [
    pytest.param(None, T0, False, id="never-expires"),
    pytest.param(T0 + s(1), T0, False, id="one-second-early"),
    pytest.param(T0, T0, True, id="exactly-at"),
    pytest.param(T0, T0 + s(3600), True, id="late"),
])
def test_is_due(renewal_at: datetime.datetime | None, now: datetime.datetime, due: bool) -> None:
    assert is_due(renewal_at, now) is due


# -- the resync window -----------------------------------------------------------------------

TEN_MINUTES = s(600)


@pytest.mark.parametrize(("lifetime", "renew_before", "period", "fragment"), [
    pytest.param(86400, None, 600, None, id="1d-default-10m-resync-fine"),
    pytest.param(86400, 3600, 600, None, id="renew-before-1h-fine"),
    pytest.param(86400, 600, 600, "spec.renewBefore (10m) is not longer than the resync period "
                 "(10m): set spec.renewBefore above 10m", id="renew-before-equal-period"),
    pytest.param(86400, 300, 600, "set spec.renewBefore above 10m", id="renew-before-shorter"),
    pytest.param(30, None, 600, "the token lives 30s, so the last third (10s) is not longer "
                 "than the resync period (10m): resync more often than every 10s",
                 id="30s-tokens-default"),
    pytest.param(30, 3600, 600, "the token lives 30s", id="clamped-renew-before"),
    pytest.param(30, 20, 10, None, id="30s-tokens-renew-before-20s-resync-10s"),
    pytest.param(None, None, 600, None, id="never-expires"),
    pytest.param(0, None, 600, None, id="broken-lifetime-left-to-plan-renewal"),
])
def test_resync_window_problem(lifetime: float | None, renew_before: float | None,
                               period: float, fragment: str | None) -> None:
    expiration = None if lifetime is None else T0 + s(lifetime)
    problem = resync_window_problem(T0, expiration, None if renew_before is None
                                    else s(renew_before), s(period))
    if fragment is None:
        assert problem is None
    else:
        assert problem is not None
        assert problem.startswith("the token may expire before a resync renews it: ")
        assert fragment in problem


def test_rfc3339_is_whole_seconds_utc() -> None:
    assert rfc3339(T0 + s(0.75)) == "2026-11-26T17:22:43Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rfc3339(T0))
