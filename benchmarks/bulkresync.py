"""Issue 22: the bulk resync, against the per-event resync it replaced, on the real control plane.

  scripts/bench --bulk-resync [--objects 1000] [--large 10000] [--conns 10] [--drifted 10]

The world is the benchmark's (``world.py``: 10 Quay users and connection Secrets over 4
namespaces, the Quay simulator holding every OAuth request 250 ms). The DockerTokens are made
directly, as a restore would leave them and as the function writes them (the token in the
simulator's store, the object with our finalizer and claim label, its status and its pull Secret
built by the function's own ``decide``/``pullsecret`` code), so 10,000 objects take a minute to set
up instead of an hour of creations; a resync that found anything to do about them would say so
(the "up to date" count).

Figures, each on a fresh function process warmed by one no-op event (cold token-list cache):

* **A** 1,000 up-to-date objects: the bulk resync (``python -m function.resync``), and beside it
  in the same run the per-event resync it replaced (``benchmarks/resync_sample.py``): wall time,
  API requests by verb and resource (the API server's ``/metrics``), writes, Quay calls, CPU of
  every process, peak RSS of the function and of the command.
* **B** the same 1,000 of which 10 drifted in 10 different ways: what the resync repaired, and
  which objects and Secrets changed (their resourceVersions, before and after).
* **C** 10,000 up-to-date objects (the 1,000 and 9,000 more): the bulk resync, measured.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks import fullresync
from benchmarks.stats import Table, progress, secs
from benchmarks.world import WRITE_VERBS, G, Obj, P, V, World, vm_hwm
from function import claims, decide, protection, pullsecret, records
from function.connection import parse_connection
from function.model import FINALIZER, DockerToken, Ref, Status, Token
from function.steps import Ensure, Obtained
from tests.controlplane import find_assets
from tests.quaysim import views


@dataclass
class Run:
    label: str
    run: fullresync.ResyncRun
    changed: set[str] = field(default_factory=set)


class Api:
    """Plain httpx as the admin: setup of thousands of objects without the kubernetes client's cost."""

    def __init__(self, world: World) -> None:
        self.http = httpx.Client(base_url=world.cp.url, verify=str(world.cp.ca_file), timeout=60,
                                 headers={"Authorization": f"Bearer {world.cp.tokens['admin']}"},
                                 limits=httpx.Limits(max_connections=32, max_keepalive_connections=32))

    def call(self, method: str, path: str, body: Any = None, *, merge: bool = False) -> dict[str, Any]:
        headers = {"Content-Type": "application/merge-patch+json"} if merge else {}
        resp = self.http.request(method, path, json=body, headers=headers)
        if resp.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status_code} {resp.text[:300]}")
        return dict(resp.json())

    def versions(self) -> dict[str, str]:
        """resourceVersion of every DockerToken and pull Secret, by kind/namespace/name."""
        out: dict[str, str] = {}
        managed = {"labelSelector": f"{pullsecret.MANAGED_BY_LABEL}={pullsecret.MANAGED_BY}"}
        for kind, path, params in (("dt", f"/apis/{G}/{V}/{P}", {}), ("secret", "/api/v1/secrets", managed)):
            query: dict[str, Any] = {"limit": 500, **params}
            while True:
                page = self.call("GET", path + "?" + str(httpx.QueryParams(query)))
                for item in page["items"]:
                    meta = item["metadata"]
                    out[f"{kind}/{meta['namespace']}/{meta['name']}"] = meta["resourceVersion"]
                query["continue"] = page["metadata"].get("continue")
                if not query["continue"]:
                    break
        return out


