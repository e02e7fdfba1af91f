"""Figure 6: bulk creation (issue 14), ours against today's algorithm in the same cluster.

A GitOps bootstrap or a restore creates all N DockerTokens at once; their add events reach the
function afterwards. So every object exists before the first event, and each creation's claim
check runs in a cluster of N objects. Add events are posted ``concurrency`` in flight (what the
function can take; one ApiServerSource watch delivers them one at a time, see figure 8).

Baseline, **today's algorithm** (``benchmarks/listall_function.py``): the claim check lists every
DockerToken and the token-list cache is dropped after each creation. It runs on a sample of the
N objects (with all N present, so its per-creation cost is the one of the whole bulk) and is
scaled to N, like the serial resync baseline; the sample is then deleted through that function
(revoking its tokens) and created again, so ours starts from the same N new objects.

Counted: Quay calls by the simulator, API requests from the kube-apiserver's ``/metrics``,
objects read by the claim lists from the function's per-event ``claims_read``; the bytes of one
claim list are measured by making that list once more at the end of the run (the API server's
``apiserver_response_sizes`` counted about 56 bytes per object for lists of 1,000 objects here:
not a measure of the bytes sent).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks import latency
from benchmarks.fullresync import self_cpu
from benchmarks.latency import Poster
from benchmarks.stats import progress
from benchmarks.world import Counts, Function, Obj, World
from function import claims
from function.connection import parse_connection

LIST = ("LIST", "dockertokens")


@dataclass
class BulkRun:
    label: str
    creations: int      # add events posted
    cluster: int        # DockerTokens present meanwhile
    concurrency: int
    samples: latency.Samples
    counts: Counts
    list_bytes: int     # bytes of one claim list, as made at the end of the run
    claims_read: int    # DockerTokens the claim lists returned (the log's claims_read)
    created: int        # events whose actions created or adopted a token
    cpu: dict[str, float] = field(default_factory=dict)
    memory: dict[str, int] = field(default_factory=dict)

    @property
    def wall(self) -> float:
        return self.samples.wall

    @property
    def lists(self) -> int:
        return self.counts.api.get(LIST, 0)

    def per(self, value: float) -> float:
        return value / max(self.creations, 1)


def event_lines(fn: Function, objs: list[Obj], kind: str = "") -> list[dict[str, Any]]:
    """The function's per-event log lines about ``objs`` (event types containing ``kind``)."""
    names = {(o.namespace, o.name) for o in objs}
    out = []
    for line in fn.logs().splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "outcome" in entry and (entry.get("namespace"), entry.get("name")) in names \
                and kind in str(entry.get("event", "")):
            out.append(entry)
    return out


def claim_label(world: World, o: Obj) -> str:
    """The label the function's claim list of ``o`` selects on (function.claims.claim_label)."""
    conn = parse_connection({"host": world.quay.base_url, "token": o.conn.token}, secret_name="bench")
    return claims.claim_label(conn.registry, o.title)


def run(world: World, fn: Function, objs: list[Obj], *, concurrency: int, label: str,
        cluster: int, by_label: bool = True) -> BulkRun:
    """Post an add event for each of ``objs`` (all new), ``concurrency`` in flight. ``by_label``:
    the function lists by claim label (ours), else every DockerToken (today's algorithm)."""
    poster = Poster(fn.url)
    try:
        before = world.counts()
        cpu_before = {"function": fn.cpu(), **world.control_plane_cpu(), "harness": self_cpu()}
        samples = latency.post_all(poster, "add", objs, concurrency)
        cpu = {"function": fn.cpu(), **world.control_plane_cpu(), "harness": self_cpu()}
        counts = world.counts() - before
        list_bytes = world.list_bytes(claim_label(world, objs[-1]) if by_label else None)[0]
        if samples.failures:
            # what ApiServerSource would do: deliver again, so the world stays consistent
            progress(f"{label}: {len(samples.failures)} non-2xx answers, delivered again one at a time")
            failed = {f.split(":")[0] for f in samples.failures}
            latency.post_all(poster, "add", [o for o in objs if f"{o.namespace}/{o.name}" in failed])
    finally:
        poster.close()
    lines = event_lines(fn, objs, "add")
    created = sum(any(a in ("create-token", "adopt-token") for a in line.get("actions") or [])
                  for line in lines)
    return BulkRun(label, len(objs), cluster, concurrency, samples, counts, list_bytes,
                   sum(int(line.get("claims_read") or 0) for line in lines), created,
                   cpu={k: v - cpu_before.get(k, 0.0) for k, v in cpu.items()}, memory=fn.memory())


def delete_through(world: World, fn: Function, objs: list[Obj], concurrency: int) -> float:
    """Delete ``objs`` and let ``fn`` finalize them (revoke, delete the Secret, drop the finalizer),
    as the watch's update events would; returns the seconds until all are gone."""
    started = time.perf_counter()
    world.delete(objs)
    poster = Poster(fn.url)
    try:
        for _ in range(5):
            latency.post_all(poster, "update", objs, concurrency)
            deadline = time.monotonic() + 10
            while world.existing(objs) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not world.existing(objs):
                return time.perf_counter() - started
    finally:
        poster.close()
    raise RuntimeError(f"{world.existing(objs)} of {len(objs)} objects not finalized:\n{fn.logs()[-3000:]}")


def baseline(world: World, sample: list[Obj], *, threads: int, concurrency: int,
             cluster: int) -> BulkRun:
    """Today's algorithm on ``sample``; then the sample is made new again (deleted through the
    same function, which revokes its tokens, and created again)."""
    fn = Function(world, "benchmarks/listall_function.py", threads=threads).start()
    try:
        out = run(world, fn, sample, concurrency=concurrency, label="today's algorithm", cluster=cluster,
                  by_label=False)
        delete_through(world, fn, sample, concurrency)
    finally:
        fn.stop()
    world.create(sample)
    return out
