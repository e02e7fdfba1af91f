"""The result contract: what a reconcile reports, and the one mapping from errors to answers.

``reconcile.py`` returns a :class:`Result` for every event (``main.py`` logs it and answers with
its ``http``); ``decide.py`` reports how a pass ended as a :class:`Report`. Every phase (event
parsing, observe, plan, apply, deletion) hands what it raised to :func:`classify` (restart the
pass, record the failure, or raise), :func:`failure_of` (what to record in status) and
:func:`from_error` (what to answer when nothing could be recorded). The error tree itself is
drawn in ``errors.py``.

    recorded in status (Ready=False + retry schedule)  -> 204, the outcome in its headers
                                                          (main.py; the resync command counts them)
    nothing could be recorded (API server, a rival)    -> 503, the source redelivers
    a malformed event                                  -> 400, not retried
    anything else (a bug, an API server refusal)       -> 503 and a traceback in the log
                                                          (functions-framework's 500 is never retried)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from function import conditions
from function.errors import BadEvent, Conflict, PermanentError, QuayTransient, Restart, TemporaryError
from function.model import FINALIZER

NO_CONTENT, BAD_REQUEST, UNAVAILABLE = 204, 400, 503


@dataclass(frozen=True)
class Failure:
    """A failure to record in status (Ready=False) instead of acting."""

    reason: str
    message: str
    temporary: bool = False  # Quay was unavailable (a resync reports it), not a refusal


@dataclass(frozen=True)
class Report:
    """How one pass ended: the log's outcome, the Ready reason and message, when to retry."""

    result: str  # ready | failed | retrying | backoff | blocked | finalized | gone
    reason: str = ""
    message: str = ""
    temporary: bool = False  # left failing because Quay was unavailable
    retry_at: str = ""       # status.retry.notBefore while failing (RFC 3339)


@dataclass(frozen=True)
class Tally:
    """What the passes of one event did: the log line's actions and per-event figures."""

    actions: tuple[str, ...] = ()
    quay_calls: int = 0
    writes: int = 0
    claims_read: int = 0  # DockerTokens read to learn which tokens others claim

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.actions + other.actions, self.quay_calls + other.quay_calls,
                     self.writes + other.writes, self.claims_read + other.claims_read)


@dataclass(frozen=True)
class Result:
    """The answer to one event: HTTP status and body, and the fields of its log line."""

    http: int
    outcome: str  # a Report.result, or ignored | bad-event | retry | error
    reason: str = ""
    message: str = ""
    answer: str = ""   # the body of a non-2xx answer
    retry_at: str = ""
    temporary: bool = False
    tally: Tally = Tally()
    unexpected: bool = False  # a bug: log the traceback


IGNORED = Result(NO_CONTENT, "ignored")


class Handling(enum.StrEnum):
    """What a reconcile pass does with an error."""

    RESTART = "restart"  # someone wrote meanwhile: decide again from a fresh read
    RECORD = "record"    # Ready=False with the reason and status.retry (the convergence rule), 204
    RAISE = "raise"      # nothing can be recorded, or another delivery is on it: 503, redelivered


def classify(exc: BaseException) -> Handling:
    """The one error mapping of every phase. A conflict (or a pass that found the object
    changed) restarts the pass; a refusal (PermanentError, from Quay or the API server) and
    Quay being unavailable are recorded; the API server unavailable (nothing could be
    recorded), a concurrent creation, a malformed event and a bug are raised (503, or 400)."""
    if isinstance(exc, (Conflict, Restart)):
        return Handling.RESTART
    if isinstance(exc, (PermanentError, QuayTransient)):
        return Handling.RECORD
    return Handling.RAISE


def failure_of(exc: BaseException, *, cleanup: bool = False) -> Failure | None:
    """What to record in status for ``exc`` raised during a pass; None when nothing should be
    (:func:`classify`). During a deletion a failure blocks the cleanup, with the way out in the
    message."""
    if classify(exc) is not Handling.RECORD:
        return None
    assert isinstance(exc, (PermanentError, QuayTransient))
    temporary = isinstance(exc, QuayTransient)
    if cleanup:
        return Failure(
            conditions.CLEANUP_BLOCKED,
            f"cannot revoke the token in Quay: {exc}. Fix it, or set spec.preserveInQuayOnDeletion: "
            f"true (the token then stays in Quay) or remove the finalizer {FINALIZER}, and delete "
            "the token in Quay yourself",
            temporary=temporary,
        )
    return Failure(exc.reason, str(exc), temporary=temporary)


def finished(report: Report, tally: Tally) -> Result:
    """The answer to an event whose pass ended with ``report``: a failure recorded with its
    retry time is a job done (redelivering it at once would only feed the loop)."""
    return Result(NO_CONTENT, report.result, report.reason, report.message, "", report.retry_at,
                  report.temporary, tally)


def from_error(exc: BaseException, tally: Tally = Tally()) -> Result:
    """The answer when an error left nothing recorded (see the module docstring)."""
    if isinstance(exc, BadEvent):
        return Result(BAD_REQUEST, "bad-event", exc.reason, str(exc), f"bad event: {exc}", tally=tally)
    if isinstance(exc, TemporaryError):
        return Result(UNAVAILABLE, "retry", exc.reason, str(exc), f"temporary failure, retry: {exc}",
                      temporary=True, tally=tally)
    return Result(UNAVAILABLE, "error", answer="unexpected error; see the function's log",
                  tally=tally, unexpected=True)
