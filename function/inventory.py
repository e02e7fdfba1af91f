"""The bulk resync: plan a page of DockerTokens from lists, and name only the objects that drifted.

A resync used to send one event per object, and each event read the object, its connection
Secret and its pull Secret (3 GETs and ~16 ms of CPU for an object with nothing to do). Here
the resync command asks for one page at a time (``main.py``, event type ``resyncplan``); for
a page of up to :data:`PAGE_SIZE` DockerTokens the function makes:

* 1 list of the DockerTokens (from the command's continue token),
* 1 list of their pull Secrets, by the ``owner-uid`` label the function sets on each
  (``owner-uid in (...)``, whatever the namespaces),
* per run and process: 1 GET per connection Secret and per consenting Namespace, 1 list of the
  ServiceAccounts of each namespace whose DockerTokens name some (:class:`RunReads`),
* per run and process: 1 Quay token list per connection (the reconciler's
  ``TokenListCache``, by the run's wave id), all connections of a page in parallel.

Each object is then observed (``observe.observe`` on those answers) and planned by the same
pure ``decide.plan`` as a reconcile, and :func:`verdict` says whether carrying the plan out
would change anything. Objects with nothing to do cost no request of their own; the others are
named back to the command, which sends each one a resync event (a reconcile of its own, isolated,
bounded by the Service's timeout, with the retry backoff as before). A page is bounded: a fixed
number of objects, a few lists, and one Quay timeout for the lists made in parallel.

While a page is planned, the next one (its DockerTokens and their pull Secrets) is read ahead,
so the API server's work and the function's overlap; at most one page is held ahead per
process, and one read ahead is wasted when the command's next request goes to another pod.
"""

from __future__ import annotations

import datetime
import logging
import re
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from function import conditions, decide, lastaccess, pullsecret, result
from function.apply import QuayFactory, quay_client
from function.cache import TokenListCache
from function.connection import Connection, parse_connection
from function.decide import Observed
from function.errors import PermanentError, QuayError
from function.kube import Kube
from function.model import OWNER_UID_LABEL, DockerToken, Token
from function.observe import ParsedConnections, observe
from function.result import Handling
from function.steps import (
    Acquire,
    CreateSecret,
    DeleteSecret,
    EditServiceAccount,
    Fetch,
    ObtainToken,
    PatchMetadata,
    Plan,
    ProtectConnection,
    RecreateSecret,
    ReleaseConnection,
    ReplaceSecret,
    Revoke,
    Step,
    Verify,
    WriteStatus,
)

logger = logging.getLogger(__name__)

#: DockerTokens per page (one plan request): ~2.3 MiB of JSON and as much of pull Secrets, about
#: 1 s of work; fewer, larger pages mean fewer round trips between the command and the function.
PAGE_SIZE = 1000
#: Quay lists made at once for one page (each is one connection's).
MAX_PARALLEL_LISTS = 10
#: Runs whose shared reads a process keeps (runs of one CronJob do not overlap).
KEPT_RUNS = 4
# Kubernetes uids (label values): anything else is not put in a label selector.
_UID = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,61}[A-Za-z0-9]$|^[A-Za-z0-9]$")


@dataclass(frozen=True)
class Verdict:
    """What a resync must do about one object: ``drift`` names why it needs a reconcile ("" when
    it is up to date); ``failing`` is the Ready reason of an object waiting for its retry time."""

    drift: str = ""
    failing: str = ""


# -- the decision (pure) ---------------------------------------------------------------------------
#: The kinds of drift, most telling first: an object with several is counted under the first.
DRIFTS = ("deletion", "retry-due", "new-failure", "token-missing", "spec-changed", "token-expired",
          "renew-requested", "renewal-due", "token-unverified", "token-gone", "secret-moved",
          "secret-missing", "secret-edited", "last-accessed", "serviceaccount", "revocation-due",
          "protection", "status", "metadata")


