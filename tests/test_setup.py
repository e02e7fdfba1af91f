"""scripts/setup picks its interpreter (PYTHON, else python3) and refuses one older than 3.11 before
it touches anything, with a message naming the interpreter, its version and the fix; CI knows when
the fresh-machine check is due (scripts/fresh-machine-check --status)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_copy(tmp_path: Path) -> Path:
    """scripts/setup and its library in an empty folder: a run that went too far makes .venv there."""
    (tmp_path / "scripts" / "lib").mkdir(parents=True)
    for name in ("setup", "lib/python.sh"):
        shutil.copy2(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    return tmp_path / "scripts" / "setup"


def run_setup(tmp_path: Path, python: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": python}
    return subprocess.run([str(setup_copy(tmp_path))], env=env, capture_output=True, text=True, timeout=60)


def test_the_interpreter_is_python3_or_PYTHON_with_its_full_version(tmp_path: Path) -> None:
    script = 'source "$1"; qdt_python; echo "$PYTHON|$PYTHON_VERSION"'
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(["bash", "-c", script, "x", ROOT / "scripts/lib/python.sh"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out == f"{sys.executable}|{platform.python_version()}\n"


def test_an_interpreter_older_than_3_11_is_refused_with_the_fix(tmp_path: Path) -> None:
    old = tmp_path / "python3.10"  # this interpreter, reporting itself as 3.10.13
    old.write_text(f"#!{sys.executable}\nimport sys\nsys.version_info = (3, 10, 13, 'final', 0)\nexec(sys.argv[2])\n")
    old.chmod(0o755)
    result = run_setup(tmp_path, str(old))
    assert result.returncode == 1
    assert result.stderr == (
        f"{old} is Python 3.10.13; quay-dockertoken needs Python 3.11 or newer (tested: 3.11). Install one"
        " (Debian 12: apt-get install python3 python3-venv) and run again, naming it if it is not python3:"
        f" PYTHON=/usr/bin/python3.11 {tmp_path}/scripts/setup\n")
    assert not (tmp_path / ".venv").exists()


def test_a_missing_interpreter_is_named(tmp_path: Path) -> None:
    result = run_setup(tmp_path, "python3.99")
    assert result.returncode == 1
    assert result.stderr.startswith("no Python interpreter 'python3.99' on PATH: install Python 3.11 or newer")
    assert not (tmp_path / ".venv").exists()


def status(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(root / "scripts" / "fresh-machine-check"), "--status"],
                          capture_output=True, text=True, timeout=60)


def test_ci_reruns_the_fresh_machine_check_when_a_lock_or_any_go_mod_changes(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / ".ci").mkdir()
    shutil.copy2(ROOT / "scripts" / "fresh-machine-check", tmp_path / "scripts")
    for name in ("requirements.lock", "requirements-dev.lock"):
        shutil.copy2(ROOT / name, tmp_path / name)
    for gomod in ROOT.glob("tests/**/go.mod"):
        (tmp_path / gomod.parent.relative_to(ROOT)).mkdir(parents=True)
        shutil.copy2(gomod, tmp_path / gomod.relative_to(ROOT))
    assert status(tmp_path).stdout.startswith("fresh-machine check: due, it has never passed")

    record = subprocess.run(["bash", "-c", "shopt -s globstar; sha256sum requirements.lock requirements-dev.lock tests/**/go.mod"],
                            cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    (tmp_path / ".ci" / "fresh-machine.sha256").write_text(record)
    assert status(tmp_path).returncode == 0

    with (tmp_path / "tests" / "adapter" / "go.mod").open("a") as f:
        f.write("\n// changed\n")
    result = status(tmp_path)
    assert result.returncode == 1
    assert "tests/adapter/go.mod" in result.stdout and "requirements.lock" not in result.stdout

    shutil.copy2(ROOT / "tests" / "adapter" / "go.mod", tmp_path / "tests" / "adapter" / "go.mod")
    (tmp_path / "tests" / "tools" / "newtool").mkdir(parents=True)  # nested, as tests/metrics/ksm
    (tmp_path / "tests" / "tools" / "newtool" / "go.mod").write_text("module example.com/newtool\n")
    result = status(tmp_path)
    assert result.returncode == 1
    assert "  now:      " in result.stdout and "tests/tools/newtool/go.mod" in result.stdout
