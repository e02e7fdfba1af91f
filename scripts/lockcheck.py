"""Is a lock complete under `pip install --no-deps`? With no resolver, nothing fills a gap: every
requirement of every locked distribution (its markers evaluated for this interpreter, including the
extras something asks for, such as pytest-cov's `coverage[toml]`) must itself be pinned in the lock,
at a version the requirement accepts.

    python -m scripts.lockcheck LOCK [--extra NAME]

reads the requirements from the metadata of the distributions installed for this interpreter,
which must be the locked versions: run it in a virtualenv made from the lock (scripts/check-locks
does). The roots are pyproject.toml's dependencies and the named extras.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def pins(lock_text: str) -> dict[str, str]:
    """A pip-compile lock's pins: canonical name -> version."""
    found: dict[str, str] = {}
    for line in lock_text.splitlines():
        m = PIN.match(line)
        if m:
            found[canonicalize_name(m.group(1))] = m.group(2)
    return found


def gaps(locked: Mapping[str, str], requires: Mapping[str, Iterable[str]], roots: Iterable[str],
         env: Mapping[str, str] | None = None) -> list[str]:
    """What `pip install --no-deps` of the lock would leave unmet, one sentence each.

    locked: canonical name -> pinned version; requires: canonical name -> its Requires-Dist
    strings (the locked version's); roots: what the lock was made for; env: marker variables
    that differ from this interpreter's (for tests).
    """
    problems: list[str] = []
    extras: dict[str, set[str]] = {name: set() for name in locked}
    done: set[tuple[str, str]] = set()

    def applies(req: Requirement, extra: str) -> bool:
        return req.marker is None or req.marker.evaluate({**(env or {}), "extra": extra})

    def need(req: Requirement, by: str) -> None:
        name = canonicalize_name(req.name)
        extra_list = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        wanted = f"{req.name}{extra_list}{req.specifier}"  # without its marker, which held
        if name not in locked:
            problems.append(f"{wanted} (required by {by}) is not pinned in the lock")
            return
        if not req.specifier.contains(locked[name], prereleases=True):
            problems.append(f"{name}=={locked[name]} does not satisfy {by}'s requirement {wanted}")
        for extra in sorted(req.extras - extras[name]):
            extras[name].add(extra)
            visit(name, extra)

    def visit(name: str, extra: str) -> None:
        if (name, extra) in done:
            return
        done.add((name, extra))
        for line in requires.get(name, ()):
            req = Requirement(line)
            if applies(req, extra):
                need(req, f"{name}[{extra}]" if extra else name)

    for line in roots:
        req = Requirement(line)
        if applies(req, ""):
            need(req, "pyproject.toml")
    for name in sorted(locked):
        visit(name, "")
    return problems


def installed(locked: Mapping[str, str]) -> tuple[dict[str, list[str]], list[str]]:
    """Requires-Dist of each locked distribution installed here, and what is missing or another version."""
    dists: dict[str, metadata.Distribution] = {
        canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
    requires, problems = {}, []
    for name, version in sorted(locked.items()):
        dist = dists.get(name)
        if dist is None or dist.version != version:
            found = dist.version if dist else "nothing"
            problems.append(f"{name}: the lock pins {version}, the environment has {found}")
        else:
            requires[name] = dist.requires or []
    return requires, problems


def roots(extras: Iterable[str]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="an extra of pyproject.toml in the lock")
    args = parser.parse_args(argv)
    locked = pins(args.lock.read_text())
    requires, problems = installed(locked)
    problems += gaps(locked, requires, roots(args.extra))
    if problems:
        print(f"{args.lock} is not complete under pip install --no-deps (run scripts/lock):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"{args.lock}: {len(locked)} pins, every requirement of each (extras included) pinned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
