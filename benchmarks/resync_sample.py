"""``python -m function.resync`` restricted to a given list of objects (the serial baseline's sample).

The resync command lists every DockerToken in the cluster; the baseline runs on a sample, so
this wrapper hands ``function.resync.main`` a fixed lister and otherwise runs it unchanged:

  python -m benchmarks.resync_sample --objects ns/name,ns/name --sink URL --concurrency 1
"""

from __future__ import annotations

import argparse
import sys

from function import resync


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resync_sample")
    parser.add_argument("--objects", required=True, help="comma-separated namespace/name")
    args, rest = parser.parse_known_args(argv)
    objs = [{"metadata": {"namespace": ns, "name": name}}
            for ns, _, name in (ref.partition("/") for ref in args.objects.split(","))]
    return resync.main(rest, lister=lambda: objs)


if __name__ == "__main__":
    sys.exit(main())
