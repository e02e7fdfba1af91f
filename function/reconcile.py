"""One reconcile of one DockerToken: observe -> plan -> apply, restarted on a write conflict.

Called by ``main.py`` for every event. Level-based: the event only names the object (and says
whether it is a resync, which also confirms the token in Quay). Each pass reads everything
again (``observe.py``), decides with one pure function (``decide.plan``) and carries the plan
out (``apply.py``). An error from any of the three is handled as ``result.classify`` says: a
conflicting write restarts the pass from a fresh read (a few times, then 503 so the event is
redelivered), a refusal is recorded in status under the convergence rule, and what cannot be
recorded is answered 503. Whatever happens, the answer is one ``result.Result``.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable

from function import apply, decide, lastaccess, result
from function.cache import TokenListCache
from function.errors import TemporaryError
from function.kube import Kube
from function.model import DockerToken
from function.observe import observe
from function.result import Handling, Report, Result, Tally

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime.datetime]

# Conflicting writes restart the pass; past this many the event is answered 503 and redelivered.
MAX_PASSES = 5


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Reconciler:
    """Holds what outlives one event: the API client, the Quay client factory, the list cache,
    the clock and the deployment's settings."""

    def __init__(self, kube: Kube, *, quay_factory: apply.QuayFactory = apply.quay_client,
                 cache: TokenListCache | None = None, clock: Clock = utcnow,
                 resync_period: datetime.timedelta | None = None,
                 rotation_grace: datetime.timedelta | None = None,
                 registry_check: bool = True,
                 last_accessed_refresh: datetime.timedelta | None = None,
                 reporting_instance: str = "quay-dockertoken") -> None:
        self.kube, self.quay_factory, self.clock = kube, quay_factory, clock
        self.cache = cache or TokenListCache()
        self.resync_period = resync_period or decide.RESYNC_PERIOD
        self.rotation_grace = rotation_grace or decide.ROTATION_GRACE
        self.registry_check = registry_check  # REGISTRY_CHECK: log in with each new code
        # LAST_ACCESSED_REFRESH: how often Quay's lastAccessed is worth a pull Secret write
        self.last_accessed_refresh = last_accessed_refresh or lastaccess.DEFAULT
        self.reporting_instance = reporting_instance  # names this pod in the Events it records

    def reconcile(self, namespace: str, name: str, *, verify_quay: bool = False,
                  wave: str = "") -> Result:
        """Bring one object in line; never raises (see result.py for the answers)."""
        tally = Tally()
        try:
            for _ in range(MAX_PASSES):
                kube = self.kube.session()  # counts this pass's writes only
                obj = kube.get_dockertoken(namespace, name)
                if obj is None:
                    return result.finished(Report("gone"), tally)
                now = self.clock()
                try:
                    observed = observe(kube, obj, verify=verify_quay, wave=wave, now=now,
                                       resync_period=self.resync_period, rotation_grace=self.rotation_grace,
                                       registry_check=self.registry_check,
                                       last_accessed_refresh=self.last_accessed_refresh)
                    plan = decide.plan(observed)
                # as any phase: restart, record (the failure is planned like any other), or raise
                except Exception as exc:
                    handling = result.classify(exc)
                    if handling is Handling.RESTART:
                        continue
                    if handling is not Handling.RECORD:
                        raise
                    observed, plan = decide.unobserved(DockerToken.from_object(obj), exc, now)
                step = apply.Pass(kube, self.quay_factory, self.cache, observed, plan,
                                  reporting_instance=self.reporting_instance)
                try:
                    report = step.run()
                # someone wrote the object meanwhile: decide again on its new state
                except Exception as exc:
                    if result.classify(exc) is Handling.RESTART:
                        continue
                    raise
                finally:
                    tally += step.close()
                return result.finished(report, tally)
            raise TemporaryError(f"{namespace}/{name}: still changing after {MAX_PASSES} attempts")
        # nothing could be recorded: the one mapping of errors to answers
        except Exception as exc:
            answer = result.from_error(exc, tally)
            if answer.unexpected:
                logger.exception("%s/%s: unexpected error", namespace, name)
            return answer
