"""A clone of the repository tests on its own: nothing reads a folder beside it (issue 15).

The data the suite needs lives in ``tests/data`` (see its README). These checks keep it so:
no test, benchmark or script builds a path out of the repository, the Knative schema copies are
the upstream files their README names, and in CI (``.ci/run`` sets ``QDT_CLEAN_CLONE=1``) the
suite runs from a clone with no ``../shared`` beside it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
# Everything that runs the suite or is run by it.
SCANNED = ("tests", "benchmarks", "scripts", "function", ".ci", "README.md", "docs")
# A path out of the repository to the old shared folder, written any way we have seen.
OUTSIDE = re.compile(r"\.\./shared|[\"']shared[\"']\s*/|/\s*[\"']shared[\"']")
PARENTS = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?\.parents\[(\d+)\]")


def _files() -> list[Path]:
    found: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        found += [path] if path.is_file() else sorted(
            p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            and p.suffix in ("", ".py", ".md", ".sh", ".toml", ".yaml"))
    # the data itself, and this file (it spells the old paths out to test the scan)
    return [p for p in found if DATA not in p.parents and p != Path(__file__).resolve()]


def test_nothing_points_outside_the_repository() -> None:
    files = _files()
    assert len(files) > 50, f"scanned only {len(files)} files: is SCANNED still right?"
    problems = []
    for path in files:
        rel = path.relative_to(ROOT)
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                problems.append(f"{rel}:{number}: {line.strip()}")
            for match in PARENTS.finditer(line):
                # parents[len(parts) - 1] of a file is the repository root; one more is outside it
                if int(match.group(1)) > len(rel.parts) - 1:
                    problems.append(f"{rel}:{number}: leaves the repository: {line.strip()}")
    assert not problems, "paths out of the repository (copy the data into tests/data):\n" + "\n".join(problems)


def test_the_scan_catches_the_old_paths() -> None:
    old = 'TRANSCRIPTS = Path(__file__).resolve().parents[2] / "shared" / "quay-contract" / "transcripts"'
    assert OUTSIDE.search(old) and int(PARENTS.findall(old)[0]) > len(Path("tests/x.py").parts) - 1
    assert OUTSIDE.search("see ../shared/schemas/knative")
    assert not OUTSIDE.search('env.dockertoken("first", ret="shared")')


@pytest.mark.parametrize(("folder", "files"), [
    ("knative-schemas", {"apiserversource.yaml", "broker.yaml", "service.yaml", "trigger.yaml"}),
    ("knative-eventing-config", {"features.yaml", "logging.yaml", "observability.yaml"}),
])
def test_knative_copies_are_the_upstream_files_the_readme_names(folder: str, files: set[str]) -> None:
    path = DATA / folder
    rows = re.findall(r"^([0-9a-f]{64})  (\S+\.yaml)$", (path / "README.md").read_text(), re.M)
    listed = {name: digest for digest, name in rows}
    assert set(listed) == {p.name for p in path.glob("*.yaml")} == files
    for name, digest in listed.items():
        assert hashlib.sha256((path / name).read_bytes()).hexdigest() == digest, f"{name} was changed"


@pytest.mark.skipif(os.environ.get("QDT_CLEAN_CLONE") != "1",
                    reason="only in CI's clean clone (.ci/run sets QDT_CLEAN_CLONE=1)")
def test_ci_runs_from_a_clone_with_nothing_beside_it() -> None:
    assert not (ROOT.parent / "shared").exists(), f"{ROOT.parent / 'shared'} exists beside the CI clone"
    assert (ROOT / ".git").is_dir(), "CI should run in a clone of its own, not in a worktree"