def verdict(ob: Observed, plan: Plan, listed: Mapping[str, Token] | None) -> Verdict:
    """Whether carrying out ``plan`` would change anything, and what: the plan's own steps.

    ``listed``: the connection's Quay tokens by UUID (None when the list could not be made). A
    resync's plan asks Quay one question for a token it keeps (``Verify``): ``decide.without_quay``
    answers it from the list through the same continuations ``apply.py`` uses, and
    ``decide.is_in_order`` says whether the steps would write anything, so every write a
    reconcile would make counts, including the finalizer, claim labels, renew request and in-use
    protection. An object whose token needs another Quay answer (a GET, a creation) drifted.
    """
    report = plan.report
    if report.result == "gone":
        return Verdict()
    if report.result == "backoff":  # waiting for its retry time; only our metadata may be missing
        return Verdict("metadata") if plan.steps else Verdict(failing=report.reason or "Unknown")
    if plan.cleanup:
        return Verdict("deletion")
    if plan.failure is not None:
        return Verdict("retry-due" if ob.dt.status.retry is not None else "new-failure")
    try:
        todo = decide.without_quay(ob, plan, listed)
    # the Secret the API server would refuse: its reconcile records why
    except PermanentError:
        return Verdict("new-failure")
    found: set[str] = set()
    if todo is None:  # the token's drift, and the writes known without Quay's answer
        for step in plan.steps:
            if isinstance(step, ObtainToken):
                found.add(_token_drift(ob, step, listed))
                known: tuple[Step, ...] = (*step.ensure.deletes, *step.ensure.sa_edits)
                found |= {_kind(ob, s) for s in known}
            else:
                found.add(_kind(ob, step))
    elif decide.is_in_order(ob, todo):
        return Verdict()
    else:
        found = {_kind(ob, s) for s in todo}
    return Verdict(next(k for k in DRIFTS if k in found))


def _token_drift(ob: Observed, step: ObtainToken, listed: Mapping[str, Token] | None) -> str:
    """Why the token needs a Quay answer the list does not give."""
    dt, first = ob.dt, step.first
    if isinstance(first, Acquire):
        if first.rotation:
            return "renew-requested" if decide.renew_requested(dt) else "renewal-due"
        if not dt.status.uuid:
            return "token-missing"
        return "spec-changed" if dt.status.token_name != dt.title else "token-expired"
    if isinstance(first, Fetch):
        return "secret-missing" if ob.ret_secret is None else "secret-edited"
    if isinstance(first, Verify):
        return "token-unverified" if listed is None else "token-gone"
    return "token-missing"  # a registry check comes only after a creation


def _kind(ob: Observed, step: Step) -> str:
    """The drift a step of a kept object's plan repairs ("" for one that writes nothing)."""
    match step:
        case WriteStatus():
            return "status" if step.status.merge_patch(ob.dt.status) else ""
        case PatchMetadata():
            return "protection" if step.annotations else "metadata"
        case ProtectConnection() | ReleaseConnection():
            return "protection"
        case CreateSecret():
            return "secret-missing"
        case ReplaceSecret() | RecreateSecret():
            return _secret_drift(ob, step.body)
        case DeleteSecret():
            return "secret-moved"
        case EditServiceAccount():
            return "serviceaccount"
        case Revoke():
            return "revocation-due"
    return "deletion"  # RevokeByTitle, WaitForCreator, RemoveFinalizer: deletion steps


def _secret_drift(ob: Observed, desired: Mapping[str, Any]) -> str:
    current = ob.ret_secret
    if current is None:
        return "secret-missing"
    have, want = pullsecret.decoded(current), pullsecret.decoded(desired)
    if {k for k in have.keys() | want.keys() if have.get(k) != want.get(k)} == {"lastAccessed"}:
        return "last-accessed"
    return "secret-edited"


