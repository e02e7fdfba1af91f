"""The benchmark's world: control plane, Quay simulator, connection Secrets, DockerTokens, functions.

Layout: ``conns`` Quay users, each with an OAuth token and a connection Secret; the Secrets are
spread over ``namespaces`` namespaces, and DockerToken ``i`` uses connection ``i % conns`` in that
connection's namespace, with its own return Secret ``<name>-pull`` beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client

from function.pullsecret import MANAGED_BY, MANAGED_BY_LABEL
from tests import harness
from tests.controlplane import ControlPlane
from tests.quaysim import QuaySimulator

ROOT = Path(__file__).resolve().parents[1]
G, V, P = "quay.herve4m.github.io", "v1alpha1", "dockertokens"
# The real Quay spends ~255 ms of CPU checking an OAuth token (bcrypt) on every request.
OAUTH_REQUEST_COST = 0.25
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")
READ_VERBS = ("GET", "LIST", "WATCH")


@dataclass(frozen=True)
class Conn:
    """One Quay user and the connection Secret holding its OAuth token."""

    index: int
    namespace: str
    secret: str
    user: str
    token: str


@dataclass(frozen=True)
class Obj:
    """One DockerToken of the benchmark."""

    index: int
    namespace: str
    name: str
    conn: Conn

    @property
    def ret_secret(self) -> str:
        return f"{self.name}-pull"

    @property
    def title(self) -> str:
        return f"bench-{self.index:04d}"

    def body(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{G}/{V}",
            "kind": "DockerToken",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {"connSecretRef": {"name": self.conn.secret}, "name": self.title,
                     "retSecretRef": {"name": self.ret_secret}},
        }


@dataclass(frozen=True)
class Counts:
    """A snapshot of every counter a figure is computed from."""

    quay: Counter[str]
    quay_cpu: float
    api: Counter[tuple[str, str]]  # (verb, resource[/subresource]) -> requests

    def __sub__(self, other: Counts) -> Counts:
        return Counts(self.quay - other.quay, self.quay_cpu - other.quay_cpu, self.api - other.api)

    @property
    def quay_calls(self) -> int:
        return sum(self.quay.values())

    @property
    def writes(self) -> int:
        return sum(n for (verb, _), n in self.api.items() if verb in WRITE_VERBS)

    @property
    def reads(self) -> int:
        return sum(n for (verb, _), n in self.api.items() if verb in READ_VERBS)

    def api_detail(self, verbs: Iterable[str]) -> str:
        wanted = set(verbs)
        parts = [f"{n} {verb} {res}" for (verb, res), n in sorted(self.api.items()) if verb in wanted and n]
        return ", ".join(parts) or "none"

    def quay_detail(self) -> str:
        return ", ".join(f"{n} {ep}" for ep, n in sorted(self.quay.items()) if n) or "none"


class Function:
    """A functions-framework process (the function, the bare one, or the no-cache variant)."""

    def __init__(self, world: World, source: str = "function/main.py", *, threads: int = 16,
                 identity: str = "dockertoken-reconciler") -> None:
        self.source = source
        self.proc_wrapper = harness.FunctionProcess(world.cp.kubeconfigs[identity],
                                                    env={"THREADS": str(threads)})
        self.url = self.proc_wrapper.url

    def start(self) -> Function:
        fp = self.proc_wrapper
        if self.source == "function/main.py":
            fp.start()
            return self
        # the harness serves function/main.py; other sources are started the same way here
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")},
               "KUBECONFIG": str(fp.kubeconfig), "LOG_LEVEL": "INFO", **fp.extra_env}
        with fp.log_path.open("wb") as log:
            fp.proc = subprocess.Popen(ff_argv(self.source, fp.port), env=env, cwd=ROOT,
                                       stdout=log, stderr=subprocess.STDOUT)
        wait_listening(fp.url, fp.proc)
        return self

    def stop(self) -> None:
        self.proc_wrapper.stop()
        if os.environ.get("QDT_KEEP_LOGS") != "1":
            self.proc_wrapper.log_path.unlink(missing_ok=True)

    def logs(self) -> str:
        return self.proc_wrapper.logs()

    @property
    def pid(self) -> int:
        assert self.proc_wrapper.proc is not None
        return self.proc_wrapper.proc.pid

    def cpu(self) -> float:
        """CPU seconds of the master and its workers so far."""
        return cpu_seconds(self.pid) + sum(cpu_seconds(pid) for pid in children(self.pid))

    def memory(self) -> dict[str, int]:
        """Peak RSS (VmHWM, KiB) of the gunicorn master and each worker, read from /proc."""
        out = {"master": vm_hwm(self.pid)}
        for n, pid in enumerate(children(self.pid)):
            out[f"worker{n}"] = vm_hwm(pid)
        return out

    def __enter__(self) -> Function:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ff_argv(source: str, port: int) -> list[str]:
    ff = Path(sys.executable).with_name("functions-framework")
    return [str(ff), "--source", str(ROOT / source), "--target", "handle", "--signature-type",
            "cloudevent", "--host", "127.0.0.1", "--port", str(port)]


def wait_listening(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until the port answers HTTP at all (the bare function has no /healthz: 404 is fine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.02)
    raise RuntimeError(f"{url}: not listening after {timeout} s")


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (the gunicorn workers of a master)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return sorted(found)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@dataclass
class World:
    cp: ControlPlane
    quay: QuaySimulator
    conns: list[Conn] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    @classmethod
    @contextmanager
    def running(cls, assets: Path, *, conns: int = 10, namespaces: int = 4) -> Iterator[World]:
        with ControlPlane(assets=assets) as cp, \
                QuaySimulator(oauth_request_cost=OAUTH_REQUEST_COST) as quay:
            world = cls(cp, quay)
            world._populate(conns, namespaces)
            yield world

    def _populate(self, conns: int, namespaces: int) -> None:
        self.namespaces = [f"bench-{n}" for n in range(namespaces)]
        for ns in [*self.namespaces, "bench-direct"]:
            self.core.create_namespace({"metadata": {"name": ns}})
        for i in range(conns):
            user = f"bench{i}"
            self.quay.add_user(user)
            token = self.quay.add_oauth_token(user, "user:admin")
            conn = Conn(i, self.namespaces[i % namespaces], f"quay-conn-{i}", user, token)
            self.core.create_namespaced_secret(conn.namespace, {
                "metadata": {"name": conn.secret},
                "stringData": {"host": self.quay.base_url, "token": token},
            })
            self.conns.append(conn)

    # -- API clients ------------------------------------------------------------------------
    @property
    def admin(self) -> Any:
        if not hasattr(self, "_admin"):
            self._admin = self.cp.api_client("admin")
            self._admin.configuration.connection_pool_maxsize = 32
        return self._admin

    @property
    def core(self) -> Any:
        return client.CoreV1Api(self.admin)

    @property
    def custom(self) -> Any:
        return client.CustomObjectsApi(self.admin)

    # -- objects ----------------------------------------------------------------------------
    def objects(self, start: int, stop: int) -> list[Obj]:
        out = []
        for i in range(start, stop):
            conn = self.conns[i % len(self.conns)]
            out.append(Obj(i, conn.namespace, f"dt-{i:04d}", conn))
        return out

    def create(self, objs: list[Obj], concurrency: int = 8) -> None:
        custom = self.custom

        def one(o: Obj) -> None:
            custom.create_namespaced_custom_object(G, V, o.namespace, P, o.body())

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, objs))

    def get(self, o: Obj) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(G, V, o.namespace, P, o.name))

    def delete_secret(self, o: Obj) -> None:
        self.core.delete_namespaced_secret(o.ret_secret, o.namespace)

    def delete(self, objs: list[Obj], concurrency: int = 8) -> None:
        """Ask for deletion (the finalizer keeps each object until the function lets it go)."""
        custom = self.custom

        def one(o: Obj) -> None:
            custom.delete_namespaced_custom_object(G, V, o.namespace, P, o.name)

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, objs))

    def existing(self, objs: list[Obj]) -> int:
        """How many of ``objs`` still exist (one list of all DockerTokens)."""
        wanted = {(o.namespace, o.name) for o in objs}
        items = self.custom.list_cluster_custom_object(G, V, P)["items"]
        return sum((i["metadata"]["namespace"], i["metadata"]["name"]) in wanted for i in items)

    def sizes(self) -> dict[str, float]:
        """Average bytes of one DockerToken and of one pull Secret as the API server serves them in
        a list (JSON, with managedFields: what a page of 500 costs), and of a connection Secret."""
        out = {}
        pull = {"labelSelector": f"{MANAGED_BY_LABEL}={MANAGED_BY}"}
        for what, path, params in (("dockertoken", f"/apis/{G}/{V}/{P}", {}),
                                   ("pull secret", "/api/v1/secrets", pull)):
            resp = httpx.get(f"{self.cp.url}{path}", params={"limit": 500, **params},
                             verify=str(self.cp.ca_file),
                             headers={"Authorization": f"Bearer {self.cp.tokens['admin']}"}, timeout=60)
            items = resp.json().get("items") or []
            out[what] = len(resp.content) / max(len(items), 1)
        conn = self.conns[0]
        out["connection secret"] = len(httpx.get(
            f"{self.cp.url}/api/v1/namespaces/{conn.namespace}/secrets/{conn.secret}",
            verify=str(self.cp.ca_file), headers={"Authorization": f"Bearer {self.cp.tokens['admin']}"},
            timeout=60).content)
        return out

    def ready_report(self, objs: list[Obj]) -> tuple[int, int]:
        """(objects whose Ready condition is True, return Secrets that exist) among ``objs``."""
        wanted = {(o.namespace, o.name) for o in objs}
        ready = 0
        for item in self.custom.list_cluster_custom_object(G, V, P)["items"]:
            meta = item["metadata"]
            if (meta["namespace"], meta["name"]) not in wanted:
                continue
            conds = (item.get("status") or {}).get("conditions") or []
            ready += any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
        secrets = {(s.metadata.namespace, s.metadata.name)
                   for s in self.core.list_secret_for_all_namespaces().items}
        present = sum((o.namespace, o.ret_secret) in secrets for o in objs)
        return ready, present

    # -- counters ---------------------------------------------------------------------------
    def control_plane_cpu(self) -> dict[str, float]:
        """CPU seconds used so far by kube-apiserver and etcd."""
        out = {}
        for proc in self.cp._procs:
            argv = proc.args if isinstance(proc.args, list) else [proc.args]
            out[Path(str(argv[0])).name] = cpu_seconds(proc.pid)
        return out

    def counts(self) -> Counts:
        return Counts(Counter(self.quay.calls), self.quay.simulated_cpu_seconds, self.api_requests())

    def metrics(self) -> str:
        return httpx.get(f"{self.cp.url}/metrics", verify=str(self.cp.ca_file), timeout=30,
                         headers={"Authorization": f"Bearer {self.cp.tokens['admin']}"}).text

    def list_bytes(self, label_selector: str | None = None) -> tuple[int, int]:
        """(bytes, pages) of one list of DockerTokens as the function makes it (JSON, pages of 500,
        optionally by label), read as the reconciler identity."""
        params: dict[str, Any] = {"limit": 500}
        if label_selector:
            params["labelSelector"] = label_selector
        total = pages = 0
        while True:
            resp = httpx.get(f"{self.cp.url}/apis/{G}/{V}/{P}", params=params, verify=str(self.cp.ca_file),
                             headers={"Authorization": f"Bearer {self.cp.tokens['admin']}"}, timeout=60)
            total, pages = total + len(resp.content), pages + 1
            params["continue"] = (resp.json().get("metadata") or {}).get("continue")
            if not params["continue"]:
                return total, pages

    def api_requests(self) -> Counter[tuple[str, str]]:
        """Requests the kube-apiserver served on dockertokens and secrets, from its own /metrics."""
        out: Counter[tuple[str, str]] = Counter()
        for labels, count in self.cp.request_totals():
            resource = labels.get("resource")
            if resource not in ("dockertokens", "secrets"):
                continue
            if labels.get("subresource"):
                resource = f"{resource}/{labels['subresource']}"
            out[(labels.get("verb", ""), resource)] += count
        return out
