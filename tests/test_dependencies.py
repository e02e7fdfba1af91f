"""The dependencies: every import declared, the image's lock complete and hashed, both locks
complete under `pip install --no-deps`, and the versions these tests run on the versions the image
ships (requirements.lock, what the Containerfile installs; requirements-dev.lock, what scripts/setup
installs). Refresh both with scripts/lock.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts import lockcheck

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


# --- Complete under --no-deps: scripts/setup, scripts/check-locks and the image install each lock
# with no resolver, so nothing fills a gap (scripts/lockcheck.py; issue 19).

def test_both_locks_are_complete_under_no_deps() -> None:
    """Every requirement of every locked distribution, extras included, is pinned in its lock
    (read from this virtualenv, which holds requirements-dev.lock and so every version of both)."""
    for name, extras in (("requirements.lock", []), ("requirements-dev.lock", ["dev"])):
        locked = lockcheck.pins((ROOT / name).read_text())
        requires, problems = lockcheck.installed(locked)
        problems += lockcheck.gaps(locked, requires, lockcheck.roots(extras))
        assert not problems, f"{name} is not complete under --no-deps (run scripts/lock): {problems}"


def test_setup_can_install_pip_and_build_the_project_from_the_dev_lock() -> None:
    dev = lock("requirements-dev.lock")
    assert "pip" in dev and dev["pip"][1], "scripts/setup installs pip, hash-checked, from the dev lock first"
    backend = Requirement(tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"][0])
    assert backend.specifier.contains(dev["setuptools"][0]), "the project is built with the locked setuptools"


LOCK = {"pytest-cov": "7.1.0", "coverage": "7.17.5", "pluggy": "1.6.0", "pytest": "9.2.0", "tomli": "2.3.0"}
REQUIRES = {
    "pytest-cov": ["coverage[toml]>=7.10.6", "pluggy>=1.2", "pytest>=7", "virtualenv; extra == 'testing'"],
    "coverage": ['tomli; python_full_version <= "3.11.0a6" and extra == "toml"'],
    "pytest": ["pluggy<2,>=1.5", 'tomli>=1; python_version < "3.11"'],
}


@pytest.mark.parametrize(("drop", "requires", "roots", "env", "problems"), [
    ({"tomli"}, REQUIRES, ["pytest-cov==7.1.0"], {"python_version": "3.11", "python_full_version": "3.11.7"}, []),
    (set(), REQUIRES, ["pytest-cov==7.1.0"], {}, []),
    # coverage[toml] on an interpreter where the extra needs tomli: the extra is followed
    ({"tomli"}, REQUIRES, ["pytest-cov==7.1.0"], {"python_version": "3.10", "python_full_version": "3.10.13"},
     ["tomli (required by coverage[toml]) is not pinned in the lock",
      "tomli>=1 (required by pytest) is not pinned in the lock"]),
    # an extra nothing asks for is not followed (pytest-cov[testing] would need virtualenv)
    (set(), REQUIRES, ["pytest-cov[testing]==7.1.0"], {},
     ["virtualenv (required by pytest-cov[testing]) is not pinned in the lock"]),
    ({"pluggy"}, REQUIRES, ["pytest-cov==7.1.0"], {},
     ["pluggy>=1.2 (required by pytest-cov) is not pinned in the lock",
      "pluggy<2,>=1.5 (required by pytest) is not pinned in the lock"]),
    (set(), {**REQUIRES, "pytest": ["pluggy>=1.7"]}, [], {},
     ["pluggy==1.6.0 does not satisfy pytest's requirement pluggy>=1.7"]),
    (set(), REQUIRES, ["httpx==0.28.1"], {}, ["httpx==0.28.1 (required by pyproject.toml) is not pinned in the lock"]),
])
def test_lockcheck_finds_what_no_deps_would_leave_unmet(drop: set[str], requires: dict[str, list[str]],
                                                         roots: list[str], env: dict[str, str],
                                                         problems: list[str]) -> None:
    locked = {n: v for n, v in LOCK.items() if n not in drop}
    assert sorted(lockcheck.gaps(locked, requires, roots, env)) == sorted(problems)


def test_lockcheck_reads_pins_with_their_continuation_lines() -> None:
    text = "# comment\nfoo-bar==1.2.3 \\\n    --hash=sha256:ab\n    # via x\nBaz[extra]==2.0 ; python_version >= '3'\n"
    assert lockcheck.pins(text) == {"foo-bar": "1.2.3", "baz": "2.0"}