# -- the reads -------------------------------------------------------------------------------------
class RunReads:
    """What every page of one run reads alike, read once per process: connection Secrets,
    Namespaces (consents) and the ServiceAccounts of a namespace."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._lock = threading.Lock()
        self._secrets: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._namespaces: dict[str, dict[str, Any] | None] = {}
        self._accounts: dict[str, dict[str, dict[str, Any]]] = {}

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _once(self._lock, self._secrets, (namespace, name),
                     lambda: self.kube.get_secret(namespace, name))

    def namespace(self, name: str) -> dict[str, Any] | None:
        return _once(self._lock, self._namespaces, name, lambda: self.kube.get_namespace(name))

    def serviceaccounts(self, namespace: str) -> dict[str, dict[str, Any]]:
        return _once(self._lock, self._accounts, namespace, lambda: {
            str((sa.get("metadata") or {}).get("name")): sa
            for sa in self.kube.list_serviceaccounts(namespace)})


K = TypeVar("K")
V = TypeVar("V")


def _once(lock: threading.Lock, store: dict[K, V], key: K, fetch: Callable[[], V]) -> V:
    """``store[key]``, fetched on first use (two threads may both fetch; the first one is kept)."""
    with lock:
        if key in store:
            return store[key]
    value = fetch()
    with lock:
        return store.setdefault(key, value)


class PageReads:
    """``observe.Reads`` for one page: pull Secrets from the page's labelled list, the rest from
    the run's shared reads. A pull Secret not in the list is missing (or lost its label: either
    way a reconcile repairs it), except for an object failing because a foreign Secret squats
    its name: that Secret is read (its resourceVersion is in the digest the object waits on)."""

    def __init__(self, run: RunReads, pulled: Mapping[tuple[str, str], dict[str, Any]],
                 pull_refs: set[tuple[str, str]], probe: set[tuple[str, str]]) -> None:
        self.run, self.pulled, self.pull_refs, self.probe = run, pulled, pull_refs, probe
        self.probed = 0
        self.parsed: ParsedConnections = {}  # the run holds the Secrets (see observe.py)

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        key = (namespace, name)
        if key not in self.pull_refs:
            return self.run.secret(namespace, name)
        found = self.pulled.get(key)
        if found is None and key in self.probe:
            self.probed += 1
            return self.run.kube.get_secret(namespace, name)
        return found

    def get_namespace(self, name: str) -> dict[str, Any] | None:
        return self.run.namespace(name)

    def get_serviceaccount(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.run.serviceaccounts(namespace).get(name)


# -- one page --------------------------------------------------------------------------------------
@dataclass
class PageReport:
    """What one plan request found; ``main.py`` answers it as JSON."""

    seen: int = 0
    up_to_date: int = 0
    drifted: list[dict[str, str]] = field(default_factory=list)  # {namespace, name, drift}
    failing: dict[str, int] = field(default_factory=dict)        # Ready reason -> objects
    cont: str = ""
    quay_calls: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"seen": self.seen, "upToDate": self.up_to_date, "drifted": self.drifted,
                "failing": self.failing, "continue": self.cont, "quayCalls": self.quay_calls}


class Inventory:
    """Plans pages for the resync command; holds the runs' shared reads (see RunReads)."""

    def __init__(self, kube: Kube, cache: TokenListCache, *, quay_factory: QuayFactory = quay_client,
                 clock: Callable[[], datetime.datetime] | None = None,
                 resync_period: datetime.timedelta = decide.RESYNC_PERIOD,
                 rotation_grace: datetime.timedelta = decide.ROTATION_GRACE,
                 registry_check: bool = True,
                 last_accessed_refresh: datetime.timedelta = lastaccess.DEFAULT) -> None:
        self.kube, self.cache, self.quay_factory = kube, cache, quay_factory
        self.clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        # the deployment's settings, as the reconciler has them: the plans must be the same
        self.resync_period, self.rotation_grace = resync_period, rotation_grace
        self.registry_check, self.last_accessed_refresh = registry_check, last_accessed_refresh
        self._runs: OrderedDict[str, RunReads] = OrderedDict()
        self._lock = threading.Lock()
        # the next page of a run, read while this one is planned (see _page)
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plan-ahead")
        self._ahead: tuple[tuple[str, str, int, str], Future[_Page]] | None = None

    def _run(self, wave: str) -> RunReads:
        with self._lock:
            run = self._runs.get(wave) if wave else None
            if run is None:
                run = RunReads(self.kube.session())
                if wave:
                    self._runs[wave] = run
                    while len(self._runs) > KEPT_RUNS:
                        self._runs.popitem(last=False)
            return run

    def plan_page(self, *, namespace: str = "", cont: str = "", limit: int = PAGE_SIZE,
                  wave: str = "") -> PageReport:
        """Plan one page of DockerTokens (see the module docstring). Raises the API server's
        errors for the page's own lists (the command then retries, or reports the run failed);
        a problem with one object only sends that object to a reconcile of its own."""
        now = self.clock()
        run = self._run(wave)
        # a worker more than the lists: the page's pull Secrets are listed there meanwhile
        with ThreadPoolExecutor(max_workers=MAX_PARALLEL_LISTS + 1, thread_name_prefix="plan-list") as pool:
            lists = _Lists(self, pool, wave)

            # the Quay lists start as soon as the page's DockerTokens are known: they run while
            # the pull Secrets are listed and the objects planned
            def start_lists(objs: list[dict[str, Any]]) -> None:
                for conn in self._likely_connections(run, objs):
                    lists.start(conn)

            page = self._page(namespace, cont, limit, wave, pool, start_lists)
            report = PageReport(seen=len(page.objs), cont=page.next_cont)
            reads = PageReads(run, page.pulled, page.pull_refs, page.probe)
            self._plan_objects(reads, page, report, lists, now, wave)
        report.quay_calls = sum(lists.calls)
        return report

    def _page(self, namespace: str, cont: str, limit: int, wave: str, pool: ThreadPoolExecutor,
              on_objects: Callable[[list[dict[str, Any]]], None]) -> _Page:
        """The page asked for: read ahead while the previous one was planned, or read now (its
        pull Secrets listed in ``pool`` while ``on_objects`` is given its DockerTokens); then
        the next one is read ahead (the command asks for it as soon as it has this answer). At
        most one page is held ahead; it is a second old at most when used."""
        key = (namespace, cont, limit, wave)
        with self._lock:
            ahead, self._ahead = self._ahead, None
        page = None
        if ahead is not None and ahead[0] == key:
            try:
                page = ahead[1].result()
            # read it again now; the error, if it lasts, is the request's
            except Exception:
                logger.debug("resync plan: the page read ahead failed", exc_info=True)
        if page is None:
            page = _read_page(self.kube, namespace, cont, limit, pool, on_objects)
        else:
            on_objects(page.objs)
        if page.next_cont and wave:
            nxt = (namespace, page.next_cont, limit, wave)
            future = self._reader.submit(_read_page, self.kube, namespace, page.next_cont, limit)
            with self._lock:
                self._ahead = (nxt, future)
        return page

    def _plan_objects(self, reads: PageReads, page: _Page, report: PageReport,
                      lists: _Lists, now: datetime.datetime, wave: str) -> None:
        planned: list[tuple[dict[str, Any], Observed, Plan]] = []
        for obj, view in zip(page.objs, page.views, strict=True):
            try:
                ob = observe(reads, obj, verify=True, now=now, wave=wave,
                             resync_period=self.resync_period, rotation_grace=self.rotation_grace,
                             registry_check=self.registry_check,
                             last_accessed_refresh=self.last_accessed_refresh, view=view,
                             parsed=reads.parsed)
                planned.append((obj, ob, decide.plan(ob)))
            # a refused read (a 403): planned as a reconcile plans it, so an object already
            # recording that failure waits for its retry time instead of being sent again
            except Exception as exc:
                if result.classify(exc) is Handling.RECORD:
                    try:
                        planned.append((obj, *decide.unobserved(DockerToken.from_object(obj), exc, now)))
                        continue
                    except Exception:
                        logger.debug("resync plan of %s: no view", _name(obj), exc_info=True)
                # anything else this object trips on: its own reconcile reports it
                self._drifted(report, obj, "unplanned")
                logger.warning("resync plan of %s: %s", _name(obj), type(exc).__name__, exc_info=True)
        for _, ob, plan in planned:
            if _verifies(plan) and ob.conn is not None:
                lists.start(ob.conn)
        failing: dict[str, int] = defaultdict(int)
        for obj, ob, plan in planned:
            try:
                listed = lists.get(ob.conn) if _verifies(plan) and ob.conn else None
                found = verdict(ob, plan, listed)
            except Exception:
                logger.warning("resync verdict of %s", _name(obj), exc_info=True)
                found = Verdict("unplanned")
            if found.drift:
                self._drifted(report, obj, found.drift)
            elif found.failing:
                failing[found.failing] += 1
            else:
                report.up_to_date += 1
        report.failing = dict(failing)

    @staticmethod
    def _likely_connections(run: RunReads, objs: list[dict[str, Any]]) -> list[Connection]:
        """The connections whose token lists the page will need, known before planning: those
        of objects that are not failing (a failing one waits for its retry time, and must cost
        no Quay call meanwhile), in their own namespace (another namespace's Secret is used only
        with its consent, which observe.py checks first)."""
        refs: set[tuple[str, str]] = set()
        for obj in objs:
            meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
            ref = spec.get("connSecretRef") if isinstance(spec, Mapping) else None
            if not isinstance(ref, Mapping) or not isinstance(ref.get("name"), str) \
                    or (obj.get("status") or {}).get("retry") or meta.get("deletionTimestamp"):
                continue
            if ref.get("namespace") in (None, "", meta.get("namespace")):
                refs.add((str(meta.get("namespace")), ref["name"]))
        conns = []
        for namespace, name in sorted(refs):
            try:
                secret = run.secret(namespace, name)
            # refused (e.g. 403 where the Secret rights were narrowed to some namespaces): the
            # objects using it are told so by their own observation, never the whole page
            except PermanentError:
                continue
            if secret is None:
                continue
            try:
                conns.append(parse_connection(pullsecret.decoded(secret), secret_name=name))
            # the objects using it are told so by their plan
            except PermanentError:
                continue
        return conns

    @staticmethod
    def _drifted(report: PageReport, obj: dict[str, Any], drift: str) -> None:
        meta = obj.get("metadata") or {}
        report.drifted.append({"namespace": str(meta.get("namespace") or ""),
                               "name": str(meta.get("name") or ""), "drift": drift})