def populate(world: World, api: Api, objs: list[Obj], threads: int = 16) -> None:
    """Each object as the function leaves it once Ready (see the module docstring): its
    finalizer, claim label and registration as its connection Secret's user (which carries the
    in-use finalizer), the status ``decide.settle`` writes for the token, and the pull Secret."""
    conn = parse_connection({"host": world.quay.base_url, "token": "x"}, secret_name="x")
    now = datetime.datetime.now(datetime.UTC)
    for c in {o.conn for o in objs}:
        api.call("PATCH", f"/api/v1/namespaces/{c.namespace}/secrets/{c.secret}",
                 {"metadata": {"finalizers": [protection.IN_USE_FINALIZER]}}, merge=True)

    def one(o: Obj) -> None:
        made = views.token_view(world.quay.state.create_token(o.conn.user, o.title), include_code=True)
        token = Token(made["uuid"], made["title"], made["created"] or "", made["expiration"] or "",
                      made["last_accessed"] or "", made["token_code"])
        body = o.body()
        used = Ref(o.namespace, o.conn.secret)
        body["metadata"]["finalizers"] = [FINALIZER]
        body["metadata"]["labels"] = {claims.claim_label(conn.registry, o.title): "true",
                                      protection.CONNECTION_LABEL: protection.key(used)}
        body["metadata"]["annotations"] = {protection.CONNECTION_ANNOTATION: str(used)}
        created = api.call("POST", f"/apis/{G}/{V}/namespaces/{o.namespace}/{P}", body)
        dt = DockerToken.from_object(created)
        where = Ref(o.namespace, o.ret_secret)
        ob = decide.Observed(dt=dt, now=now, verify=False, wave="", conn=conn, conn_error=None,
                             conn_version="", ret_secret=None, old_ret_secret=None)
        got = Obtained(token, "kept", "", records.recorded(dt.status, dt, token, revoke_old=False))
        status = decide.settle(ob, Ensure(token, where, (), (), ()), got).status
        api.call("PATCH", f"/apis/{G}/{V}/namespaces/{o.namespace}/{P}/{o.name}/status",
                 {"status": {k: v for k, v in status.merge_patch(Status()).items() if v is not None}},
                 merge=True)
        api.call("POST", f"/api/v1/namespaces/{o.namespace}/secrets",
                 pullsecret.build(dt, where, token, [conn.registry]))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, objs))


def drift(world: World, api: Api, objs: list[Obj]) -> dict[str, str]:
    """Ten kinds of drift, one per object: {object name: the kind the resync should report}."""
    kinds = ["secret-missing", "secret-edited", "token-gone", "renewal-due", "token-expired",
             "spec-changed", "metadata", "last-accessed", "secret-moved", "status"]
    out = {}
    for o, kind in zip(objs, kinds, strict=False):
        base = f"/apis/{G}/{V}/namespaces/{o.namespace}/{P}/{o.name}"
        secret = f"/api/v1/namespaces/{o.namespace}/secrets/{o.ret_secret}"
        uuid = api.call("GET", base)["status"]["uuid"]
        if kind == "secret-missing":
            api.call("DELETE", secret)
        elif kind == "secret-edited":
            api.call("PATCH", secret, {"stringData": {"tokenCode": "edited"}}, merge=True)
        elif kind == "token-gone":
            world.quay.state.revoke_token(o.conn.user, uuid)
        elif kind == "renewal-due":
            api.call("PATCH", base + "/status", {"status": {"renewalTime": "2001-01-01T00:00:00Z"}},
                     merge=True)
        elif kind == "token-expired":
            api.call("PATCH", base + "/status",
                     {"status": {"expiration": "Mon, 01 Jan 2001 00:00:00 -0000"}}, merge=True)
        elif kind == "spec-changed":
            api.call("PATCH", base, {"spec": {"name": o.title + "-v2"}}, merge=True)
        elif kind == "metadata":
            api.call("PATCH", base, {"metadata": {"finalizers": None}}, merge=True)
        elif kind == "last-accessed":
            world.quay.advance(25 * 3600)  # a pull a day after the value the Secret holds
            world.quay.touch(uuid)
        elif kind == "secret-moved":
            api.call("PATCH", base, {"spec": {"retSecretRef": {"name": o.ret_secret + "-2"}}}, merge=True)
        elif kind == "status":
            api.call("PATCH", base + "/status", {"status": {"message": "edited by hand"}}, merge=True)
        out[o.name] = kind
    return out


