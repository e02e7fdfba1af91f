"""The capacity model of the per-event resync (one event per object, before issue 22), computed
from one run's measured figures; kept as the baseline. The bulk resync's model, which
docs/scaling.md presents, is ``benchmarks/bulkresync.model`` (``scripts/bench --bulk-resync``).

Everything here is arithmetic on what the run measured (named in :class:`Inputs`); nothing is
measured at 10k or 100k objects. The assumptions are the deployed defaults (knative/base):
resync every 10 minutes with ``activeDeadlineSeconds: 540`` and ``RESYNC_CONCURRENCY=8``; the
Service's autoscaling target of 8 concurrent requests per pod (so a resync at concurrency k
keeps about ceil(k / 8) pods busy, up to max-scale 3), a CPU limit of 1 per pod and of 0.5 for
the resync command; one ApiServerSource, whose adapter delivers one event at a time.
"""

from __future__ import annotations

import math
import tracemalloc
from dataclasses import dataclass

from function.cache import TokenListCache
from function.model import Token

OBJECTS = (1_000, 10_000, 100_000)
CONNECTIONS = (10, 100)
PAGE = 500                     # function/kube.py PAGE_SIZE, the resync command's list pages
OAUTH_CPU = 0.255              # seconds of Quay CPU per OAuth-authenticated request (bcrypt)
RESYNC_PERIOD = 600.0
RESYNC_DEADLINE = 540.0        # knative/base/cronjob.yaml activeDeadlineSeconds
RESYNC_CPU_LIMIT = 0.5         # knative/base/cronjob.yaml: the resync container's CPU limit
TARGET_PER_POD = 8             # autoscaling.knative.dev/target
MAX_SCALE = 3
READS_PER_EVENT = 3            # the object, its connection Secret, its return Secret


@dataclass
class Inputs:
    """What the model is computed from; each field names the figure it comes from."""

    fn_cpu: float           # fig. 4: function CPU seconds per resync event (full resync)
    api_cpu: float          # fig. 4: kube-apiserver CPU seconds per resync event
    etcd_cpu: float         # fig. 4: etcd CPU seconds per resync event
    cmd_cpu: float          # fig. 4: the resync command's CPU seconds per event, start-up excluded
    latency: float          # fig. 4: seconds per resync event at concurrency 1, warm cache
    noop_rate: float        # fig. 8: no-op update events per second through one watch
    creation_rate: float    # fig. 8: new objects per second through one watch (add + echoes)
    obj_bytes: float        # one DockerToken as the API server serves it (JSON, managedFields)
    pull_bytes: float       # one pull Secret
    conn_bytes: float       # one connection Secret
    rss_kib: int            # fig. 5: worker VmHWM after the full resync
    token_bytes: float      # heap bytes per token in the token-list cache (tracemalloc)


@dataclass
class Row:
    objects: int
    conns: int
    pods: int
    concurrency: int
    resync_seconds: float
    bound: str
    api_requests: int
    api_pages: int
    api_bytes: float
    api_cpu: float
    quay_lists: int
    quay_cpu: float
    memory_mib: float
    bulk_hours: float


def resync_seconds(inp: Inputs, objects: int, concurrency: int) -> tuple[float, int, str]:
    """(duration of one resync, pods it keeps busy, what bounds it): the longest of the round trip
    of ``concurrency`` events in flight, the function's CPU on that many pods (1 CPU each), and
    the resync command's own CPU under its limit."""
    pods = min(MAX_SCALE, max(1, math.ceil(concurrency / TARGET_PER_POD)))
    bounds = {"latency": objects * inp.latency / concurrency, "function CPU": objects * inp.fn_cpu / pods,
              "command CPU": objects * inp.cmd_cpu / RESYNC_CPU_LIMIT}
    bound = max(bounds, key=lambda k: bounds[k])
    return bounds[bound], pods, bound


def row(inp: Inputs, objects: int, conns: int, concurrency: int = 8) -> Row:
    seconds, pods, bound = resync_seconds(inp, objects, concurrency)
    lists = conns * pods  # each pod keeps its own token lists
    return Row(
        objects, conns, pods, concurrency, seconds, bound,
        api_requests=READS_PER_EVENT * objects + math.ceil(objects / PAGE),
        api_pages=math.ceil(objects / PAGE),
        api_bytes=objects * inp.obj_bytes + objects * (inp.obj_bytes + inp.conn_bytes + inp.pull_bytes),
        api_cpu=objects * (inp.api_cpu + inp.etcd_cpu),
        quay_lists=lists, quay_cpu=lists * OAUTH_CPU,
        memory_mib=(inp.rss_kib * 1024 + objects * inp.token_bytes) / 2**20,
        bulk_hours=objects / inp.creation_rate / 3600 if inp.creation_rate else math.nan,
    )


def table(inp: Inputs) -> list[str]:
    out = ["objects | conns | resync conc. -> pods | resync duration | API per resync: requests, "
           "list pages, bytes, apiserver+etcd CPU | Quay per resync: lists, CPU | memory per pod | "
           "bulk creation through one watch"]
    for n in OBJECTS:
        for c in CONNECTIONS:
            for k in (8, 24):
                r = row(inp, n, c, k)
                late = ", over the 540 s deadline" if r.resync_seconds > RESYNC_DEADLINE else ""
                out.append(
                    f"{n:>7,} | {c:>3} | {k:>2} -> {r.pods} | {r.resync_seconds:4.0f} s ({r.bound}{late}) | "
                    f"{r.api_requests:,} req., {r.api_pages} pages, {r.api_bytes / 2**20:,.0f} MiB, "
                    f"{r.api_cpu:,.0f} CPU s | {r.quay_lists} lists, {r.quay_cpu:.0f} s | "
                    f"{r.memory_mib:.0f} MiB | {r.bulk_hours:.1f} h")
    return out


def cache_bytes_per_token(n: int = 20_000) -> float:
    """Heap bytes one token takes in ``TokenListCache`` (uuid, title and Quay's three dates), as
    the function keeps them: measured with tracemalloc on ``n`` tokens like the simulator's."""
    def fetch() -> list[Token]:  # fresh strings, as parsing Quay's JSON makes them
        def date(day: str, i: int) -> str:
            return f"{day}, 0{i % 7 + 1} Dec 2026 {i % 24:02d}:37:20 -0000"

        return [Token(f"{i:08x}-0000-4000-8000-{i:012x}", f"bench-{i:06d}", date("Thu", i),
                      date("Fri", i), date("Sat", i)) for i in range(n)]

    cache = TokenListCache()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache.get("key", fetch)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / n