@dataclass(frozen=True)
class _Page:
    """A page of DockerTokens and the pull Secrets of its objects."""

    objs: list[dict[str, Any]]
    views: list[DockerToken | None]  # DockerToken.from_object of each (None: it has no view)
    next_cont: str
    pulled: dict[tuple[str, str], dict[str, Any]]
    pull_refs: set[tuple[str, str]]  # where the page's pull Secrets are (spec and status)
    probe: set[tuple[str, str]]      # read when not in the list: where a foreign Secret is in the way


def _read_page(kube: Kube, namespace: str, cont: str, limit: int, pool: ThreadPoolExecutor | None = None,
               on_objects: Callable[[list[dict[str, Any]]], None] | None = None) -> _Page:
    """One list of DockerTokens, then one of their pull Secrets, by the owner-uid label (in
    ``pool`` when given, while ``on_objects`` is called with the DockerTokens)."""
    objs, next_cont = kube.list_dockertokens_page(namespace or None, cont, limit)
    pull_refs: set[tuple[str, str]] = set()
    probe: set[tuple[str, str]] = set()
    uids: set[str] = set()
    views: list[DockerToken | None] = []
    for obj in objs:
        try:
            dt = DockerToken.from_object(obj)
        # a spec the schema would refuse: planned (and refused) with the rest
        except Exception:
            logger.debug("resync plan: %s has no usable view", _name(obj))
            views.append(None)
            continue
        views.append(dt)
        refs = {(r.namespace, r.name) for r in (dt.ret_secret, dt.status.ret_secret) if r is not None}
        if refs and _UID.match(dt.uid):
            uids.add(dt.uid)
            pull_refs |= refs
            ready = dt.status.condition(conditions.READY) or {}
            if dt.status.retry is not None and ready.get("reason") == conditions.SECRET_CONFLICT:
                probe |= refs
    if pool is None or on_objects is None:
        pulled = _pull_secrets(kube, uids)
    else:
        listing = pool.submit(_pull_secrets, kube, uids)
        on_objects(objs)
        pulled = listing.result()
    return _Page(objs, views, next_cont, pulled, pull_refs, probe)