def measure(world: World, objs: list[Obj], *, per_event: bool, label: str, threads: int,
            concurrency: int) -> fullresync.ResyncRun:
    progress(f"bulk resync: {label}")
    run = fullresync.run_on_fresh_function(world, "function/main.py", threads, objs[0],
                                           concurrency=concurrency, label=label, per_event=per_event)
    for proc in world.cp._procs:
        name = str(proc.args[0] if isinstance(proc.args, list) else proc.args).rsplit("/", 1)[-1]
        run.memory[f"{name} (since start)"] = vm_hwm(proc.pid)
    return run


def api_requests(run: fullresync.ResyncRun) -> str:
    reads = run.counts.api_detail(("GET", "LIST"))
    return f"{run.counts.reads + run.counts.writes} ({reads}; writes: {run.counts.api_detail(WRITE_VERBS)})"


def cpu(run: fullresync.ResyncRun) -> str:
    parts = [f"{k} {v:.2f}" for k, v in run.cpu.items() if k not in ("harness", "whole machine")]
    return ", ".join(parts) + f"; whole machine {run.cpu.get('whole machine', math.nan):.2f}"


def memory(run: fullresync.ResyncRun) -> str:
    return ", ".join(f"{k} {v / 1024:.0f} MB" for k, v in run.memory.items())


def model(big: fullresync.ResyncRun, base: fullresync.ResyncRun, n: int, large: int) -> list[str]:
    """docs/scaling.md's table: arithmetic on figure C (the bulk resync's cost per object) and on
    the per-event resync of A (the cost of each drifted object's reconcile), not measurements."""
    per_obj = big.wall / large
    per_event = base.wall / n                      # per drifted object, 8 in flight
    def server(run: fullresync.ResyncRun) -> float:
        return run.cpu.get("kube-apiserver", 0.0) + run.cpu.get("etcd", 0.0)

    fn, api, api_event = big.cpu.get("function", 0.0) / large, server(big) / large, server(base) / n
    fn_event = base.cpu.get("function", 0.0) / n
    out = ["Model (docs/scaling.md; arithmetic on C and A): objects | drifted | resync wall | "
           "function CPU | apiserver+etcd CPU | API requests (10 / 100 conns) | Quay lists"]
    for objects in (1_000, 10_000, 100_000):
        for share in (0.0, 0.01):
            drifted = int(objects * share)
            pages = math.ceil(objects / 1000)
            wall = objects * per_obj + drifted * per_event
            requests = [2 * pages + c + 3 * drifted for c in (10, 100)]
            fn_cpu = objects * fn + drifted * fn_event
            out.append(f"  {objects:>7,} | {drifted:>5,} | {wall:6.1f} s | {fn_cpu:6.1f} s | "
                       f"{objects * api + drifted * api_event:6.1f} s | {requests[0]:,} / {requests[1]:,} | "
                       f"10 / 100")
    return out


