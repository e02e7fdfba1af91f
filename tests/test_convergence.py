"""The closed loop (issue 10): every write the function makes comes back as an event through
Knative's real ApiServerSource adapter (one cluster-wide watch, delivered one at a time). A pass,
whatever its outcome, must leave the object as the next pass would write it, so its own echo
costs no write and no Quay call and the object falls silent; otherwise one failing object
feeds itself events forever and starves every other DockerToken behind the shared watch.

No event is posted by hand here: objects are created and the adapter does the rest.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.adapter_proc import running_adapter
from tests.controlplane import ControlPlane, free_port
from tests.env import Env, wait_for
from tests.eventing_controller import AdapterPod
from tests.harness import FunctionProcess
from tests.quaysim import ADMIN_TOKEN, QuaySimulator

WINDOW = 10.0   # seconds of silence demanded of a settled object (the figure)
QUIET = 2.0     # no delivery for this long: the object has settled
SETTLE_MAX = 40.0


@pytest.fixture(scope="module")
def adapter(control_plane: ControlPlane, function_proc: FunctionProcess, adapter_pod: AdapterPod) -> Iterator[Path]:
    with running_adapter(control_plane, function_proc, adapter_pod) as log:
        yield log


def _deliveries(fn: FunctionProcess, namespace: str) -> list[dict[str, Any]]:
    """The function's log lines for the ApiServerSource events about objects of ``namespace``."""
    out = []
    for line in fn.logs().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("namespace") == namespace and str(entry.get("event", "")).startswith(
                "dev.knative.apiserver."):
            out.append(entry)
    return out


def _new_env(cp: ControlPlane, fn: FunctionProcess, stack: ExitStack, **sim: Any) -> Env:
    ns = f"c-{uuid.uuid4().hex[:10]}"
    core: Any = client.CoreV1Api(cp.api_client())
    core.create_namespace({"metadata": {"name": ns}})
    return Env(cp, ns, stack.enter_context(QuaySimulator(**sim)), fn)


# -- the failure modes: each prepares its world, then creates its DockerToken -------------------------
def _ready(env: Env) -> None:
    env.conn_secret()
    env.dockertoken()


def _missing_connection_secret(env: Env) -> None:
    env.dockertoken()


def _invalid_configuration(env: Env) -> None:
    env.conn_secret(host=env.quay.base_url, token=ADMIN_TOKEN, timeout="soon")
    env.dockertoken()


def _unknown_token(env: Env) -> None:  # Quay: 401
    env.conn_secret(host=env.quay.base_url, token="revokedrevokedrevokedrevokedrevoked0000")
    env.dockertoken()


def _token_without_admin_scope(env: Env) -> None:  # Quay: 403 insufficient_scope
    env.conn_secret(host=env.quay.base_url, token=env.quay.add_oauth_token("devtable", "user:read"))
    env.dockertoken()


def _wrong_password(env: Env) -> None:  # Quay: 403, then its login backoff (429)
    env.quay.add_user("builder", "Right-9q-password")
    env.conn_secret(host=env.quay.base_url, username="builder", password="Wrong-4z-guess")
    env.dockertoken()


def _tls_error(env: Env) -> None:  # https to a plain-http Quay: the handshake fails
    env.conn_secret(host=env.quay.base_url.replace("http://", "https://"), token=ADMIN_TOKEN)
    env.dockertoken()


def _quay_down(env: Env) -> None:  # every call answers 503, for good
    env.quay.inject("*", statuses=[503] * 100_000)
    _ready(env)


def _post_fails_under_the_lease(env: Env) -> None:  # the list works, every POST answers 503
    env.quay.inject("create", statuses=[503] * 100_000)
    env.conn_secret(host=env.quay.base_url, token=ADMIN_TOKEN, timeout="1")
    env.dockertoken()


def _unreachable_host(env: Env) -> None:
    env.conn_secret(host=f"http://127.0.0.1:{free_port()}", token=ADMIN_TOKEN, timeout="1")
    env.dockertoken()


def _return_secret_conflict(env: Env) -> None:
    env.conn_secret()
    env.core.create_namespaced_secret(
        env.ns, {"metadata": {"name": "dockertoken-sample-ret-secret"}, "stringData": {"mine": "1"}})
    env.dockertoken()


def _cross_namespace_without_consent(env: Env) -> None:
    env.conn_secret()
    env.dockertoken(connSecretRef={"name": "quay-credentials", "namespace": "kube-system"})


def _cleanup_blocked(env: Env) -> None:
    _ready(env)
    wait_for(lambda: env.ready().get("status") == "True", what="Ready before the deletion")
    env.core.patch_namespaced_secret("quay-credentials", env.ns, {"stringData": {
        "token": "revokedrevokedrevokedrevokedrevoked0000"}})
    env.delete()


@dataclass(frozen=True)
class Mode:
    name: str
    prepare: Callable[[Env], None]
    reason: str  # the Ready reason it settles on
    # events before it settles: the first, then one echo per write (finalizer, lease, status ...)
    events: int = 3