def _pull_secrets(kube: Kube, uids: set[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """The Secrets labelled with one of ``uids`` (owner-uid), by namespace and name."""
    pulled: dict[tuple[str, str], dict[str, Any]] = {}
    if uids:
        selector = f"{OWNER_UID_LABEL} in ({','.join(sorted(uids))})"
        # room for more than the page: a full page of matches would otherwise ask for one more
        for secret in kube.iter_secrets(selector, page_size=len(uids) + 100):
            meta = secret.get("metadata") or {}
            pulled[(str(meta.get("namespace")), str(meta.get("name")))] = secret
    return pulled


class _Lists:
    """The page's Quay token lists, each connection's fetched once in the pool (through the
    reconciler's cache, by wave: the run's resync events reuse them)."""

    def __init__(self, inventory: Inventory, pool: ThreadPoolExecutor, wave: str) -> None:
        self.inventory, self.pool, self.wave = inventory, pool, wave
        self.futures: dict[str, Future[Mapping[str, Token] | None]] = {}
        self.calls: list[int] = []

    def start(self, conn: Connection) -> None:
        if conn.fingerprint not in self.futures:
            self.futures[conn.fingerprint] = self.pool.submit(self._fetch, conn)

    def get(self, conn: Connection) -> Mapping[str, Token] | None:
        self.start(conn)
        return self.futures[conn.fingerprint].result()

    def _fetch(self, conn: Connection) -> Mapping[str, Token] | None:
        def fetch() -> list[Token]:
            with self.inventory.quay_factory(conn) as quay:
                try:
                    return quay.list_tokens()
                finally:
                    self.calls.append(quay.calls)
        try:
            return self.inventory.cache.get(conn.fingerprint, fetch, wave=self.wave)
        # its objects go to reconciles of their own, which record the failure
        except QuayError as exc:
            logger.warning("resync plan: listing tokens at %s failed: %s", conn.registry, exc)
            return None


def _verifies(plan: Plan) -> bool:
    """Whether the plan asks Quay's list whether the token it keeps still exists."""
    return any(isinstance(s, ObtainToken) and isinstance(s.first, Verify) for s in plan.steps)


def _name(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


__all__ = ["PAGE_SIZE", "Inventory", "PageReport", "Verdict", "verdict"]
