"""Figure 8: through Knative's real ApiServerSource receive adapter (one cluster-wide watch).

a. **Failing objects in a steady cluster (issue 10).** A few DockerTokens that fail in different
   ways are created with the adapter running (every write of the function comes back as an event);
   once they have settled, deliveries and Quay calls are counted for ``window`` seconds with
   nothing else going on: events from their own writes, extrapolated to an hour (goal 0). The
   adapter is then stopped and the real resync command (``benchmarks.resync_sample``, the
   ``dockertoken-resync`` identity) is run over them three times: while they back off, after
   their retry time was moved into the past (what a resync after ``status.retry.notBefore``
   sees), and right after that. Those measured per-resync costs, applied to the retry schedule of
   ``function/decide.py`` (5 min, then 10, 20 ... up to 6 h; resync every 10 min), give the
   calls per hour: a model, not an hour of measurement.
b. **Serial delivery.** No-op update events (an annotation touched on Ready objects) and new
   objects (add, then the echo of each write), timed from the function's log: what one watch
   delivers per second, given the function's latency.
"""

from __future__ import annotations

import datetime
import os
import secrets
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import fullresync
from benchmarks.bulk import event_lines
from benchmarks.stats import progress
from benchmarks.world import Conn, Function, G, Obj, P, V, World, children, vm_hwm
from function import decide
from function.decide import Failure
from function.model import Retry, Status
from tests.adapter_proc import running_adapter
from tests.controlplane import free_port
from tests.eventing_controller import generated_adapter_pod

NAMESPACE = "bench-failing"
WATCH_EVENT = "dev.knative.apiserver."
RESYNC_EVENT = "resync"
QUIET = 2.0
SETTLE_MAX = 60.0
RESYNC_PERIOD = datetime.timedelta(minutes=10)  # knative/base/cronjob.yaml: */10


@dataclass(frozen=True)
class Mode:
    key: str
    title: str
    conn_data: Callable[[World], dict[str, str] | None]  # None: no connection Secret
    foreign_secret: bool = False


def _token(world: World, scopes: str) -> str:
    if "bench-fail" not in world.quay.state.users:
        world.quay.add_user("bench-fail")
    return world.quay.add_oauth_token("bench-fail", scopes)


MODES = [
    Mode("401", "unknown OAuth token (Quay 401)",
         lambda w: {"host": w.quay.base_url, "token": secrets.token_hex(20)}),
    Mode("403", "token without user:admin (Quay 403)",
         lambda w: {"host": w.quay.base_url, "token": _token(w, "user:read")}),
    Mode("nosecret", "connection Secret missing", lambda w: None),
    Mode("unreachable", "Quay unreachable (temporary)",
         lambda w: {"host": f"http://127.0.0.1:{free_port()}", "token": "x" * 40, "timeout": "1"}),
    Mode("conflict", "return Secret owned by someone else",
         lambda w: {"host": w.quay.base_url, "token": _token(w, "user:admin")}, foreign_secret=True),
]


def _obj(mode: Mode) -> Obj:
    conn = Conn(-1, NAMESPACE, f"conn-{mode.key}", "", "")
    return Obj(-1, NAMESPACE, f"fail-{mode.key}", conn)


@dataclass
class PerObject:
    deliveries: int = 0
    quay_calls: int = 0
    writes: int = 0
    http: list[int] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)


@dataclass
class ModeResult:
    mode: Mode
    reason: str = ""
    settle: PerObject = field(default_factory=PerObject)
    window: PerObject = field(default_factory=PerObject)
    not_due: PerObject = field(default_factory=PerObject)
    due: PerObject = field(default_factory=PerObject)
    again: PerObject = field(default_factory=PerObject)
    attempts: int = 0
    next_retry_minutes: float = 0.0


@dataclass
class Serial:
    noop_events: int = 0
    noop_seconds: float = 0.0           # first to last delivery, from the log's timestamps
    noop_p50_ms: float = 0.0            # the function's own duration_ms
    creations: int = 0
    creation_seconds: float = 0.0       # first create -> all Ready
    creation_events: int = 0            # deliveries for those objects (add + echoes)
    add_p50_ms: float = 0.0

    @property
    def noop_rate(self) -> float:
        return (self.noop_events - 1) / self.noop_seconds if self.noop_seconds else 0.0

    @property
    def creation_rate(self) -> float:
        return self.creations / self.creation_seconds if self.creation_seconds else 0.0


