"""The image users deploy, run the way a pod runs it, on the real control plane and the Quay simulator.

Skipped unless ``QDT_IMAGE`` names a built image: ``scripts/test-image`` sets it (and
``QDT_ENGINE_CMD``, ``QDT_ENGINE_RUN_OPTS``, the engine command line of scripts/lib/engine.sh),
so a plain ``scripts/test`` needs no container engine.

The function container runs as the image's own user (no ``--user``), with a read-only root
filesystem and a tmpfs on /tmp only (what a pod with an emptyDir there gets), on the host network
(the control plane and the simulator listen on loopback), with the kubeconfig of the reconciler's
ServiceAccount identity mounted read-only, checking senders as the Service does (events carry
a token minted by the API server). The resync runs from the same image as the CronJob runs it
(``python -m function.resync``), as the resync identity, presenting that identity's token.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests import harness, senders, waiting
from tests.controlplane import ControlPlane
from tests.env import Env, G, P, V, dockerconfig, wait_for

IMAGE = os.environ.get("QDT_IMAGE", "")
ENGINE = shlex.split(os.environ.get("QDT_ENGINE_CMD", "podman"))
RUN_OPTS = shlex.split(os.environ.get("QDT_ENGINE_RUN_OPTS", ""))
APP_UID = 10001
MOUNT = "/var/run/qdt"  # where the identities' kubeconfigs are mounted in the container

pytestmark = pytest.mark.skipif(not IMAGE, reason="no image given: run scripts/test-image")

# A log line that reports an error: gunicorn's "[ERROR]"/"[CRITICAL]", the function's JSON
# "level": "error", a traceback, or the engine's own error.
ERROR_LINE = re.compile(r'\[(ERROR|CRITICAL)\]|"level": "(error|critical)"|^Traceback|^Error: ')


def _read_only() -> list[str]:
    """Read-only root filesystem with a writable /tmp only, as a pod with an emptyDir on /tmp."""
    if Path(ENGINE[0]).name == "podman":
        return ["--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,mode=1777"]
    return ["--read-only", "--tmpfs", "/tmp:rw,mode=1777"]


def run_args(identity_dir: Path, identity: str) -> list[str]:
    return [*RUN_OPTS, "--network", "host", *_read_only(),
            "--volume", f"{identity_dir}:{MOUNT}:ro",
            "--env", f"KUBECONFIG={MOUNT}/kubeconfig-{identity}"]


def engine(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENGINE, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def identity_dir(control_plane: ControlPlane) -> Iterator[Path]:
    """The control plane's CA and the kubeconfigs of the reconciler and resync identities, in a
    folder the container's user can read (the control plane's own files are root's, 0600)."""
    folder = Path(tempfile.mkdtemp(prefix="qdt-image-"))
    folder.chmod(0o755)
    shutil.copyfile(control_plane.ca_file, folder / "ca.crt")
    for identity in ("dockertoken-reconciler", "dockertoken-resync"):
        config = yaml.safe_load(control_plane.kubeconfigs[identity].read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["certificate-authority"] = "ca.crt"  # relative to the kubeconfig
        path = folder / f"kubeconfig-{identity}"
        path.write_text(yaml.safe_dump(config))
    # the resync identity's own token for the function's audience, as cronjob.yaml projects it
    (folder / "resync-token").write_text(senders.mint(control_plane, senders.RESYNC_SA, seconds=3600))
    for path in folder.iterdir():
        path.chmod(0o644)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class ImageFunction(harness.FunctionProcess):
    """The image's entrypoint (functions-framework) in a container, its output in ``log_path``."""

    def __init__(self, identity_dir: Path, sender_token: str) -> None:
        super().__init__(identity_dir / "kubeconfig-dockertoken-reconciler", sender_token=sender_token)
        self.identity_dir = identity_dir
        self.name = f"qdt-image-test-{uuid.uuid4().hex[:8]}"

    def start(self, timeout: float = 60) -> ImageFunction:
        argv = [*ENGINE, "run", "--rm", "--name", self.name,
                *run_args(self.identity_dir, "dockertoken-reconciler"),
                # Knative sets PORT; the Service sets THREADS and LOG_LEVEL.
                "--env", f"PORT={self.port}", "--env", "THREADS=10", "--env", "LOG_LEVEL=INFO",
                # and it checks senders as the Service does (tests/senders.py)
                *(arg for key, value in senders.FUNCTION_ENV.items()
                  for arg in ("--env", f"{key}={value}")),
                IMAGE, "--host", "127.0.0.1"]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        harness.STARTED.append(self)  # its log is scanned for credentials (tests/hygiene.py)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"container exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            waiting.pause(0.1)
        raise RuntimeError(f"container not healthy after {timeout} s:\n{self.logs()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            engine("stop", "--time", "10", self.name, timeout=60)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return engine("exec", self.name, *argv)


@pytest.fixture(scope="module")
def image_fn(control_plane: ControlPlane, identity_dir: Path) -> Iterator[ImageFunction]:
    senders.install_oidc_identity(control_plane)
    fn = ImageFunction(identity_dir, senders.mint(control_plane, senders.SOURCE_OIDC_SA))
    with fn:
        yield fn


@pytest.fixture
def world(control_plane: ControlPlane, namespace: str, quay: Any, image_fn: ImageFunction) -> Env:
    """tests/env.Env, with the containerized function in place of the local process."""
    return Env(control_plane, namespace, quay, image_fn)


def drop_other_dockertokens(env: Env) -> None:
    """Remove the DockerTokens of earlier tests (finalizer dropped, nothing revoked): the resync
    lists every DockerToken of the cluster, and one whose Quay simulator is gone would fail."""
    for obj in env.custom.list_cluster_custom_object(G, V, P)["items"]:
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        if ns != env.ns:
            env.custom.patch_namespaced_custom_object(G, V, ns, P, name, {"metadata": {"finalizers": None}})
            env.custom.delete_namespaced_custom_object(G, V, ns, P, name)


def test_serves_health_as_the_image_user_on_a_read_only_root(image_fn: ImageFunction) -> None:
    resp = httpx.get(f"{image_fn.url}/healthz", timeout=5)
    assert resp.status_code == 200
    who = image_fn.exec("python", "-c", "import os; print(os.getuid(), os.getgid())")
    assert who.stdout.split() == [str(APP_UID), str(APP_UID)], who.stderr
    write = image_fn.exec("python", "-c", "open('/app/function/x', 'w')")
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_no_pip_or_setuptools_in_the_runtime() -> None:
    probe = ("import importlib.util as u; "
             "print([m for m in ('pip', 'setuptools', 'function.main') if u.find_spec(m)])")
    out = engine("run", "--rm", *RUN_OPTS, "--network", "none", *_read_only(),
                 "--entrypoint", "python", IMAGE, "-c", probe)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['function.main']"


def test_add_event_writes_the_pull_secret(world: Env) -> None:
    world.conn_secret()
    world.dockertoken()
    resp = world.send("add")  # binary mode, Reference, as ApiServerSource posts it
    assert resp.status_code == 204, resp.text
    data = world.secret_data()
    (token,) = world.tokens("mytoken")
    assert data["uuid"] == token["uuid"]
    host = world.quay.base_url.split("://", 1)[1]
    assert list(dockerconfig(data)["auths"]) == [host]
    assert world.ready()["status"] == "True"


def test_resync_from_the_image_restores_a_deleted_secret(world: Env, identity_dir: Path) -> None:
    world.conn_secret()
    world.dockertoken()
    assert world.send("add").status_code == 204
    world.core.delete_namespaced_secret("dockertoken-sample-ret-secret", world.ns)
    assert world.secret() is None
    drop_other_dockertokens(world)

    # What the CronJob runs: same image, command python -m function.resync, its own identity.
    out = engine("run", "--rm", *run_args(identity_dir, "dockertoken-resync"),
                 "--env", f"RESYNC_TOKEN_FILE={MOUNT}/resync-token",
                 "--entrypoint", "python", IMAGE, "-m", "function.resync",
                 "--sink", world.fn.url)
    harness.RESPONSES.append(out.stdout + out.stderr)  # scanned for credentials too
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    # the command asked the image's function for a plan; the one drifted object was repaired
    assert (summary["seen"], summary["undelivered"], summary["failing"]) == (1, 0, {}), summary
    assert sum(summary["repaired"].values()) == 1 and summary["planned"] is True, summary

    wait_for(world.secret, timeout=10, what="the return Secret restored by the resync")
    resync_lines = [line for line in world.fn.logs().splitlines()
                    if "io.github.herve4m.quay.dockertoken.resync" in line and world.ns in line]
    assert resync_lines, "the function logged no resync event for the DockerToken"


def test_the_log_has_no_error_line(image_fn: ImageFunction) -> None:
    # An event about another kind: acknowledged, ignored and logged, which shows the container's
    # output reaches the log being read.
    headers, body = harness.apiserver_event(
        "add", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": "x", "name": "y"}})
    marker = headers["Ce-Id"]
    assert harness.post(image_fn.url, (headers, body)).status_code == 204
    wait_for(lambda: marker in image_fn.logs(), timeout=10, what="the ignored event's log line")
    errors = [line for line in image_fn.logs().splitlines() if ERROR_LINE.search(line)]
    assert not errors, "\n".join(errors)