def _counts(summary: dict[str, object], key: str) -> dict[str, int]:
    found = summary.get(key)
    return {str(k): int(v) for k, v in found.items()} if isinstance(found, dict) else {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench --bulk-resync", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=1000)
    p.add_argument("--large", type=int, default=10000, help="0 to skip figure C")
    p.add_argument("--conns", type=int, default=10)
    p.add_argument("--namespaces", type=int, default=4)
    p.add_argument("--drifted", type=int, default=10)
    p.add_argument("--threads", type=int, default=10)
    p.add_argument("--resync-concurrency", type=int, default=8)
    args = p.parse_args(argv)
    started = time.monotonic()
    t = Table()
    with World.running(find_assets(), conns=args.conns, namespaces=args.namespaces) as world:
        api = Api(world)
        objs = world.objects(0, args.objects)
        t0 = time.monotonic()
        populate(world, api, objs)
        progress(f"{len(objs)} objects made in {time.monotonic() - t0:.1f} s")
        kw = {"threads": args.threads, "concurrency": args.resync_concurrency}
        base = measure(world, objs, per_event=True, label=f"per-event, {len(objs)} up to date", **kw)
        ours = measure(world, objs, per_event=False, label=f"bulk, {len(objs)} up to date", **kw)
        n, k = len(objs), args.conns
        seen = ours.summary
        t.add("A", f"resync of {n} up-to-date objects, {k} connections: start -> exit", secs(ours.wall),
              f"per-event: {secs(base.wall)}", f"{base.wall / ours.wall:.1f}x faster", "<= 1.0 s",
              ours.wall <= 1.0)
        sent = sum(_counts(seen, "repaired").values())
        t.add("A", "  objects seen / up to date / reconciles sent",
              f"{seen.get('seen')} / {seen.get('upToDate')} / {sent}",
              f"{base.summary.get('listed')} / - / {base.summary.get('sent')}")
        t.add("A", "  API requests (dockertokens, secrets)", api_requests(ours), api_requests(base), "",
              "O(pages + connections), 0 writes", ours.counts.writes == 0)
        t.add("A", "  Quay calls", f"{ours.counts.quay_calls} ({ours.counts.quay_detail()})",
              f"{base.counts.quay_calls} ({base.counts.quay_detail()})", "", f"= {k}",
              ours.counts.quay_calls == k)
        t.add("A", "  CPU seconds", cpu(ours), cpu(base))
        t.add("A", "  peak RSS", memory(ours), memory(base))

        progress(f"figure B: {args.drifted} objects drifted in different ways")
        drifted = drift(world, api, objs[1:1 + args.drifted])
        before = api.versions()
        fixed = measure(world, objs, per_event=False, label=f"bulk, {args.drifted} of {n} drifted", **kw)
        after = api.versions()
        changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
        touched = {key.rsplit("/", 1)[1].removesuffix("-pull").removesuffix("-pull-2") for key in changed}
        repaired = _counts(fixed.summary, "repaired")
        expected = {kind: list(drifted.values()).count(kind) for kind in set(drifted.values())}
        t.add("B", f"resync of {n} objects, {len(drifted)} drifted: repaired by kind",
              ", ".join(f"{kind} {c}" for kind, c in sorted(repaired.items())), "", "",
              f"exactly the {len(drifted)}", repaired == expected)
        t.add("B", "  objects or pull Secrets changed", f"{len(changed)}, of {len(touched)} objects: "
              f"{'only the drifted ones' if touched <= set(drifted) else sorted(touched - set(drifted))}",
              "", "", "only the drifted", touched <= set(drifted))
        t.add("B", "  wall / API writes / Quay calls",
              f"{secs(fixed.wall)} / {fixed.counts.writes} ({fixed.counts.api_detail(WRITE_VERBS)}) / "
              f"{fixed.counts.quay_calls} ({fixed.counts.quay_detail()})")

        if args.large > n:
            more = world.objects(n, args.large)
            t0 = time.monotonic()
            populate(world, api, more)
            progress(f"{len(more)} more objects made in {time.monotonic() - t0:.1f} s")
            # what the watch would deliver after B: the echo that moves the renamed object's claim label
            measure(world, objs, per_event=False, label="settle the echoes of B", **kw)
            big = measure(world, objs, per_event=False, label=f"bulk, {args.large} up to date", **kw)
            s = big.summary
            t.add("C", f"resync of {args.large} up-to-date objects, {k} connections: start -> exit",
                  secs(big.wall), f"per-event, projected from A: {secs(base.wall * args.large / n)}*", "",
                  "<= 10 s", big.wall <= 10)
            t.add("C", "  objects seen / up to date / reconciles sent",
                  f"{s.get('seen')} / {s.get('upToDate')} / {sum(_counts(s, 'repaired').values())}")
            t.add("C", "  API requests (dockertokens, secrets)", api_requests(big), "", "",
                  "O(pages + connections), 0 writes", big.counts.writes == 0)
            t.add("C", "  Quay calls", f"{big.counts.quay_calls} ({big.counts.quay_detail()})", "", "",
                  f"= {k}", big.counts.quay_calls == k)
            t.add("C", "  CPU seconds", cpu(big))
            t.add("C", "  peak RSS", memory(big))
            for line in model(big, base, n, args.large):
                t.note(line)
    t.note("* projected: the per-event resync's time per object in A times the objects. Wall time is "
           "from the command's start to its exit; CPU in seconds while it ran; peak RSS is VmHWM "
           "(function: of a fresh process; kube-apiserver and etcd: since they started).")
    t.note(f"Total run time {time.monotonic() - started:.0f} s.")
    print(t.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