@dataclass
class WatchResults:
    window: float
    modes: list[ModeResult]
    serial: Serial
    quay_calls_in_window: int           # all Quay calls the simulator saw during the window
    writes_in_window: int               # all API writes (dockertokens, secrets) during the window
    due_returncode: int = 0
    not_due_returncode: int = 0
    adapter_rss_kib: int = 0
    schedule: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # mean, min, max


def _per_object(lines: list[dict[str, Any]]) -> PerObject:
    return PerObject(len(lines), sum(int(x.get("quay_calls") or 0) for x in lines),
                     sum(int(x.get("writes") or 0) for x in lines),
                     [int(x.get("http") or 0) for x in lines], [str(x.get("outcome")) for x in lines])


def _since(fn: Function, o: Obj, kind: str, skip: int) -> list[dict[str, Any]]:
    return event_lines(fn, [o], kind)[skip:]


def _create_failing(world: World) -> list[Obj]:
    world.core.create_namespace({"metadata": {"name": NAMESPACE}})
    objs = []
    for mode in MODES:
        o = _obj(mode)
        data = mode.conn_data(world)
        if data is not None:
            world.core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": o.conn.secret},
                                                            "stringData": data})
        if mode.foreign_secret:
            world.core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": o.ret_secret},
                                                            "stringData": {"mine": "1"}})
        body = o.body()
        body["spec"]["name"] = f"fail-{mode.key}"
        world.custom.create_namespaced_custom_object(G, V, NAMESPACE, P, body)
        objs.append(o)
    return objs


def _settled(world: World, fn: Function, objs: list[Obj]) -> None:
    deadline = time.monotonic() + SETTLE_MAX
    seen, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(event_lines(fn, objs, WATCH_EVENT))
        if count != seen:
            seen, quiet_since = count, time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET and all(_ready(world, o) for o in objs):
            return
        time.sleep(0.1)
    raise RuntimeError(f"failing objects still receiving events after {SETTLE_MAX} s")


def _ready(world: World, o: Obj) -> dict[str, Any]:
    conds = ((world.get(o).get("status") or {}).get("conditions")) or []
    return next((c for c in conds if c.get("type") == "Ready"), {})


def _adapter_rss() -> int:
    for pid in children(os.getpid()):
        try:
            if b"apiserver_receive_adapter" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return vm_hwm(pid)
        except OSError:
            continue
    return 0


def _log_time(line: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(str(line["time"]).replace("Z", "+00:00")).timestamp()


def _serial_noops(world: World, fn: Function, objs: list[Obj], out: Serial) -> None:
    """Touch an annotation on Ready objects: one no-op update event each, delivered serially."""
    custom = world.custom
    stamp = str(time.time())

    def touch(o: Obj) -> None:
        custom.patch_namespaced_custom_object(G, V, o.namespace, P, o.name,
                                              {"metadata": {"annotations": {"bench/touched": stamp}}})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(touch, objs))
    deadline = time.monotonic() + 60 + len(objs) * 0.2
    while time.monotonic() < deadline:
        lines = event_lines(fn, objs, "update")
        if len(lines) >= len(objs):
            break
        time.sleep(0.2)
    else:
        raise RuntimeError(f"only {len(lines)} of {len(objs)} touches delivered")
    times = sorted(_log_time(x) for x in lines)
    out.noop_events, out.noop_seconds = len(lines), times[-1] - times[0]
    out.noop_p50_ms = statistics.median(float(x.get("duration_ms") or 0) for x in lines)


def _serial_creations(world: World, fn: Function, objs: list[Obj], out: Serial) -> None:
    started = time.perf_counter()
    world.create(objs)
    deadline = time.monotonic() + 60 + len(objs) * 2
    pending = list(objs)
    while pending and time.monotonic() < deadline:
        pending = [o for o in pending if _ready(world, o).get("status") != "True"]
        time.sleep(0.05)
    if pending:
        raise RuntimeError(f"{len(pending)} of {len(objs)} new objects not Ready through the adapter")
    out.creations, out.creation_seconds = len(objs), time.perf_counter() - started
    time.sleep(QUIET)  # the echo of the last Ready write
    lines = event_lines(fn, objs, WATCH_EVENT)
    out.creation_events = len(lines)
    adds = [float(x.get("duration_ms") or 0) for x in lines if str(x.get("event")).endswith(".add")]
    out.add_p50_ms = statistics.median(adds) if adds else 0.0


def _resync(world: World, fn: Function, objs: list[Obj], results: list[ModeResult],
            attr: str) -> int:
    skip = {o.name: len(_since(fn, o, RESYNC_EVENT, 0)) for o in objs}
    run = fullresync.resync(world, fn, concurrency=8, sample=objs, label=f"failing, {attr}",
                            threads=10, allow_failures=True)
    time.sleep(0.5)  # the log line of the last answer
    for o, r in zip(objs, results, strict=True):
        setattr(r, attr, _per_object(_since(fn, o, RESYNC_EVENT, skip[o.name])))
    return run.returncode


