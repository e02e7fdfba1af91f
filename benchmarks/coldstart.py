"""Figure 3: cold start, process start to the first event served, ours against a bare function.

Both are started by the same functions-framework CLI with the same arguments and receive the
same add event (for a DockerToken that is already Ready, so the first event exercises the whole
reconcile path -- API client set-up, three reads, decide -- but makes no Quay call: the 500 ms
of simulated Quay work a brand-new object costs is figure 1, not start-up). Timed from Popen:
``listen`` when the port first accepts a TCP connection, ``served`` when the 2xx arrives.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.latency import event
from benchmarks.world import ROOT, Obj, World, ff_argv
from tests.controlplane import free_port

# "thin" is an experiment (benchmarks/thin_function.py): ours without the kubernetes package.
SOURCES = {"ours": "function/main.py", "bare": "benchmarks/bare_function.py",
           "thin": "benchmarks/thin_function.py"}


@dataclass
class Run:
    listen: float
    served: float


@dataclass
class ColdStarts:
    runs: dict[str, list[Run]] = field(default_factory=lambda: {k: [] for k in SOURCES})


def once(source: str, kubeconfig: Path, ev: tuple[dict[str, str], bytes], timeout: float = 60) -> Run:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")},
           "KUBECONFIG": str(kubeconfig), "LOG_LEVEL": "INFO", "THREADS": "16"}
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        proc = subprocess.Popen(ff_argv(source, port), env=env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = started + timeout
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.perf_counter() > deadline:
                        log.seek(0)
                        raise RuntimeError(f"{source} did not start: {log.read()[-2000:]!r}") from None
                    time.sleep(0.002)
            listen = time.perf_counter() - started
            headers, body = ev
            resp = httpx.post(f"http://127.0.0.1:{port}", headers=headers, content=body, timeout=timeout)
            served = time.perf_counter() - started
            if not resp.is_success:
                log.seek(0)
                raise RuntimeError(f"{source}: first event answered {resp.status_code}: "
                                   f"{resp.text[:300]} {log.read()[-2000:]!r}")
            return Run(listen, served)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def measure(world: World, o: Obj, runs: int) -> ColdStarts:
    """One discarded warm-up of each (page cache), then ``runs`` rounds in rotating order."""
    kubeconfig = world.cp.kubeconfigs["dockertoken-reconciler"]
    out = ColdStarts()
    kinds = list(SOURCES)
    for n in range(runs + 1):
        order = kinds[n % len(kinds):] + kinds[:n % len(kinds)]
        for kind in order:
            run = once(SOURCES[kind], kubeconfig, event("add", o))
            if n:
                out.runs[kind].append(run)
    return out


def import_costs() -> dict[str, float]:
    """Seconds to import what each process needs, in a fresh interpreter (median of 3)."""
    from benchmarks.stats import median

    py = sys.executable
    probes = {
        "python": "pass",
        "functions_framework": "import functions_framework",
        "+ httpx": "import functions_framework, httpx",
        "+ function.main": "import functions_framework, function.main",
        "+ kubernetes (first event)": "import functions_framework, function.main, kubernetes.client",
    }
    out = {}
    for label, code in probes.items():
        times = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run([py, "-c", code], cwd=ROOT, check=True)
            times.append(time.perf_counter() - started)
        out[label] = median(times)
    return out
