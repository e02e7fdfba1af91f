"""Figure 7: two function processes sharing the load, against one (what max-scale 2 gives).

The load is a full resync's worth of events (one resync event per Ready DockerToken, a new resync
run each time, so each process lists each connection's tokens once): the high-volume,
CPU-bound work of the function. The same ``in_flight`` events are kept outstanding in both
cases (twice a process's THREADS, so one process is saturated), posted round-robin in a shuffled
order of the objects: event i goes to process i mod 2. Rounds alternate the order (one, two /
two, one) so both see the same noise.

Everything shares this machine's 2 cores with the kube-apiserver and etcd, which serve 3 GETs per
event: the ratio says how much a second process gains *here*; the CPU split says why.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from benchmarks.fullresync import warm
from benchmarks.latency import Poster
from benchmarks.stats import median
from benchmarks.world import Counts, Function, Obj, World
from tests import harness


@dataclass
class Load:
    processes: int
    events: int
    wall: float
    failures: int
    counts: Counts
    cpu: dict[str, float]

    @property
    def rate(self) -> float:
        return self.events / self.wall


@dataclass
class TwoProcesses:
    in_flight: int
    threads: int
    runs: dict[int, list[Load]] = field(default_factory=lambda: {1: [], 2: []})

    def rate(self, processes: int) -> float:
        return median([x.rate for x in self.runs[processes]])

    def ratio(self) -> float:
        return self.rate(2) / self.rate(1)


def _load(world: World, fns: list[Function], posters: list[Poster], objs: list[Obj], wave: str,
          in_flight: int) -> Load:
    """Event i of ``objs`` goes to process i mod len(fns). ``objs`` is shuffled: in list order,
    object i uses connection i mod 10, so round-robin would give each process half the connections."""
    failures = []

    def one(i: int) -> None:
        o = objs[i]
        _, status = posters[i % len(posters)].post(harness.resync_event(o.namespace, o.name, wave=wave))
        if not 200 <= status < 300:
            failures.append(i)

    before = world.counts()
    cpu_before = {**{f"function {n}": f.cpu() for n, f in enumerate(fns)}, **world.control_plane_cpu()}
    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(one, range(len(objs))))
    wall = time.perf_counter() - started
    cpu = {**{f"function {n}": f.cpu() for n, f in enumerate(fns)}, **world.control_plane_cpu()}
    return Load(len(fns), len(objs), wall, len(failures), world.counts() - before,
                {k: v - cpu_before.get(k, 0.0) for k, v in cpu.items()})


def measure(world: World, objs: list[Obj], *, threads: int, rounds: int) -> TwoProcesses:
    out = TwoProcesses(in_flight=2 * threads, threads=threads)
    objs = random.Random(14).sample(objs, len(objs))  # the same order in every run
    fns = [Function(world, threads=threads).start() for _ in range(2)]
    posters = [Poster(f.url) for f in fns]
    try:
        for f in fns:
            warm(f, objs[0])
        for r in range(rounds):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                load = _load(world, fns[:n], posters[:n], objs, f"bench-{n}proc-{r}", out.in_flight)
                out.runs[n].append(load)
    finally:
        for p in posters:
            p.close()
        for f in fns:
            f.stop()
    return out
