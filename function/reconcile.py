"""One reconcile of one DockerToken: observe -> plan -> apply, restarted on a write conflict.

Called by ``main.py`` for every event. Level-based: the event only names the object (and says
whether it is a resync, which also confirms the token in Quay). Each pass reads everything
again (``observe.py``), decides with one pure function (``decide.plan``) and carries the plan
out (``apply.py``). An error from any of the three is handled as ``errors.classify`` says: a
conflicting write restarts the pass from a fresh read (a few times, then 503 so the event is
redelivered), a refusal is recorded in status under the convergence rule, and what cannot be
recorded is raised (503).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from function import decide
from function.apply import Apply, Outcome, QuayFactory, Restart, quay_client
from function.cache import TokenListCache
from function.errors import Handling, ReconcileError, TemporaryError, classify
from function.kube import Kube
from function.model import DockerToken
from function.observe import observe

__all__ = ["Outcome", "Reconciler"]

Clock = Callable[[], datetime.datetime]

# Conflicting writes restart the pass; past this many the event is answered 503 and redelivered.
MAX_PASSES = 5


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Reconciler:
    """Holds what outlives one event: the API client, the Quay client factory, the list cache."""

    def __init__(self, kube: Kube, *, quay_factory: QuayFactory = quay_client,
                 cache: TokenListCache | None = None, clock: Clock = utcnow,
                 resync_period: datetime.timedelta | None = None) -> None:
        self.kube, self.quay_factory, self.clock = kube, quay_factory, clock
        self.cache = cache or TokenListCache()
        self.resync_period = resync_period

    def reconcile(self, namespace: str, name: str, *, verify_quay: bool = False,
                  wave: str = "") -> Outcome:
        """Bring one object in line. Raises TemporaryError (503) when a retry is needed."""
        total = Outcome("gone")
        for _ in range(MAX_PASSES):
            kube = self.kube.session()  # counts this pass's writes only
            obj = kube.get_dockertoken(namespace, name)
            if obj is None:
                return _merged(total, Outcome("gone"))
            now = self.clock()
            try:
                observed = observe(kube, obj, verify=verify_quay, wave=wave, now=now,
                                   resync_period=self.resync_period)
                plan = decide.plan(observed)
            except ReconcileError as exc:
                handling = classify(exc)
                if handling is Handling.RESTART:
                    continue
                if handling is not Handling.RECORD:
                    raise
                observed, plan = decide.unobserved(DockerToken.from_object(obj), exc, now)
            step = Apply(kube, self.quay_factory, self.cache, observed, plan, obj.get("status") or {})
            try:
                step.run()
                return _merged(total, step.close())
            # someone wrote the object meanwhile: decide again on its new state
            except (ReconcileError, Restart) as exc:
                _merged(total, step.close())
                if isinstance(exc, Restart) or classify(exc) is Handling.RESTART:
                    continue
                raise
            except BaseException:
                step.close()
                raise
        raise TemporaryError(f"{namespace}/{name}: still changing after {MAX_PASSES} attempts")


def _merged(total: Outcome, last: Outcome) -> Outcome:
    """The event's outcome: the last pass's result, every pass's actions and counts."""
    total.actions += last.actions
    total.quay_calls += last.quay_calls
    total.writes += last.writes
    total.claims_read += last.claims_read
    total.result, total.reason, total.message, total.temporary = (
        last.result, last.reason, last.message, last.temporary)
    return total
