"""Run every benchmark in one go and print the table: ``scripts/bench`` (``--quick`` for a smoke run).

Order (each step leaves the world the next one needs):
  1. control plane, Quay simulator (250 ms per OAuth request), 10 users / connection Secrets;
     the N DockerTokens created at once, as a GitOps bootstrap does
  2. figure 6: today's creation algorithm on a sample of them (then made new again), then ours
     brings all N to Ready, add events 10 in flight
  3. figure 2 "add" (one more object, counted in isolation); figure 1: sequential add events
     interleaved with the direct-work baseline, then add events with concurrency (more objects)
  4. figure 1 no-op updates interleaved with the bare function; figure 2 steady-state scenarios;
     the objects of figures 1-2 deleted through the function (back to N)
  5. figure 7: one process against two sharing a full resync's events round-robin
  6. figure 3 cold starts (nothing else running)
  7. figures 4 and 5: the serial baseline on a sample, concurrency 1 with the cache, then the
     full resync, each on a fresh function process; object sizes
  8. figure 8: Knative's real ApiServerSource adapter: failing objects left alone, the resync
     command over them, serial delivery of no-op updates and of new objects
  9. the capacity model (docs/scaling.md) computed from the figures above
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import bulk, bulkresync, calls, capacity, coldstart, fullresync, latency, twoproc, watch
from benchmarks.stats import Table, median, ms, pct, progress, ratio, secs
from benchmarks.world import OAUTH_REQUEST_COST, WRITE_VERBS, Function, Obj, World
from function.cache import TTL_SECONDS
from tests.controlplane import find_assets


@dataclass
class Settings:
    objects: int = 1000
    conns: int = 10
    namespaces: int = 4
    events: int = 200
    add_concurrency: int = 8
    setup_concurrency: int = 10   # add events in flight in the bulk creation (figure 6)
    bulk_sample: int = 100        # creations the today's-algorithm baseline makes (scaled to N)
    noops: int = 200
    coldstart_runs: int = 7
    sample: int = 100
    # as deployed: knative/base/service.yaml THREADS=10, cronjob.yaml RESYNC_CONCURRENCY=8
    threads: int = 10
    resync_concurrency: int = 8
    broken: int = 5
    two_rounds: int = 2           # figure 7: rounds of (one process, two processes)
    window: int = 60              # figure 8: seconds failing objects are watched, left alone
    touches: int = 200            # figure 8: no-op updates through the adapter
    watch_creations: int = 30     # figure 8: new objects through the adapter


QUICK = Settings(objects=100, events=20, noops=20, coldstart_runs=2, sample=20, broken=2, bulk_sample=20,
                 window=10, touches=30, watch_creations=5)


def parse(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 100 objects, 20 events")
    p.add_argument("--json", type=Path, help="also write every raw figure to this file")
    for name, value in asdict(Settings()).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                       help=f"default {value} ({getattr(QUICK, name)} with --quick)")
    args = p.parse_args(argv)
    base = QUICK if args.quick else Settings()
    chosen = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in asdict(base).items()}
    s = Settings(**chosen)
    if s.conns < 5 or s.objects < max(20 + s.sample + s.broken, s.noops, 3 * s.conns, s.bulk_sample,
                                      s.touches):
        p.error("--objects too small for --sample/--broken/--noops/--bulk-sample/--touches (or --conns < 5)")
    return s, args


def machine() -> str:
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), 0)
    return (f"{os.cpu_count()} cores, {mem / 1024 / 1024:.0f} GiB, {platform.machine()}, "
            f"Python {platform.python_version()}")


def worker_kib(memory: dict[str, int]) -> int:
    return max((v for k, v in memory.items() if k.startswith("worker")), default=0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--bulk-resync" in argv:  # issue 22's figures only (benchmarks/bulkresync.py)
        return bulkresync.main([a for a in argv if a != "--bulk-resync"])
    s, args = parse(argv)
    started = time.monotonic()
    progress(f"settings: {asdict(s)}")
    with World.running(find_assets(), conns=s.conns, namespaces=s.namespaces) as world:
        progress(f"control plane up in {world.cp.startup_seconds:.1f} s; {s.conns} Quay users")
        objs = world.objects(0, s.objects)
        extras = world.objects(s.objects, s.objects + 1 + 2 * s.events)
        late = world.objects(len(objs) + len(extras), len(objs) + len(extras) + s.watch_creations)
        r = Results(s)
        events_and_calls(world, objs, extras, s, r)
        progress(f"figure 7: one process against two, {len(objs)} resync events, "
                 f"{2 * s.threads} in flight, {s.two_rounds} rounds")
        r.two = twoproc.measure(world, objs, threads=s.threads, rounds=s.two_rounds)
        progress(f"figure 3: cold starts, {s.coldstart_runs} rounds (+1 warm-up)")
        r.cold = coldstart.measure(world, objs[0], s.coldstart_runs)
        r.imports = coldstart.import_costs()
        resyncs(world, objs, s, r)
        r.sizes = world.sizes()
        r.fig8 = watch.measure(world, window=s.window, touches=objs[:s.touches], creations=late,
                               threads=s.threads)
    r.token_bytes = capacity.cache_bytes_per_token()
    table = r.table()
    table.note(f"Total run time {time.monotonic() - started:.0f} s.")
    print(table.render())
    if args.json:
        args.json.write_text(json.dumps(r.raw(), indent=1, default=_json_default))
    return 0


def events_and_calls(world: World, objs: list[Obj], extras: list[Obj], s: Settings, r: Results) -> None:
    """Figure 6 (which leaves every object Ready, the setup of figure 4), then figures 1 and 2 on
    more objects, deleted again at the end."""
    progress(f"setup: {len(objs)} DockerTokens created at once (no event yet)")
    t0 = time.perf_counter()
    world.create(objs)
    r.bootstrap = time.perf_counter() - t0
    sample = objs[:s.bulk_sample]
    progress(f"figure 6: today's algorithm, {len(sample)} add events of the {len(objs)}, "
             f"{s.setup_concurrency} in flight")
    r.bulk_base = bulk.baseline(world, sample, threads=s.threads, concurrency=s.setup_concurrency,
                                cluster=len(objs))
    fn = Function(world, threads=s.threads).start()
    bare = Function(world, "benchmarks/bare_function.py", threads=s.threads).start()
    poster, bare_poster = latency.Poster(fn.url), latency.Poster(bare.url)
    try:
        progress(f"figure 6: ours, all {len(objs)} add events, {s.setup_concurrency} in flight")
        r.bulk_ours = bulk.run(world, fn, objs, concurrency=s.setup_concurrency, label="ours",
                               cluster=len(objs))
        ready, present = world.ready_report(objs)
        progress(f"{ready}/{len(objs)} Ready, {present} return Secrets")
        if ready != len(objs) or present != len(objs):
            raise RuntimeError(f"only {ready} Ready / {present} Secrets of {len(objs)}: {r.failures()[:5]}")
        world.create(extras[:1])
        r.add = calls.add_scenario(world, fn, poster, extras[0])
        seq = extras[1:1 + s.events]
        world.create(seq)
        progress(f"figure 1: {len(seq)} sequential add events, interleaved with the direct baseline")
        r.seq, r.direct = latency.adds_vs_direct(poster, seq, latency.Direct(world))
        conc = extras[1 + s.events:]
        world.create(conc)
        progress(f"figure 1: {len(conc)} add events, {s.add_concurrency} in flight")
        r.conc = latency.post_all(poster, "add", conc, s.add_concurrency)
        r.setup_memory = fn.memory()
        progress(f"figure 1: {s.noops} no-op update events, interleaved with the bare function")
        r.noop, r.bare_noop = latency.noops_vs_bare(poster, bare_poster, objs[:s.noops])
        progress("figure 2: counted scenarios")
        by_conn = {c: [o for o in objs if o.conn == c] for c in world.conns}
        c1, c2, c3, c4 = world.conns[1:5]
        r.steady = calls.steady_scenarios(world, fn, poster, [by_conn[c1][1], by_conn[c1][2],
                                                              by_conn[c2][1], by_conn[c3][1], by_conn[c4][1]])
        progress(f"the {len(extras)} objects of figures 1-2 deleted through the function")
        r.delete_seconds = bulk.delete_through(world, fn, extras, s.setup_concurrency)
    finally:
        poster.close()
        bare_poster.close()
        fn.stop()
        bare.stop()


def resyncs(world: World, objs: list[Obj], s: Settings, r: Results) -> None:
    """Figures 4 and 5."""
    sample = objs[20:20 + s.sample]
    progress(f"figure 4: serial baseline (no cache, concurrency 1) on {len(sample)} objects")
    r.serial = fullresync.run_on_fresh_function(
        world, "benchmarks/nocache_function.py", s.threads, objs[0], concurrency=1, sample=sample,
        label="serial, no cache")
    progress(f"figure 4: concurrency 1 with the cache, all {len(objs)} objects")
    r.one = fullresync.run_on_fresh_function(
        world, "function/main.py", s.threads, objs[0], concurrency=1, label="concurrency 1, cache")
    broken = objs[len(objs) - s.broken:] if s.broken else []
    for o in broken:
        world.delete_secret(o)
    progress(f"figure 4: full resync of {len(objs)} objects ({len(broken)} return Secrets deleted), "
             f"concurrency {s.resync_concurrency}, THREADS={s.threads}")
    r.full = fullresync.run_on_fresh_function(
        world, "function/main.py", s.threads, objs[0], concurrency=s.resync_concurrency, label="full")
    r.after = world.ready_report(objs)


@dataclass
class Results:
    s: Settings
    add: calls.Scenario | None = None
    steady: list[calls.Scenario] | None = None
    seq: latency.Samples | None = None
    direct: list[float] | None = None
    conc: latency.Samples | None = None
    bootstrap: float = 0.0
    bulk_base: bulk.BulkRun | None = None
    bulk_ours: bulk.BulkRun | None = None
    delete_seconds: float = 0.0
    setup_memory: dict[str, int] | None = None
    noop: latency.Samples | None = None
    bare_noop: list[float] | None = None
    cold: coldstart.ColdStarts | None = None
    imports: dict[str, float] | None = None
    serial: fullresync.ResyncRun | None = None
    one: fullresync.ResyncRun | None = None
    full: fullresync.ResyncRun | None = None
    after: tuple[int, int] = (0, 0)
    two: twoproc.TwoProcesses | None = None
    sizes: dict[str, float] | None = None
    fig8: watch.WatchResults | None = None
    token_bytes: float = 0.0

    def failures(self) -> list[str]:
        bulks = [b.samples for b in (self.bulk_base, self.bulk_ours) if b]
        return [f for x in (self.seq, self.conc, self.noop, *bulks) if x for f in x.failures]

    def table(self) -> Table:
        t = Table()
        self._fig1(t)
        self._fig2(t)
        self._fig3(t)
        self._fig45(t)
        self._fig6(t)
        self._fig7(t)
        self._fig8(t)
        self._notes(t)
        self._capacity(t)
        return t

    def _fig1(self, t: Table) -> None:
        assert self.seq and self.direct is not None and self.conc and self.noop
        assert self.bare_noop is not None
        seq, direct, conc = self.seq.seconds, self.direct, self.conc.seconds
        t.add("1", f"add event -> Secret written, sequential, p50 (n={len(seq)})", ms(pct(seq, 50)),
              f"direct: {ms(pct(direct, 50))}", ratio(pct(seq, 50), pct(direct, 50)))
        t.add("1", "  same, p99", ms(pct(seq, 99)), f"direct: {ms(pct(direct, 99))}",
              ratio(pct(seq, 99), pct(direct, 99)))
        t.add("1", f"add events, {self.s.add_concurrency} in flight: p50 / p99, rate (n={len(conc)})",
              f"{ms(pct(conc, 50))} / {ms(pct(conc, 99))}, {len(conc) / self.conc.wall:.1f}/s",
              f"sequential: {ms(pct(seq, 50))} / {ms(pct(seq, 99))}, {len(seq) / sum(seq):.1f}/s")
        noop, bare = self.noop.seconds, self.bare_noop
        t.add("1", f"no-op update event, p50 (n={len(noop)})", ms(pct(noop, 50)),
              f"bare function: {ms(pct(bare, 50))}", ratio(pct(noop, 50), pct(bare, 50)))
        t.add("1", "  same, p99", ms(pct(noop, 99)), f"bare function: {ms(pct(bare, 99))}",
              ratio(pct(noop, 99), pct(bare, 99)))

    def _fig2(self, t: Table) -> None:
        assert self.add and self.steady is not None
        for sc in [self.add, *self.steady]:
            c = sc.counts
            t.add("2", sc.title, f"{c.quay_calls} Quay, {c.writes} writes, {c.reads} reads",
                  "", "", sc.goal, sc.met)

    def _fig3(self, t: Table) -> None:
        assert self.cold
        runs = self.cold.runs
        served = {k: median([x.served for x in v]) for k, v in runs.items()}
        listen = {k: median([x.listen for x in v]) for k, v in runs.items()}
        n = len(runs["ours"])
        t.add("3", f"cold start: Popen -> first add event served (median of {n})", secs(served["ours"]),
              f"bare function: {secs(served['bare'])}", ratio(served["ours"], served["bare"]),
              "<= 1.5x", served["ours"] <= 1.5 * served["bare"])
        t.add("3", "  of which: until the port accepts", secs(listen["ours"]),
              f"bare function: {secs(listen['bare'])}", ratio(listen["ours"], listen["bare"]))
        t.add("3", "  of which: first event (API client import + reconcile)",
              secs(served["ours"] - listen["ours"]),
              f"bare function: {secs(served['bare'] - listen['bare'])}")
        t.add("3", "  experiment: same reads without the kubernetes package", secs(served["thin"]),
              f"bare function: {secs(served['bare'])}", ratio(served["thin"], served["bare"]))

    def _fig45(self, t: Table) -> None:
        assert self.serial and self.one and self.full
        full, serial, one = self.full, self.serial, self.one
        n, k = full.objects, self.s.conns
        scale = n / max(serial.objects, 1)
        projected = serial.per_object * n
        t.add("4", f"full resync, {n} objects, {k} conn. Secrets: command start -> exit",
              secs(full.wall), f"serial, no cache: {secs(projected)}*",
              f"{projected / full.wall:.1f}x faster",
              ">= 10x, < 10 s", projected >= 10 * full.wall and full.wall < 10)
        q = full.counts.quay
        others = full.counts.quay_calls - q["list"] - q["get"]
        t.add("4", "  Quay calls", f"{full.counts.quay_calls} ({full.counts.quay_detail()})",
              f"{serial.counts.quay_calls * scale:.0f}*", "",
              f"<= {k} lists + {self.s.broken} GETs",
              q["list"] <= k and q["get"] <= self.s.broken and others == 0)
        t.add("4", "  simulated Quay CPU", secs(full.counts.quay_cpu),
              f"{secs(serial.counts.quay_cpu * scale)}*",
              ratio(full.counts.quay_cpu, serial.counts.quay_cpu * scale))
        t.add("4", "  API writes (dockertokens, secrets)",
              f"{full.counts.writes} ({full.counts.api_detail(WRITE_VERBS)})", f"{serial.counts.writes}")
        ours = sum(v for key, v in full.cpu.items() if key != "whole machine")
        t.add("4", "  CPU used meanwhile: our processes / whole machine", f"{secs(ours)} / "
              f"{secs(full.cpu.get('whole machine', math.nan))}", f"2 cores x wall = {secs(2 * full.wall)}")
        t.add("4", "  of which the function (its floor on a core of its own)", secs(full.cpu["function"]))
        t.add("4", f"concurrency 1 with the cache, {one.objects} objects", secs(one.wall),
              f"serial, no cache: {secs(projected)}*", f"{projected / one.wall:.1f}x faster")
        t.add("4", "  Quay calls", f"{one.counts.quay_calls} ({one.counts.quay_detail()})")
        t.add("5", "peak RSS of the gunicorn worker during the full resync (VmHWM)",
              f"{worker_kib(full.memory) / 1024:.0f} MB",
              f"master: {full.memory.get('master', 0) / 1024:.0f} MB",
              "", "< 120 MB", worker_kib(full.memory) < 120 * 1024)
        t.add("5", "  serial baseline's worker", "", f"{worker_kib(serial.memory) / 1024:.0f} MB")
        if self.setup_memory:
            n = self.s.objects + 1 + 2 * self.s.events
            t.add("5", f"  worker after figures 6 and 1 ({n} creations)",
                  f"{worker_kib(self.setup_memory) / 1024:.0f} MB")

    def _fig6(self, t: Table) -> None:
        assert self.bulk_ours and self.bulk_base
        ours, base = self.bulk_ours, self.bulk_base
        n, k = ours.creations, self.s.conns
        scale = n / max(base.creations, 1)
        base_wall = base.wall * scale
        t.add("6", f"bulk creation: {n} new DockerTokens, {k} conn. Secrets, {ours.concurrency} in flight",
              f"{secs(ours.wall)}, {n / ours.wall:.1f}/s",
              f"today's algorithm: {secs(base_wall)}*, {base.creations / base.wall:.1f}/s",
              f"{base_wall / ours.wall:.1f}x faster")
        q = ours.counts.quay
        windows = math.ceil(ours.wall / TTL_SECONDS)
        # the registry self-check (issue 22): GET /v2/ learnt once per connection (cached an
        # hour), /v2/auth once per new token
        others = ours.counts.quay_calls - q["create"] - q["list"] - q["v2"] - q["v2_auth"]
        t.add("6", "  Quay calls: total, per creation",
              f"{ours.counts.quay_calls} ({ours.counts.quay_detail()}), "
              f"{ours.per(ours.counts.quay_calls):.2f}",
              f"{base.counts.quay_calls * scale:.0f}*, {base.per(base.counts.quay_calls):.2f}", "",
              f"N + C (+C per {TTL_SECONDS:.0f} s), + C /v2/ + N /v2/auth",
              q["create"] == n and q["list"] <= k * windows and q["v2"] <= k and q["v2_auth"] <= n
              and others == 0)
        t.add("6", "  API list requests / DockerTokens read, per creation",
              f"{ours.per(ours.lists):.2f} / {ours.per(ours.claims_read):.2f}",
              f"{base.per(base.lists):.2f} / {base.per(base.claims_read):.0f}", "",
              "1 list / same-title only", ours.per(ours.lists) <= 1.0 and ours.per(ours.claims_read) <= 1.0)
        t.add("6", "  bytes of one claim list (made again after the run)", kib(ours.list_bytes),
              kib(base.list_bytes), ratio(ours.list_bytes, base.list_bytes))
        t.add("6", "  API requests per creation: reads / writes",
              f"{ours.per(ours.counts.reads):.2f} / {ours.per(ours.counts.writes):.2f}",
              f"{base.per(base.counts.reads):.2f} / {base.per(base.counts.writes):.2f}")
        t.add("6", "  CPU per creation: function / kube-apiserver / etcd",
              " / ".join(ms(ours.per(ours.cpu.get(x, 0.0))) for x in ("function", "kube-apiserver", "etcd")),
              " / ".join(ms(base.per(base.cpu.get(x, 0.0))) for x in ("function", "kube-apiserver", "etcd")))
        t.add("6", "  add event round trip, p50 / p99",
              f"{ms(pct(ours.samples.seconds, 50))} / {ms(pct(ours.samples.seconds, 99))}",
              f"{ms(pct(base.samples.seconds, 50))} / {ms(pct(base.samples.seconds, 99))}")

    def _fig7(self, t: Table) -> None:
        assert self.two
        two = self.two

        def per_event(n: int, who: str) -> float:
            runs = two.runs[n]
            return median([sum(v for k, v in x.cpu.items() if k.startswith(who)) / x.events for x in runs])

        t.add("7", f"two processes sharing a resync's events round-robin, {two.in_flight} in flight",
              f"2 processes: {two.rate(2):.0f} events/s", f"1 process: {two.rate(1):.0f} events/s",
              f"{two.ratio():.2f}x")
        t.add("7", "  CPU per event: functions / kube-apiserver / etcd",
              " / ".join(ms(per_event(2, w)) for w in ("function", "kube-apiserver", "etcd")),
              " / ".join(ms(per_event(1, w)) for w in ("function", "kube-apiserver", "etcd")))
        t.add("7", "  Quay lists per run (each process lists each connection once)",
              f"{median([x.counts.quay['list'] for x in two.runs[2]]):.0f}",
              f"{median([x.counts.quay['list'] for x in two.runs[1]]):.0f}")

    def _fig8(self, t: Table) -> None:
        assert self.fig8
        w, modes = self.fig8, self.fig8.modes
        own = sum(m.window.deliveries for m in modes)
        t.add("8", f"{len(modes)} failing objects left alone, real adapter, {w.window:.0f} s: events from "
              "own writes", f"{own} = {own * 3600 / w.window / len(modes):.0f}/h per object", "", "", "0",
              own == 0)
        t.add("8", "  Quay calls (all, simulator) / API writes (all) in the window",
              f"{w.quay_calls_in_window} / {w.writes_in_window}", "", "", "0 / 0",
              w.quay_calls_in_window == 0 and w.writes_in_window == 0)
        t.add("8", "  events until settled (add + echoes), per object",
              ", ".join(f"{m.mode.key} {m.settle.deliveries}" for m in modes))
        t.add("8", "  resync while backing off: deliveries / Quay calls / writes",
              ", ".join(f"{m.mode.key} {_pob(m.not_due)}" for m in modes),
              f"resync exit {w.not_due_returncode}")
        t.add("8", "  resync once the retry is due: deliveries / Quay calls / writes",
              ", ".join(f"{m.mode.key} {_pob(m.due)}" for m in modes), f"resync exit {w.due_returncode}")
        t.add("8", "    then: attempts, next retry in",
              ", ".join(f"{m.mode.key} {m.attempts}, {m.next_retry_minutes:.0f} min" for m in modes))
        t.add("8", "  right after: deliveries / Quay calls / writes",
              ", ".join(f"{m.mode.key} {_pob(m.again)}" for m in modes))
        sched = w.schedule
        h1, d1, st = sched["hour 1"][0], sched["day 1"][0], sched["steady, per hour"][0]
        t.add("8", "  model: retries per failing object, hour 1 / day 1 / steady per hour",
              f"{h1:.1f} / {d1:.1f} / {st:.2f}", "retry at every resync: 6 / 144 / 6",
              f"{6 / st:.0f}x fewer")
        oauth = next(m for m in modes if m.mode.key == "401")
        per = oauth.due.quay_calls
        t.add("8", "  model: Quay calls per object refused by Quay (401/403), hour 1 / day 1 / steady /h",
              f"{h1 * per:.1f} / {d1 * per:.1f} / {st * per:.2f}", f"{6 * per} / {144 * per} / {6 * per}",
              "", "only at resyncs, bounded by backoff", w.quay_calls_in_window == 0)
        t.add("8", "  model: Quay CPU for 1,000 such objects, steady, per hour",
              f"{1000 * st * per * capacity.OAUTH_CPU:.0f} s", f"{1000 * 6 * per * capacity.OAUTH_CPU:.0f} s")
        echoes = st * median([m.due.writes for m in modes])
        t.add("8", "  model: events per failing object per hour, steady: resync + echo of retries",
              "; ".join(f"{m.mode.key} {6 * m.not_due.deliveries} + {st * m.due.writes:.2f}" for m in modes),
              f"echoes answered with 0 writes, 0 Quay: {echoes:.2f}/h")
        sr = w.serial
        t.add("8", f"one watch, serial delivery: no-op update events (n={sr.noop_events})",
              f"{sr.noop_rate:.0f}/s", f"1 / function p50 ({sr.noop_p50_ms:.0f} ms) = "
              f"{1000 / max(sr.noop_p50_ms, 0.1):.0f}/s")
        t.add("8", f"  new objects through one watch (n={sr.creations})",
              f"{sr.creation_rate:.2f}/s, {sr.creation_events / max(sr.creations, 1):.1f} events each",
              f"add p50 {sr.add_p50_ms:.0f} ms")
        t.add("8", "  adapter peak RSS (VmHWM)", f"{w.adapter_rss_kib / 1024:.0f} MB")

    def command_cpu(self) -> float:
        """The resync command's CPU per event, without its start-up: the full run's less the serial
        baseline's (same command, fewer objects), per object of difference."""
        assert self.full and self.serial
        full, serial = self.full, self.serial
        extra = full.cpu.get("resync command", 0.0) - serial.cpu.get("resync command", 0.0)
        return max(extra, 0.0) / max(full.objects - serial.objects, 1)

    def capacity_inputs(self) -> capacity.Inputs:
        assert self.full and self.one and self.fig8 and self.sizes
        n = self.full.objects
        return capacity.Inputs(
            fn_cpu=self.full.cpu["function"] / n, api_cpu=self.full.cpu.get("kube-apiserver", 0.0) / n,
            etcd_cpu=self.full.cpu.get("etcd", 0.0) / n, cmd_cpu=self.command_cpu(),
            latency=self.one.reported / self.one.objects,
            noop_rate=self.fig8.serial.noop_rate, creation_rate=self.fig8.serial.creation_rate,
            obj_bytes=self.sizes["dockertoken"], pull_bytes=self.sizes["pull secret"],
            conn_bytes=self.sizes["connection secret"], rss_kib=worker_kib(self.full.memory),
            token_bytes=self.token_bytes)

    def _capacity(self, t: Table) -> None:
        inp = self.capacity_inputs()
        t.note("")
        t.note("Capacity model of the per-event resync (before issue 22; the bulk resync's is "
               "scripts/bench --bulk-resync's, docs/scaling.md), computed from this run's figures: "
               f"function {ms(inp.fn_cpu)}, kube-apiserver {ms(inp.api_cpu)}, etcd {ms(inp.etcd_cpu)}, "
               f"resync command {ms(inp.cmd_cpu)} of CPU per resync event; {ms(inp.latency)} per event at "
               "concurrency 1; one watch "
               f"{inp.noop_rate:.0f} no-op events/s, {inp.creation_rate:.2f} creations/s; a DockerToken "
               f"{kib(inp.obj_bytes)}, a pull Secret {kib(inp.pull_bytes)}, a connection Secret "
               f"{kib(inp.conn_bytes)}; worker {inp.rss_kib / 1024:.0f} MB + {inp.token_bytes:.0f} B per "
               "cached token.")
        for line in capacity.table(inp):
            t.note("  " + line)

    def _notes(self, t: Table) -> None:
        assert self.serial and self.full and self.imports is not None
        full, serial = self.full, self.serial
        t.note(f"Machine: {machine()}. Quay simulator: {OAUTH_REQUEST_COST * 1000:.0f} ms per OAuth "
               "request (slept, counted as simulated Quay CPU). Function: functions-framework, one "
               f"gunicorn worker, THREADS={self.s.threads}.")
        t.note("Figure 1 baselines: 'direct' = one Quay create + one Secret POST made by the same "
               "client code with no framework, reads, status or adoption check (the floor of any "
               "add); 'bare function' = a functions-framework function that does nothing.")
        t.note(f"* serial, no cache = function with the token-list cache off, resync at concurrency 1: "
               f"measured on {serial.objects} objects ({secs(serial.reported)}, "
               f"{serial.counts.quay_calls} Quay calls) and scaled "
               f"x{full.objects / max(serial.objects, 1):g}; "
               "its process start and listing are left out, which favours the baseline.")
        t.note(f"Full resync: the command's own figure {secs(full.reported)} (listing + delivery), "
               f"{full.summary}; after it {self.after[0]} Ready, {self.after[1]} return Secrets. CPU seconds "
               "meanwhile: " + ", ".join(f"{k} {v:.1f}" for k, v in full.cpu.items()) + ".")
        t.note("Import costs (fresh interpreter, median of 3): "
               + ", ".join(f"{k} {secs(v)}" for k, v in self.imports.items()) + ".")
        t.note("Figure 2, what remains and why:")
        assert self.add and self.steady is not None
        for sc in [self.add, *self.steady]:
            quay, api = calls.summary(sc)
            t.note(f"  - {sc.title}: {quay}; {api}; actions {sc.actions or '[]'}; "
                   f"HTTP {sc.status} in {ms(sc.seconds)}.")
            t.note(f"      {calls.WHY[sc.key]}")
        if self.failures():
            t.note(f"Non-2xx answers: {len(self.failures())}: {self.failures()[:5]}")
        if latency.Poster.total_retries:
            t.note("Deliveries sent again after a broken keep-alive connection: "
                   f"{latency.Poster.total_retries}.")

    def raw(self) -> dict[str, Any]:
        def run(x: fullresync.ResyncRun | None) -> dict[str, Any]:
            if x is None:
                return {}
            return {"objects": x.objects, "wall": x.wall, "reported": x.reported, "quay": dict(x.counts.quay),
                    "quay_cpu": x.counts.quay_cpu, "writes": x.counts.writes, "cpu": x.cpu,
                    "memory": x.memory}

        scenarios = [sc for sc in [self.add, *(self.steady or [])] if sc]
        return {
            "settings": asdict(self.s), "machine": machine(),
            "fig1": {name: (x.seconds if isinstance(x, latency.Samples) else x) for name, x in
                     (("seq", self.seq), ("direct", self.direct), ("conc", self.conc),
                      ("noop", self.noop), ("bare_noop", self.bare_noop))},
            "fig2": [{"key": sc.key, "quay": dict(sc.counts.quay), "quay_cpu": sc.counts.quay_cpu,
                      "api": {f"{v} {res}": n for (v, res), n in sc.counts.api.items()},
                      "actions": sc.actions, "seconds": sc.seconds} for sc in scenarios],
            "fig3": {k: [asdict(x) for x in v] for k, v in (self.cold.runs.items() if self.cold else [])},
            "imports": self.imports,
            "fig4": {"serial": run(self.serial), "one": run(self.one), "full": run(self.full)},
            "setup_memory": self.setup_memory,
            "fig6": {x.label: _bulk_raw(x) for x in (self.bulk_base, self.bulk_ours) if x},
            "bootstrap_seconds": self.bootstrap, "delete_seconds": self.delete_seconds,
            "fig7": {str(n): [{"wall": x.wall, "events": x.events, "rate": x.rate, "cpu": x.cpu,
                               "quay": dict(x.counts.quay), "failures": x.failures} for x in runs]
                     for n, runs in (self.two.runs.items() if self.two else [])},
            "fig8": asdict(self.fig8) if self.fig8 else None,
            "sizes": self.sizes, "token_bytes": self.token_bytes,
            "capacity_inputs": asdict(self.capacity_inputs()) if self.fig8 and self.sizes else None,
        }


def _bulk_raw(x: bulk.BulkRun) -> dict[str, Any]:
    return {"creations": x.creations, "cluster": x.cluster, "wall": x.wall, "seconds": x.samples.seconds,
            "failures": x.samples.failures, "quay": dict(x.counts.quay), "lists": x.lists,
            "list_bytes": x.list_bytes, "claims_read": x.claims_read, "created": x.created,
            "reads": x.counts.reads, "writes": x.counts.writes, "cpu": x.cpu, "memory": x.memory}


def _pob(x: watch.PerObject) -> str:
    http = "" if all(200 <= h < 300 for h in x.http) else f" (HTTP {', '.join(map(str, x.http))})"
    return f"{x.deliveries}/{x.quay_calls}/{x.writes}{http}"


def kib(n: float) -> str:
    if math.isnan(n):
        return "n/a"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 2**20:.1f} MiB"


def _json_default(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
