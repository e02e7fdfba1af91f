"""The control-plane cache cannot half-succeed (scripts/lib/gocache.sh, what scripts/build-controlplane
runs for each binary): a real `go build` of a small module into a temporary cache, killed half way,
run twice at once, failing to compile, or producing a binary that does not run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests import waiting

ROOT = Path(__file__).resolve().parents[1]

HELLO = """package main

import (
	"fmt"
	"os"
	"time"
)

func main() {
	// The check runs this with HELLO_MARK set: it says so, then takes a second to answer.
	if mark := os.Getenv("HELLO_MARK"); mark != "" {
		_ = os.WriteFile(mark, nil, 0o644)
		time.Sleep(time.Second)
	}
	fmt.Println("hello v1")
}
"""

DRIVER = """set -euo pipefail
source "$QDT_ROOT/scripts/lib/gocache.sh"
gocache_init "$1" hello-v1
gocache_binary hello "$2" . "HELLO_MARK=$3 --version" "$4"
echo "$_gocache_dir/hello"
"""


@pytest.fixture
def module(tmp_path: Path) -> Path:
    mod = tmp_path / "mod"
    mod.mkdir()
    (mod / "go.mod").write_text("module example.com/hello\n\ngo 1.26\n")
    (mod / "main.go").write_text(HELLO)
    return mod


def start(cache: Path, mod: Path, mark: Path, expected: str = "hello v1") -> subprocess.Popen[str]:
    env = {**os.environ, "QDT_ROOT": str(ROOT)}
    return subprocess.Popen(["bash", "-c", DRIVER, "driver", str(cache), str(mod), str(mark), expected],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def run(cache: Path, mod: Path, mark: Path, expected: str = "hello v1") -> tuple[int, str, str]:
    proc = start(cache, mod, mark, expected)
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 240
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        waiting.pause(0.02)


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.glob(".build.*"))


def test_a_binary_is_built_once_checked_and_then_reused(tmp_path: Path, module: Path) -> None:
    cache = tmp_path / "cache"
    code, out, err = run(cache, module, tmp_path / "mark")
    assert code == 0, err
    binary = Path(out.strip())
    assert binary == cache / "hello-v1" / "hello"
    assert subprocess.run([binary], capture_output=True, text=True).stdout == "hello v1\n"
    assert "building hello" in err and "built hello in" in err
    assert leftovers(cache) == []
    built = binary.stat().st_mtime_ns
    code, out, err = run(cache, module, tmp_path / "mark")
    assert (code, out.strip(), err) == (0, str(binary), "")
    assert binary.stat().st_mtime_ns == built


@pytest.mark.parametrize("moment", ["while go builds", "while the new binary is checked"])
def test_a_build_killed_half_way_leaves_nothing_that_a_rerun_trusts(tmp_path: Path, module: Path,
                                                                    moment: str) -> None:
    cache, mark = tmp_path / "cache", tmp_path / "mark"
    proc = start(cache, module, mark)
    if moment == "while go builds":
        deadline = time.monotonic() + 60
        while not leftovers(cache) and proc.poll() is None and time.monotonic() < deadline:
            waiting.pause(0.005)
    else:
        wait_for(mark, proc)  # built, not yet in place: where a non-atomic cache is half written
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (cache / "hello-v1" / "hello").exists()
    assert len(leftovers(cache)) == 1  # SIGKILL leaves its build folder; the next builder removes it
    mark.unlink(missing_ok=True)
    code, out, err = run(cache, module, mark)
    assert code == 0, err
    assert "building hello" in err
    assert subprocess.run([out.strip()], capture_output=True, text=True).stdout == "hello v1\n"
    assert leftovers(cache) == []


def test_an_interrupted_build_cleans_up_after_itself(tmp_path: Path, module: Path) -> None:
    cache, mark = tmp_path / "cache", tmp_path / "mark"
    proc = start(cache, module, mark)
    wait_for(mark, proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not (cache / "hello-v1" / "hello").exists()
    assert leftovers(cache) == []


def test_concurrent_runs_wait_for_each_other_and_build_once(tmp_path: Path, module: Path) -> None:
    cache, mark = tmp_path / "cache", tmp_path / "mark"
    first = start(cache, module, mark)
    wait_for(mark, first)  # the first holds the lock while its binary is checked
    second = start(cache, module, tmp_path / "mark2")
    (out1, err1), (out2, err2) = first.communicate(timeout=240), second.communicate(timeout=240)
    assert (first.returncode, second.returncode) == (0, 0), err1 + err2
    assert out1 == out2
    assert "building hello" in err1
    assert "waiting for another build" in err2 and "building" not in err2
    assert leftovers(cache) == []


def test_a_failed_build_stops_with_gos_message_and_leaves_the_cache_alone(tmp_path: Path, module: Path) -> None:
    (module / "main.go").write_text(HELLO.replace('fmt.Println("hello v1")', "fmt.Println(undefinedName)"))
    cache = tmp_path / "cache"
    code, out, err = run(cache, module, tmp_path / "mark")
    assert code != 0 and out == ""
    assert "undefined: undefinedName" in err  # go's own message
    assert "go build of hello (., module" in err and "failed" in err
    assert not (cache / "hello-v1" / "hello").exists()
    assert leftovers(cache) == []


def test_a_binary_that_fails_its_check_never_enters_the_cache(tmp_path: Path, module: Path) -> None:
    cache = tmp_path / "cache"
    code, out, err = run(cache, module, tmp_path / "mark", expected="hello v2")
    assert code != 0 and out == ""
    assert "does not say 'hello v2'" in err and "hello v1" in err
    assert "the hello just built does not work" in err
    assert not (cache / "hello-v1" / "hello").exists()
    assert leftovers(cache) == []


def test_a_cached_binary_that_does_not_run_is_an_error_naming_the_fix(tmp_path: Path, module: Path) -> None:
    cache = tmp_path / "cache"
    broken = cache / "hello-v1" / "hello"
    broken.parent.mkdir(parents=True)
    broken.write_text("#!/bin/sh\necho 'cannot execute: truncated' >&2\nexit 126\n")
    broken.chmod(0o755)
    code, out, err = run(cache, module, tmp_path / "mark")
    assert code != 0 and out == ""
    assert f"{broken} does not run" in err and "cannot execute: truncated" in err
    assert f"remove it (rm '{broken}')" in err
    assert "building" not in err
    assert broken.read_text().startswith("#!/bin/sh")
