"""Figures 4 and 5: a full resync at scale against a serial baseline, and the function's peak RSS.

Every run gets a fresh function process (so the token-list cache starts cold and VmHWM starts
low), warmed by one no-op update event (so the run does not pay the API client's one-time
import; figure 3 measures that). The resync command runs as its own process with the
ApiServerSource's kubeconfig (the bulk command reads nothing from the API server; the per-event
baseline lists the objects, as the resync identity could before issue 22).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.latency import Poster, event
from benchmarks.world import ROOT, Counts, Function, Obj, World, vm_hwm


@dataclass
class ResyncRun:
    label: str
    objects: int
    concurrency: int
    threads: int
    wall: float  # Popen -> exit of the resync command
    reported: float  # the command's own "seconds" (listing + delivery)
    summary: dict[str, object]
    counts: Counts
    cpu: dict[str, float] = field(default_factory=dict)
    memory: dict[str, int] = field(default_factory=dict)
    returncode: int = 0

    @property
    def per_object(self) -> float:
        return self.reported / max(self.objects, 1)


def warm(fn: Function, o: Obj) -> None:
    poster = Poster(fn.url)
    try:
        _, status = poster.post(event("update", o))
        if status >= 300:
            raise RuntimeError(f"warm-up event answered {status}:\n{fn.logs()[-3000:]}")
    finally:
        poster.close()


def resync(world: World, fn: Function, *, concurrency: int, sample: list[Obj] | None = None,
           label: str, threads: int, allow_failures: bool = False, per_event: bool = False) -> ResyncRun:
    """The resync command (the bulk one), or with ``per_event`` (or a ``sample``) the per-event
    resync it replaced (``benchmarks/resync_sample.py``)."""
    # the per-event resync listed the objects itself (the bulk one reads nothing): an identity
    # that may list them, as the resync's could before issue 22
    env = {**os.environ, "KUBECONFIG": str(world.cp.kubeconfigs["dockertoken-source"]),
           "LOG_LEVEL": "WARNING"}
    if sample is None and not per_event:
        argv = [sys.executable, "-m", "function.resync"]
    else:
        argv = [sys.executable, "-m", "benchmarks.resync_sample"]
        if sample is not None:
            argv += ["--objects", ",".join(f"{o.namespace}/{o.name}" for o in sample)]
    argv += ["--sink", fn.url, "--concurrency", str(concurrency), "--timeout", "120"]
    before = world.counts()
    busy_before = _machine_busy()
    cpu_before = {"function": fn.cpu(), **world.control_plane_cpu(), "harness": self_cpu()}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=err, text=True)
        peak, status, usage = _wait_with_peak_rss(proc.pid, argv[2])
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu = {"function": fn.cpu(), **world.control_plane_cpu(), "harness": self_cpu()}
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu.items()}
        cpu["resync command"] = usage.ru_utime + usage.ru_stime
        busy_after = _machine_busy()
        cpu["whole machine"] = busy_after - busy_before
        after = world.counts()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines else {}
    if not allow_failures and (proc.returncode != 0 or summary.get("failed") or summary.get("undelivered")):
        raise RuntimeError(f"{label}: resync exited {proc.returncode}: {summary}\n{stderr[-3000:]}")
    n = int(summary.get("seen", summary.get("listed", 0)))  # bulk / per-event
    run = ResyncRun(label, n, concurrency, threads, wall, float(summary.get("seconds", wall)),
                    summary, after - before, cpu=cpu, returncode=proc.returncode)
    run.memory["resync command"] = peak
    return run


def _wait_with_peak_rss(pid: int, module: str) -> tuple[int, int, resource.struct_rusage]:
    """Wait for ``pid``; its peak RSS (VmHWM, KiB) polled every 10 ms once it runs ``module``
    (ru_maxrss would count the benchmark's own pages, copied before the exec)."""
    peak = 0
    cmdline = Path(f"/proc/{pid}/cmdline")
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return peak, status, usage
        try:
            if module.encode() in cmdline.read_bytes():
                peak = max(peak, vm_hwm(pid))
        except OSError:
            pass
        time.sleep(0.01)


def _machine_busy() -> float:
    """CPU seconds all processes on the machine have used (busy time from /proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    """CPU of this process: the Quay simulator's threads and the benchmark's own."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_on_fresh_function(world: World, source: str, threads: int, warm_with: Obj,
                          **kwargs: object) -> ResyncRun:
    fn = Function(world, source, threads=threads).start()
    try:
        warm(fn, warm_with)
        run = resync(world, fn, threads=threads, **kwargs)  # type: ignore[arg-type]
        run.memory.update(fn.memory())
        return run
    finally:
        fn.stop()