MODES = [
    Mode("ready", _ready, "TokenReady", events=5),  # + the lease and the recorded UUID
    Mode("missing-connection-secret", _missing_connection_secret, "ConnectionSecretNotFound"),
    Mode("invalid-configuration", _invalid_configuration, "InvalidConfiguration"),
    Mode("unknown-token-401", _unknown_token, "QuayAuthenticationFailed"),
    Mode("weak-token-403", _token_without_admin_scope, "QuayAuthenticationFailed"),
    Mode("wrong-password", _wrong_password, "QuayAuthenticationFailed"),
    Mode("tls-error", _tls_error, "QuayTLSError"),
    Mode("quay-5xx", _quay_down, "QuayUnavailable"),
    Mode("post-5xx-under-lease", _post_fails_under_the_lease, "QuayUnavailable", events=4),
    Mode("unreachable-host", _unreachable_host, "QuayUnavailable"),
    Mode("return-secret-conflict", _return_secret_conflict, "ReturnSecretConflict"),
    Mode("cross-namespace-denied", _cross_namespace_without_consent, "CrossNamespaceRefDenied"),
    Mode("cleanup-blocked", _cleanup_blocked, "CleanupBlocked", events=5 + 2),  # ready, then deleted
]


def _settle(env: Env) -> int:
    """Wait until the object has its verdict and no delivery came for QUIET seconds."""
    deadline = time.monotonic() + SETTLE_MAX
    seen, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(_deliveries(env.fn, env.ns))
        if count != seen:
            seen, quiet_since = count, time.monotonic()
        elif env.ready() and time.monotonic() - quiet_since >= QUIET:
            return count
        time.sleep(0.1)
    raise AssertionError(f"{env.ns}: still receiving events after {SETTLE_MAX} s: "
                         f"{[(d['event'], d['outcome']) for d in _deliveries(env.fn, env.ns)][-10:]}")


def test_every_outcome_falls_silent_after_its_own_echo(control_plane: ControlPlane,
                                                        function_proc: FunctionProcess,
                                                        adapter: Path) -> None:
    """Each object settles, then stays silent for WINDOW seconds: at most 1 delivery, 0 Quay calls."""
    with ExitStack() as stack:
        envs = {m.name: _new_env(control_plane, function_proc, stack) for m in MODES}
        for mode in MODES:
            mode.prepare(envs[mode.name])
        settled = {m.name: _settle(envs[m.name]) for m in MODES}
        before = {m.name: (len(_deliveries(function_proc, envs[m.name].ns)), envs[m.name].quay_calls())
                  for m in MODES}
        time.sleep(WINDOW)
        rows = []
        for mode in MODES:
            env = envs[mode.name]
            deliveries = len(_deliveries(function_proc, env.ns)) - before[mode.name][0]
            calls = env.quay_calls() - before[mode.name][1]
            status = (env.get() or {}).get("status") or {}
            rows.append((mode.name, settled[mode.name], deliveries, calls, env.ready().get("reason"),
                         bool(status.get("creation"))))
    print("\nmode                        events-to-settle  events-in-window  quay-calls-in-window  reason")
    for name, settle, deliveries, calls, reason, _ in rows:
        print(f"{name:<28}{settle:>16}{deliveries:>18}{calls:>22}  {reason}")
    by_name = {m.name: m for m in MODES}
    for name, settle, deliveries, calls, reason, lease in rows:
        assert reason == by_name[name].reason, (name, reason)
        assert deliveries <= 1 and calls == 0, f"{name}: {deliveries} events, {calls} Quay calls in {WINDOW} s"
        assert not lease, f"{name}: a creation lease was left behind"
        assert settle <= by_name[name].events, f"{name}: {settle} events before it settled"


def _latency(env: Env, name: str) -> float:
    """Seconds from the create call to the pull Secret, through the adapter."""
    env.dockertoken(name, ret=f"{name}-pull")
    started = time.monotonic()
    while env.secret(f"{name}-pull") is None:
        if time.monotonic() - started > 30:
            raise AssertionError(f"{name}: no pull Secret after 30 s")
        time.sleep(0.02)
    return time.monotonic() - started


def test_failing_objects_do_not_starve_a_healthy_one(control_plane: ControlPlane,
                                                      function_proc: FunctionProcess,
                                                      adapter: Path) -> None:
    with ExitStack() as stack:
        healthy = _new_env(control_plane, function_proc, stack)
        healthy.conn_secret()
        baseline = statistics.median(_latency(healthy, f"base-{i}") for i in range(3))
        failing = [_new_env(control_plane, function_proc, stack) for _ in range(10)]
        for i, env in enumerate(failing):
            (_unknown_token, _quay_down)[i % 2](env)
        for env in failing:
            _settle(env)
        loaded = statistics.median(_latency(healthy, f"next-{i}") for i in range(3))
    print(f"\nadd -> pull Secret: {baseline:.3f} s alone, {loaded:.3f} s with 10 failing objects")
    assert loaded <= 2 * baseline + 0.2, (baseline, loaded)  # 0.2 s: the polling and log granularity