def measure(world: World, *, window: float, touches: list[Obj], creations: list[Obj],
            threads: int) -> WatchResults:
    fn = Function(world, threads=threads).start()
    try:
        # the adapter as Knative's controller makes it from knative/base
        pod = generated_adapter_pod(world.cp, fn.proc_wrapper.url)
        with running_adapter(world.cp, fn.proc_wrapper, pod):
            progress(f"figure 8: {len(MODES)} failing objects through the real adapter, settle, "
                     f"then a {window:.0f} s window")
            objs = _create_failing(world)
            _settled(world, fn, objs)
            results = [ModeResult(m) for m in MODES]
            for o, r in zip(objs, results, strict=True):
                r.settle = _per_object(_since(fn, o, WATCH_EVENT, 0))
                r.reason = str(_ready(world, o).get("reason", ""))
            before = world.counts()
            time.sleep(window)
            counts = world.counts() - before
            for o, r in zip(objs, results, strict=True):
                r.window = _per_object(_since(fn, o, WATCH_EVENT, r.settle.deliveries))
            serial = Serial()
            progress(f"figure 8: serial delivery, {len(touches)} no-op updates, {len(creations)} new objects")
            _serial_noops(world, fn, touches, serial)
            _serial_creations(world, fn, creations, serial)
            rss = _adapter_rss()
        progress("figure 8: the resync command over the failing objects: backing off, due, again")
        out = WatchResults(window, results, serial, counts.quay_calls, counts.writes, adapter_rss_kib=rss)
        out.not_due_returncode = _resync(world, fn, objs, results, "not_due")
        for o in objs:
            world.custom.patch_namespaced_custom_object_status(
                G, V, NAMESPACE, P, o.name, {"status": {"retry": {"notBefore": "2000-01-01T00:00:00Z"}}})
        out.due_returncode = _resync(world, fn, objs, results, "due")
        now = datetime.datetime.now(datetime.UTC)
        for o, r in zip(objs, results, strict=True):
            retry = Status.from_object(world.get(o).get("status")).retry
            if retry is not None:
                r.attempts = retry.attempts
                due = decide.parse_time(retry.not_before)
                r.next_retry_minutes = (due - now).total_seconds() / 60 if due else 0.0
        _resync(world, fn, objs, results, "again")
        out.schedule = schedule_model()
        return out
    finally:
        fn.stop()


# -- the retry schedule, from function/decide.py ---------------------------------------------------
def retry_times(phase: datetime.timedelta, horizon: datetime.timedelta) -> list[datetime.timedelta]:
    """When a resync retries an object that failed at t=0, resyncs coming at ``phase`` + k x 10 min
    (decide.retry_record for the schedule, RETRY_SLACK for how early a resync may retry)."""
    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    failure = Failure("QuayAuthenticationFailed", "model")
    status = _with(decide.retry_record(Status(), "inputs", failure, t0))
    out, t = [], phase
    while t < horizon:
        now = t0 + t
        due = decide.parse_time(status.retry.not_before if status.retry else "")
        if due is not None and now >= due - decide.RETRY_SLACK:
            out.append(t)
            status = _with(decide.retry_record(status, "inputs", failure, now))
        t += RESYNC_PERIOD
    return out


def _with(record: dict[str, Any]) -> Status:
    return Status(retry=Retry(record["inputs"], record["attempts"], record["notBefore"], record["temporary"]))


def schedule_model() -> dict[str, tuple[float, float, float]]:
    """Retries per failing object: in hour 1, in day 1, and per hour in the steady state (day 3 on),
    as (mean, min, max) over the resync's phase (the failure may come any time between resyncs)."""
    phases = [datetime.timedelta(minutes=m + 0.5) for m in range(10)]
    hour, day = datetime.timedelta(hours=1), datetime.timedelta(days=1)
    rows: dict[str, list[float]] = {"hour 1": [], "day 1": [], "steady, per hour": []}
    for p in phases:
        times = retry_times(p, 4 * day)
        rows["hour 1"].append(sum(t < hour for t in times))
        rows["day 1"].append(sum(t < day for t in times))
        rows["steady, per hour"].append(sum(2 * day <= t < 4 * day for t in times) / 48)
    return {k: (statistics.mean(v), min(v), max(v)) for k, v in rows.items()}
