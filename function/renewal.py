"""When to replace an expiring token: ``spec.renewBefore`` and ``status.renewalTime``. Pure functions.

No I/O and no clock: ``now`` is a parameter, times are timezone-aware datetimes (UTC).

A token with an expiration is renewed at ``created + 2/3 of its lifetime`` by default (as
cert-manager renews certificates), or at ``expiration - spec.renewBefore``. A renewBefore that
is not shorter than the lifetime cannot be honoured (the renewal would be due the moment the
token is created, and every pass would rotate it): the default applies instead and
:attr:`Renewal.note` says so. Tokens without an expiration are never renewed.

The resync CronJob is what wakes the function up when nothing changes, so a rotation can only
happen on a pass: the window between ``renewalTime`` and the expiration must be longer than
the resync period, or a token may expire between two resyncs before any pass finds it due
(:func:`resync_window_problem`).
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import math
import re
from dataclasses import dataclass

from function.errors import ConfigError

__all__ = [
    "DEFAULT_FRACTION",
    "FIELD",
    "MAX_RENEW_BEFORE",
    "Renewal",
    "format_duration",
    "is_due",
    "is_expired",
    "parse_duration",
    "parse_time",
    "plan_renewal",
    "renewal_time",
    "resync_window_problem",
    "rfc3339",
]

FIELD = "spec.renewBefore"
# Renew at this fraction of the lifetime when renewBefore is unset or unusable.
DEFAULT_FRACTION = 2 / 3
# Ten years: longer than any token lifetime anyone configures, far below datetime's limits.
MAX_RENEW_BEFORE = datetime.timedelta(hours=87600)
# Go's time.ParseDuration syntax restricted to h, m and s: "10m", "12h", "1h30m", "1.5h", "90s".
# The CRD schema uses the same pattern (knative/base/crd-dockertoken.yaml).
PATTERN = r"^([0-9]+(\.[0-9]+)?(h|m|s))+$"
_WHOLE = re.compile(PATTERN)
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|m|s)")
_UNITS = {"h": 3600, "m": 60, "s": 1}
# Units people try that Go does not have (or that make no sense here), and what to write.
_HINTS = {"d": 24 * 3600, "w": 7 * 24 * 3600}
_EXAMPLES = 'a duration such as "10m", "12h" or "1h30m" (units h, m and s)'


@dataclass(frozen=True)
class Renewal:
    """When to renew, and why it is not what ``spec.renewBefore`` asked (``note``, else "")."""

    at: datetime.datetime
    note: str = ""


def parse_duration(text: object, field: str = FIELD) -> datetime.timedelta:
    """A positive Go-style duration of hours, minutes and seconds; ConfigError naming ``field``.

    ``text`` is the raw spec value: anything but such a string (a number, "1d", "500ms",
    "-5m", "0s") is refused with the fix in the message.
    """
    raw = text.strip() if isinstance(text, str) else text
    if not isinstance(raw, str) or not _WHOLE.fullmatch(raw):
        raise ConfigError(f"{field}: {text!r} is not {_EXAMPLES}{_hint(raw)}")
    seconds = sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(raw))
    if seconds <= 0:
        raise ConfigError(f"{field}: {text!r} is not a positive duration; use {_EXAMPLES}")
    if not math.isfinite(seconds) or seconds > MAX_RENEW_BEFORE.total_seconds():
        raise ConfigError(f"{field}: {text!r} is longer than "
                          f"{format_duration(MAX_RENEW_BEFORE)}; use a shorter duration")
    return datetime.timedelta(seconds=seconds)


def _hint(raw: object) -> str:
    """For "1d" or "2w": the same in hours; for "500ms": that seconds are the smallest unit."""
    if not isinstance(raw, str):
        return ""
    match = re.fullmatch(r"([0-9]+)([dw])", raw)
    if match is not None:
        hours = int(match[1]) * _HINTS[match[2]] // 3600
        return f'; for {raw} write "{hours}h"'
    if re.fullmatch(r"[0-9.]+(ms|us|µs|ns)", raw):
        return "; the smallest unit is s"
    if raw.startswith("-"):
        return "; it must be positive"
    if re.search(r"[A-Z]", raw):
        return "; units are lower-case"
    if re.search(r"\s", raw):
        return "; no spaces"
    return ""


def format_duration(value: datetime.timedelta) -> str:
    """Go-like, without zero parts: 90 s -> "1m30s", 1.5 h -> "1h30m", 0 -> "0s"."""
    total = value.total_seconds()
    sign, total = ("-", -total) if total < 0 else ("", total)
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{int(hours)}h" if hours else "", f"{int(minutes)}m" if minutes else "",
             f"{seconds:g}s" if seconds else ""]
    return sign + ("".join(parts) or "0s")


def plan_renewal(created: datetime.datetime | None, expiration: datetime.datetime | None,
                 renew_before: datetime.timedelta | None = None) -> Renewal | None:
    """When to renew a token created at ``created`` that expires at ``expiration``.

    None when the token does not expire (or its creation time is unknown: nothing to measure
    the lifetime from, so the caller should rely on the expiration alone). The time is cut to
    whole seconds, as ``status.renewalTime`` shows it.
    """
    if expiration is None or created is None:
        return None
    lifetime = expiration - created
    if lifetime <= datetime.timedelta(0):
        return Renewal(_seconds(expiration),
                       "the token's expiration is not after its creation; renewing it now")
    default = created + lifetime * DEFAULT_FRACTION
    if renew_before is None:
        return Renewal(_seconds(default))
    if renew_before >= lifetime:
        return Renewal(_seconds(default), (
            f"{FIELD} ({format_duration(renew_before)}) is not shorter than the token lifetime "
            f"({format_duration(lifetime)}); renewing at 2/3 of the lifetime instead"
        ))
    return Renewal(_seconds(expiration - renew_before))


def renewal_time(created: datetime.datetime | None, expiration: datetime.datetime | None,
                 renew_before: datetime.timedelta | None = None) -> datetime.datetime | None:
    """:func:`plan_renewal` without the note."""
    plan = plan_renewal(created, expiration, renew_before)
    return None if plan is None else plan.at


def is_due(renewal_at: datetime.datetime | None, now: datetime.datetime) -> bool:
    """Whether a pass at ``now`` must replace the token (never for a token that does not expire)."""
    return renewal_at is not None and renewal_at <= now


def resync_window_problem(created: datetime.datetime | None,
                          expiration: datetime.datetime | None,
                          renew_before: datetime.timedelta | None,
                          resync_period: datetime.timedelta) -> str | None:
    """A message for the Ready condition when the renewal window is shorter than the resync
    period, so that a token may expire before any resync finds it due; None when it is fine.

    Stable for a given token and settings (no ``now`` in it), so that repeating it on every pass
    changes nothing.
    """
    plan = plan_renewal(created, expiration, renew_before)
    if plan is None or created is None or expiration is None or expiration <= created:
        return None
    window = expiration - plan.at
    if window > resync_period:
        return None
    period = format_duration(resync_period)
    if renew_before is None or plan.note:
        fix = (f"the token lives {format_duration(expiration - created)}, so the last third "
               f"({format_duration(window)}) is not longer than the resync period ({period}): "
               f"resync more often than every {format_duration(window)}, or have Quay issue "
               "longer-lived tokens")
    else:
        fix = (f"{FIELD} ({format_duration(renew_before)}) is not longer than the resync period "
               f"({period}): set {FIELD} above {period}, or resync more often")
    return f"the token may expire before a resync renews it: {fix}"


def _seconds(value: datetime.datetime) -> datetime.datetime:
    return value.replace(microsecond=0)


# -- times -----------------------------------------------------------------------------------------
def rfc3339(when: datetime.datetime) -> str:
    """``2026-11-26T17:22:43Z``: whole seconds in UTC, as every time in status is written."""
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@functools.lru_cache(maxsize=4096)
def parse_time(value: str) -> datetime.datetime | None:
    """Quay's RFC 2822 dates (``-0000``) or our RFC 3339 ones; None when absent or unparsable.
    Cached: a plan reads the same few dates of an object several times (datetimes are values)."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        try:
            parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def is_expired(expiration: str, now: datetime.datetime) -> bool:
    when = parse_time(expiration)
    return when is not None and when <= now
