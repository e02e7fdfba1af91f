"""Run every benchmark in one go and print the table: ``scripts/bench`` (``--quick`` for a smoke run).

Order (each step leaves the world the next one needs):
  1. control plane, Quay simulator (250 ms per OAuth request), 10 users / connection Secrets
  2. figure 2 "add": one new object, counted in isolation
  3. figure 1: sequential add events interleaved with the direct-work baseline, then add events
     with concurrency, then the rest of the objects brought to Ready (setup for figure 4)
  4. figure 1 no-op updates interleaved with the bare function; figure 2 steady-state scenarios
  5. figure 3 cold starts (nothing else running)
  6. figures 4 and 5: the serial baseline on a sample, concurrency 1 with the cache, then the
     full resync, each on a fresh function process
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

from benchmarks import calls, coldstart, fullresync, latency
from benchmarks.stats import Table, median, ms, pct, progress, ratio, secs
from benchmarks.world import OAUTH_REQUEST_COST, WRITE_VERBS, Function, Obj, World
from tests import harness
from tests.controlplane import find_assets


@dataclass
class Settings:
    objects: int = 1000
    conns: int = 10
    namespaces: int = 4
    events: int = 200
    add_concurrency: int = 8
    setup_concurrency: int = 10
    noops: int = 200
    coldstart_runs: int = 7
    sample: int = 100
    # as deployed: knative/base/service.yaml THREADS=10, cronjob.yaml RESYNC_CONCURRENCY=8
    threads: int = 10
    resync_concurrency: int = 8
    broken: int = 5


QUICK = Settings(objects=100, events=20, noops=20, coldstart_runs=2, sample=20, broken=2)


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
    if s.conns < 4 or s.objects < max(1 + 2 * s.events, 20 + s.sample + s.broken, s.noops, 3 * s.conns):
        p.error("--objects too small for --events/--sample/--broken/--noops (or --conns < 4)")
    return s, args


def machine() -> str:
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), 0)
    return (f"{os.cpu_count()} cores, {mem / 1024 / 1024:.0f} GiB, {platform.machine()}, "
            f"Python {platform.python_version()}")


def worker_kib(memory: dict[str, int]) -> int:
    return max((v for k, v in memory.items() if k.startswith("worker")), default=0)


def main(argv: list[str] | None = None) -> int:
    s, args = parse(argv)
    started = time.monotonic()
    progress(f"settings: {asdict(s)}")
    with World.running(find_assets(), conns=s.conns, namespaces=s.namespaces) as world:
        progress(f"control plane up in {world.cp.startup_seconds:.1f} s; {s.conns} Quay users")
        objs = world.objects(0, s.objects)
        r = Results(s)
        events_and_calls(world, objs, s, r)
        progress(f"figure 3: cold starts, {s.coldstart_runs} rounds (+1 warm-up)")
        r.cold = coldstart.measure(world, objs[0], s.coldstart_runs)
        r.imports = coldstart.import_costs()
        resyncs(world, objs, s, r)
    table = r.table()
    table.note(f"Total run time {time.monotonic() - started:.0f} s.")
    print(table.render())
    if args.json:
        args.json.write_text(json.dumps(r.raw(), indent=1, default=_json_default))
    return 0


def events_and_calls(world: World, objs: list[Obj], s: Settings, r: Results) -> None:
    """Figures 1 and 2, and the setup of figure 4 (every object Ready)."""
    fn = Function(world, threads=s.threads).start()
    bare = Function(world, "benchmarks/bare_function.py", threads=s.threads).start()
    poster, bare_poster = latency.Poster(fn.url), latency.Poster(bare.url)
    try:
        # the first event loads the API client: not part of any figure here (see figure 3)
        poster.post(harness.apiserver_event("add", {"metadata": {"namespace": objs[0].namespace,
                                                                 "name": "warm-up"}}))
        world.create(objs[:1])
        r.add = calls.add_scenario(world, fn, poster, objs[0])
        seq = objs[1:1 + s.events]
        world.create(seq)
        progress(f"figure 1: {len(seq)} sequential add events, interleaved with the direct baseline")
        r.seq, r.direct = latency.adds_vs_direct(poster, seq, latency.Direct(world))
        conc = objs[1 + s.events:1 + 2 * s.events]
        world.create(conc)
        progress(f"figure 1: {len(conc)} add events, {s.add_concurrency} in flight")
        r.conc = latency.post_all(poster, "add", conc, s.add_concurrency)
        rest = objs[1 + 2 * s.events:]
        progress(f"setup: {len(rest)} more objects, created 100 at a time, add events "
                 f"{s.setup_concurrency} in flight")
        r.setup = latency.Samples()
        t0 = time.perf_counter()
        for i in range(0, len(rest), 100):
            chunk = rest[i:i + 100]
            world.create(chunk)
            part = latency.post_all(poster, "add", chunk, s.setup_concurrency)
            r.setup.seconds += part.seconds
            r.setup.failures += part.failures
        r.setup.wall = time.perf_counter() - t0
        ready, present = world.ready_report(objs)
        progress(f"{ready}/{len(objs)} Ready, {present} return Secrets")
        if ready != len(objs) or present != len(objs):
            raise RuntimeError(f"only {ready} Ready / {present} Secrets of {len(objs)}: {r.failures()[:5]}")
        r.setup_memory = fn.memory()
        progress(f"figure 1: {s.noops} no-op update events, interleaved with the bare function")
        r.noop, r.bare_noop = latency.noops_vs_bare(poster, bare_poster, objs[:s.noops])
        progress("figure 2: counted scenarios")
        by_conn = {c: [o for o in objs if o.conn == c] for c in world.conns}
        c1, c2, c3 = world.conns[1:4]
        r.steady = calls.steady_scenarios(world, fn, poster, [by_conn[c1][1], by_conn[c1][2],
                                                              by_conn[c2][1], by_conn[c3][1]])
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
    setup: latency.Samples | None = None
    setup_memory: dict[str, int] | None = None
    noop: latency.Samples | None = None
    bare_noop: list[float] | None = None
    cold: coldstart.ColdStarts | None = None
    imports: dict[str, float] | None = None
    serial: fullresync.ResyncRun | None = None
    one: fullresync.ResyncRun | None = None
    full: fullresync.ResyncRun | None = None
    after: tuple[int, int] = (0, 0)

    def failures(self) -> list[str]:
        return [f for x in (self.seq, self.conc, self.setup, self.noop) if x for f in x.failures]

    def table(self) -> Table:
        t = Table()
        self._fig1(t)
        self._fig2(t)
        self._fig3(t)
        self._fig45(t)
        self._notes(t)
        return t

    def _fig1(self, t: Table) -> None:
        assert self.seq and self.direct is not None and self.conc and self.setup and self.noop
        assert self.bare_noop is not None
        seq, direct, conc = self.seq.seconds, self.direct, self.conc.seconds
        t.add("1", f"add event -> Secret written, sequential, p50 (n={len(seq)})", ms(pct(seq, 50)),
              f"direct: {ms(pct(direct, 50))}", ratio(pct(seq, 50), pct(direct, 50)))
        t.add("1", "  same, p99", ms(pct(seq, 99)), f"direct: {ms(pct(direct, 99))}",
              ratio(pct(seq, 99), pct(direct, 99)))
        t.add("1", f"add events, {self.s.add_concurrency} in flight: p50 / p99, rate (n={len(conc)})",
              f"{ms(pct(conc, 50))} / {ms(pct(conc, 99))}, {len(conc) / self.conc.wall:.1f}/s",
              f"sequential: {ms(pct(seq, 50))} / {ms(pct(seq, 99))}, {len(seq) / sum(seq):.1f}/s")
        setup = self.setup
        t.add("1", f"  setup adds, {self.s.setup_concurrency} in flight, while "
              f"{1 + 2 * self.s.events}..{self.s.objects} objects exist",
              f"p50 {ms(pct(setup.seconds, 50))}, {len(setup.seconds) / setup.wall:.1f}/s")
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
            t.add("5", f"  worker after figures 1-2 ({self.s.objects} creations)",
                  f"{worker_kib(self.setup_memory) / 1024:.0f} MB")

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
                      ("setup", self.setup), ("noop", self.noop), ("bare_noop", self.bare_noop))},
            "fig2": [{"key": sc.key, "quay": dict(sc.counts.quay), "quay_cpu": sc.counts.quay_cpu,
                      "api": {f"{v} {res}": n for (v, res), n in sc.counts.api.items()},
                      "actions": sc.actions, "seconds": sc.seconds} for sc in scenarios],
            "fig3": {k: [asdict(x) for x in v] for k, v in (self.cold.runs.items() if self.cold else [])},
            "imports": self.imports,
            "fig4": {"serial": run(self.serial), "one": run(self.one), "full": run(self.full)},
            "setup_memory": self.setup_memory,
        }


def _json_default(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
