"""Least privilege, derived from what the components did (issue 15).

The test control plane keeps an audit log (``tests/controlplane``: every request of the three
ServiceAccounts, every SubjectAccessReview with its answer). From it this module derives, for the
function (``dockertoken-reconciler``), the resync job (``dockertoken-resync``) and the
ApiServerSource adapter (``dockertoken-source``), every (verb, API group, resource[/subresource])
they used, and compares it with what ``knative/base/rbac.yaml`` grants them:

- every use must be granted (a denied call the code survives, such as a best-effort Event,
  would otherwise go unnoticed);
- every grant must have been used, which only a run of the whole suite can show.

What counts as a use:

- a request by one of the identities whose User-Agent is not a test's probe: the function's and
  the resync job's (``quay-dockertoken``, via ``function.kube``) and the adapter's. Tests that poke
  at an identity's rights directly, through the ``kubernetes`` client (``OpenAPI-Generator/...``)
  or with ``PROBE_AGENT``, show what is denied, not what the code needs, and are left out;
- a SubjectAccessReview about one of the identities: Knative's ApiServerSource controller asks
  them for the adapter before it starts it (the real controller runs in the tests:
  ``tests/eventing_controller.py``).

Non-resource requests (discovery, ``/version``) are left out: ``system:discovery`` allows them to
every authenticated user.

A pytest plugin (``pytest_plugins`` in tests/conftest.py): it notes when each test started, so
that a use can be traced to the test that caused it, notes whether tests were deselected, and
moves ``tests/test_rbac_audit.py`` to the end of the run. The table of uses and grants is printed
in the session summary.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RBAC_FILE = ROOT / "knative" / "base" / "rbac.yaml"
SA_NAMESPACE = "quay-system"
IDENTITIES = {
    "dockertoken-reconciler": "the function",
    "dockertoken-resync": "the resync job",
    "dockertoken-source": "the ApiServerSource adapter",
}
# User-Agent prefixes of requests made by tests to probe an identity's rights.
PROBE_AGENT = "quay-dockertoken-test-probe"
PROBE_AGENTS = ("OpenAPI-Generator/", PROBE_AGENT)
AUDIT_MODULE = "tests/test_rbac_audit.py"


@dataclass(frozen=True, order=True)
class Right:
    identity: str
    verb: str
    group: str  # "" for the core API group
    resource: str  # "dockertokens", "dockertokens/status", ...

    def __str__(self) -> str:
        group = self.group or "core"
        return f"{self.identity} {self.verb} {self.resource} ({group})"


@dataclass
class Use:
    requests: int = 0
    access_checks: int = 0
    scopes: set[str] = field(default_factory=set)  # of the requests: "cluster" or "namespaced"
    denied: int = 0
    first_at: str = ""
    first_test: str = ""


@dataclass
class Run:
    """What the plugin knows about this session."""

    test_starts: list[tuple[str, str]] = field(default_factory=list)  # (UTC ISO time, nodeid)
    deselected: int = 0
    full: bool = False
    missing_modules: list[str] = field(default_factory=list)
    table: str = ""


RUN = Run()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _test_at(timestamp: str) -> str:
    """The test that was running when the API server logged ``timestamp`` (both UTC, same clock)."""
    current = "(before the first test)"
    for started, nodeid in RUN.test_starts:
        if started > timestamp:
            break
        current = nodeid
    return current


def _identity(username: str) -> str | None:
    prefix = f"system:serviceaccount:{SA_NAMESPACE}:"
    name = username.removeprefix(prefix)
    return name if username.startswith(prefix) and name in IDENTITIES else None


def _resource(resource: str, subresource: str | None) -> str:
    return f"{resource}/{subresource}" if subresource else resource


def used_rights(events: Iterable[dict[str, Any]]) -> dict[Right, Use]:
    """Every right the components used, from the audit events (each request counted once)."""
    uses: dict[Right, Use] = {}
    seen: set[str] = set()

    def note(right: Right, event: dict[str, Any]) -> Use:
        use = uses.setdefault(right, Use())
        if not use.first_at or event["stageTimestamp"] < use.first_at:
            use.first_at = event["stageTimestamp"]
            use.first_test = _test_at(event["stageTimestamp"])
        return use

    for event in events:
        if event["auditID"] in seen:  # a watch is logged when it starts and when it ends
            continue
        seen.add(event["auditID"])
        ref = event.get("objectRef") or {}
        if ref.get("resource") == "subjectaccessreviews":
            if (event.get("userAgent") or "").startswith(PROBE_AGENT):
                continue  # a test asking what an identity may do, not a component's check
            spec = (event.get("requestObject") or {}).get("spec") or {}
            identity = _identity(spec.get("user") or "")
            attrs = spec.get("resourceAttributes")
            if identity and attrs:
                right = Right(identity, attrs.get("verb", ""), attrs.get("group", ""),
                              _resource(attrs.get("resource", ""), attrs.get("subresource")))
                use = note(right, event)
                use.access_checks += 1
                if not ((event.get("responseObject") or {}).get("status") or {}).get("allowed"):
                    use.denied += 1
            continue
        identity = _identity((event.get("user") or {}).get("username", ""))
        if not identity or not ref.get("resource"):
            continue
        if (event.get("userAgent") or "").startswith(PROBE_AGENTS):
            continue
        right = Right(identity, event["verb"], ref.get("apiGroup", ""),
                      _resource(ref["resource"], ref.get("subresource")))
        use = note(right, event)
        use.requests += 1
        use.scopes.add("namespaced" if ref.get("namespace") else "cluster")
        if (event.get("annotations") or {}).get("authorization.k8s.io/decision") != "allow":
            use.denied += 1
    return uses


def granted_rights(path: Path = RBAC_FILE) -> set[Right]:
    """What the ClusterRoles (and Roles) of ``path`` grant the three identities through their bindings."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    roles = {(d["kind"], d["metadata"]["name"]): d.get("rules") or [] for d in docs
             if d["kind"] in ("ClusterRole", "Role")}
    rights: set[Right] = set()
    for binding in docs:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        rules = roles.get((binding["roleRef"]["kind"], binding["roleRef"]["name"]), [])
        for subject in binding.get("subjects") or []:
            if subject["kind"] != "ServiceAccount" or subject.get("namespace") != SA_NAMESPACE:
                continue
            if subject["name"] not in IDENTITIES:
                continue
            for rule in rules:
                for group in rule.get("apiGroups") or []:
                    for resource in rule.get("resources") or []:
                        for verb in rule.get("verbs") or []:
                            rights.add(Right(subject["name"], verb, group, resource))
    return rights


