"""The per-event resync as it was before issue 22: the baseline of the bulk resync's figures.

It lists the DockerTokens (``--objects`` gives a fixed sample instead) and sends every one of
them a resync event (``function.resync.deliver``, the same event, retries and concurrency as the
command), whatever its state; the function then reads each object, its connection Secret and
its pull Secret. Prints one JSON line ``{"listed", "sent", "failed", "seconds"}``.

  python -m benchmarks.resync_sample [--objects ns/name,ns/name] --sink URL --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from function.resync import ObjectRef, deliver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resync_sample")
    parser.add_argument("--objects", help="comma-separated namespace/name (default: list them all)")
    parser.add_argument("--sink", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.objects:
        refs = [ObjectRef(ns, name) for ns, _, name in (r.partition("/") for r in args.objects.split(","))]
    else:
        from function.kube import Kube

        refs = [ObjectRef(o["metadata"]["namespace"], o["metadata"]["name"])
                for o in Kube().iter_dockertokens()]
    wave = str(uuid.uuid4())
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    with httpx.Client(timeout=args.timeout, limits=limits) as client, \
            ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(lambda ref: deliver(client, args.sink, ref, wave=wave), refs))
    sent = sum(r.ok for r in results)
    print(json.dumps({"listed": len(refs), "sent": sent, "failed": len(refs) - sent,
                      "seconds": round(time.monotonic() - started, 3)}), flush=True)
    return 1 if sent < len(refs) else 0


if __name__ == "__main__":
    sys.exit(main())
