"""Secret hygiene over the whole session: no credential may appear in anything the function shows.

A pytest plugin (``pytest_plugins`` in tests/conftest.py). After every test it scans what
appeared since the previous test: the logs of every function process (``harness.STARTED``),
every answer the tests received from the function (``harness.RESPONSES``) and, when the test
used the control plane, every DockerToken status and Event in its namespace (all namespaces
once more at the end of the session). It looks for every
credential a Quay simulator of this process has known (``quaysim.state.credentials()``: token
codes, OAuth tokens, passwords) or a test put in a Secret (token, password, tokenCode keys),
raw and in the encodings a Secret uses. A hit fails the test
in whose teardown it was found; the session ends with a one-line summary of what was scanned.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

# Values too short or too common to be told apart from ordinary text: the simulator's default
# password is the word "password", which messages use as the name of the key. Tests that check
# password hygiene use a password of their own.
_TOO_COMMON = frozenset({"password"})
_MIN_LENGTH = 8


def variants(credential: str) -> list[str]:
    """The credential as it could leak: raw, base64, and base64 of the registry auth pair."""
    out = [credential, base64.b64encode(credential.encode()).decode()]
    out.append(base64.b64encode(f"$app:{credential}".encode()).decode())
    return out


def checked(credentials: Iterable[str]) -> list[str]:
    return sorted(c for c in set(credentials) if len(c) >= _MIN_LENGTH and c not in _TOO_COMMON)


def find_leaks(sources: Iterable[tuple[str, str]], credentials: Iterable[str]) -> list[str]:
    """One line per (source, credential) hit; the credential itself is never repeated in full."""
    needles = [(c, v) for c in checked(credentials) for v in variants(c)]
    hits = []
    for where, text in sources:
        for credential, needle in needles:
            if needle in text:
                hits.append(f"{where}: contains a credential ({credential[:4]}..., "
                            f"{len(credential)} characters)")
                break
    return hits


@dataclass
class Scanner:
    """What was scanned so far; log files are read from where the previous scan stopped."""

    offsets: dict[str, int] = field(default_factory=dict)
    responses_seen: int = 0
    texts: int = 0
    log_lines: int = 0
    statuses: int = 0
    leaks: list[str] = field(default_factory=list)
    known: set[str] = field(default_factory=set)

    @property
    def credentials(self) -> int:
        return len(checked(self.known))

    def new_sources(self, cluster: Any = None, namespace: str | None = None
                    ) -> Iterator[tuple[str, str]]:
        from tests import harness

        for fn in harness.STARTED:
            path = str(fn.log_path)
            try:
                with open(path, "rb") as log:
                    log.seek(self.offsets.get(path, 0))
                    chunk = log.read()
            except OSError:
                continue
            self.offsets[path] = self.offsets.get(path, 0) + len(chunk)
            text = chunk.decode(errors="replace")
            self.log_lines += text.count("\n")
            yield f"function log {path}", text
        new = harness.RESPONSES[self.responses_seen:]
        self.responses_seen += len(new)
        for i, body in enumerate(new):
            yield f"function answer #{self.responses_seen - len(new) + i}", body
        if cluster is not None:
            yield from _cluster_sources(cluster, self, namespace)

    def scan(self, cluster: Any = None, *, namespace: str | None = None,
             extra: Iterable[str] = ()) -> list[str]:
        """Scan what is new; with ``cluster``, the objects of ``namespace`` (None: all)."""
        from tests.quaysim.state import credentials

        self.known |= credentials() | set(extra)
        if cluster is not None:
            self.known |= _secret_values(cluster, namespace)
        sources = list(self.new_sources(cluster, namespace))
        self.texts += len(sources)
        hits = find_leaks(sources, self.known)
        self.leaks.extend(hits)
        return hits


# Keys of connection Secrets (token, password) and return Secrets (tokenCode) holding credentials.
_CREDENTIAL_KEYS = ("token", "password", "tokenCode")


def _secret_values(api_client: Any, namespace: str | None) -> set[str]:
    """Credentials the tests put in Secrets: also those no simulator knows (e.g. a wrong token)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    found = core.list_namespaced_secret(namespace) if namespace else core.list_secret_for_all_namespaces()
    values = set()
    for secret in found.items:
        for key in _CREDENTIAL_KEYS:
            raw = (secret.data or {}).get(key)
            if raw:
                values.add(base64.b64decode(raw).decode(errors="replace"))
    return values


def _cluster_sources(api_client: Any, scanner: Scanner,
                     namespace: str | None) -> Iterator[tuple[str, str]]:
    import json

    from kubernetes import client

    custom: Any = client.CustomObjectsApi(api_client)  # answers plain dicts
    core = client.CoreV1Api(api_client)
    group, version, plural = "quay.herve4m.github.io", "v1alpha1", "dockertokens"
    if namespace is None:
        found = custom.list_cluster_custom_object(group, version, plural)
        events = core.list_event_for_all_namespaces()
    else:
        found = custom.list_namespaced_custom_object(group, version, namespace, plural)
        events = core.list_namespaced_event(namespace)
    items = found.get("items") or []
    scanner.statuses += len(items)
    for obj in items:
        meta = obj.get("metadata") or {}
        yield (f"status of {meta.get('namespace')}/{meta.get('name')}",
               json.dumps(obj.get("status") or {}))
    for event in events.items:
        yield f"Event {event.metadata.namespace}/{event.metadata.name}", f"{event.reason} {event.message}"


SCANNER = Scanner()


@pytest.fixture(scope="session")
def _secret_hygiene_final(control_plane: Any) -> Iterator[None]:
    """Once, before the control plane stops: every object of every test, as it ended up."""
    yield
    hits = SCANNER.scan(control_plane.api_client("admin"))
    assert not hits, "credentials leaked:\n" + "\n".join(hits)


@pytest.fixture(autouse=True)
def _secret_hygiene(request: pytest.FixtureRequest) -> Iterator[None]:
    cluster = namespace = None
    # asked for before the test runs, so that they are still there when it is over
    if "control_plane" in request.fixturenames:
        request.getfixturevalue("_secret_hygiene_final")
        cluster = request.getfixturevalue("control_plane").api_client("admin")
        if "namespace" in request.fixturenames:
            namespace = request.getfixturevalue("namespace")
    yield
    hits = SCANNER.scan(cluster, namespace=namespace)
    assert not hits, "credentials leaked:\n" + "\n".join(hits)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    s = SCANNER
    if not s.texts:
        return
    terminalreporter.write_line(
        f"secret hygiene: {s.log_lines} function log lines, {s.responses_seen} function answers, "
        f"{s.statuses} DockerToken status snapshots scanned for {s.credentials} credentials: "
        f"{len(s.leaks)} found")