def table(used: dict[Right, Use], granted: set[Right]) -> str:
    rows = [("identity", "verb", "resource", "scope", "requests", "access checks", "granted", "used")]
    for right in sorted(set(used) | granted):
        use = used.get(right, Use())
        rows.append((right.identity, right.verb, _shown(right),
                     ",".join(sorted(use.scopes)) or "-", str(use.requests), str(use.access_checks),
                     "yes" if right in granted else "NO", "yes" if right in used else "NO"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def _shown(right: Right) -> str:
    return f"{right.group}/{right.resource}" if right.group else right.resource


def used_but_not_granted(used: dict[Right, Use], granted: set[Right]) -> list[str]:
    return [f"{right}: used ({used[right].requests} request(s), {used[right].access_checks} access "
            f"check(s), {used[right].denied} denied; first in {used[right].first_test}) but "
            f"{RBAC_FILE.relative_to(ROOT)} does not grant it"
            for right in sorted(set(used) - granted)]


def granted_but_not_used(used: dict[Right, Use], granted: set[Right]) -> list[str]:
    return [f"{right}: granted by {RBAC_FILE.relative_to(ROOT)} but no request of "
            f"{IDENTITIES[right.identity]} and no access check used it in the whole suite; remove "
            f"it, or test the code that needs it" for right in sorted(granted - set(used))]


# -- plugin hooks --------------------------------------------------------------------------------

def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    RUN.test_starts.append((_now(), nodeid))


def pytest_deselected(items: list[pytest.Item]) -> None:
    RUN.deselected += len(items)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    last = [i for i in items if i.nodeid.startswith(AUDIT_MODULE)]
    items[:] = [i for i in items if not i.nodeid.startswith(AUDIT_MODULE)] + last


def pytest_collection_finish(session: pytest.Session) -> None:
    # The whole suite: every test module collected, nothing deselected (-k, -m, --lf, --deselect).
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")}
    collected = {item.nodeid.split("::")[0] for item in session.items}
    RUN.full = RUN.deselected == 0 and modules <= collected
    RUN.missing_modules = sorted(modules - collected)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RUN.table:
        terminalreporter.write_sep("-", "RBAC used by the components (audit log) vs granted (knative/base/rbac.yaml)")
        terminalreporter.write_line(RUN.table)
