"""The dependencies: every import declared, the image's lock complete and hashed, and the versions
these tests run on the versions the image ships (requirements.lock, what the Containerfile
installs; requirements-dev.lock, what scripts/setup installs). Refresh both with scripts/lock.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def lock(name: str) -> dict[str, tuple[str, frozenset[str]]]:
    """A pip-compile lock: canonical name -> (version, hashes)."""
    text = (ROOT / name).read_text().replace("\\\n", " ")
    pins: dict[str, tuple[str, frozenset[str]]] = {}
    for line in text.splitlines():
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)(.*)", line)
        if m:
            pins[str(canonicalize_name(m.group(1)))] = (
                m.group(2), frozenset(re.findall(r"--hash=(sha256:[0-9a-f]{64})", m.group(3))))
    return pins


def declared() -> dict[str, Requirement]:
    reqs = (Requirement(r) for r in PYPROJECT["project"]["dependencies"])
    return {canonicalize_name(r.name): r for r in reqs}


def third_party_imports() -> set[str]:
    """Top-level modules imported anywhere in function/, other than the stdlib and itself."""
    found = set()
    for path in (ROOT / "function").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in ("function", "__future__")}


def test_every_import_of_the_function_is_a_declared_dependency() -> None:
    providers = metadata.packages_distributions()
    imports = third_party_imports()
    assert {"yaml", "flask", "httpx"} <= imports  # the scan sees what function/ imports
    undeclared = {m: providers.get(m) for m in imports
                  if not {canonicalize_name(d) for d in providers.get(m, [])} & declared().keys()}
    assert not undeclared, f"imported by function/ but not in [project.dependencies]: {undeclared}"


def test_the_image_lock_pins_every_declared_dependency_with_hashes() -> None:
    shipped = lock("requirements.lock")
    for name, req in declared().items():
        assert name in shipped, f"{name} is declared but not in requirements.lock: run scripts/lock"
        assert req.specifier.contains(shipped[name][0]), f"{name}: lock {shipped[name][0]} vs {req}"
    unhashed = [name for name, (_, hashes) in shipped.items() if not hashes]
    assert not unhashed, f"pins without --hash (pip install --require-hashes refuses them): {unhashed}"
    assert not {"pip", "setuptools"} & shipped.keys(), "the runtime needs no installer"


def test_the_tests_run_on_the_shipped_versions() -> None:
    shipped, dev = lock("requirements.lock"), lock("requirements-dev.lock")
    differ = {n: (v, dev.get(n, ("missing",))[0]) for n, (v, h) in shipped.items()
              if dev.get(n) != (v, h)}
    assert not differ, f"requirements-dev.lock disagrees with requirements.lock (run scripts/lock): {differ}"
    installed = {n: metadata.version(n) for n in shipped}
    stale = {n: (v, installed[n]) for n, (v, _) in shipped.items() if installed[n] != v}
    assert not stale, f"this environment is not the locked one (run scripts/setup): {stale}"
