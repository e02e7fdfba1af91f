"""Figure 2: calls per reconcile, counted by the Quay simulator and the kube-apiserver's /metrics.

Each scenario posts one event to the running function with nothing else in flight, and takes
the difference of the counters around it. The function's own log line for the event (matched by
its CloudEvent id) gives the actions it took.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from benchmarks.latency import Poster, event
from benchmarks.world import READ_VERBS, WRITE_VERBS, Counts, Function, Obj, World
from tests import harness

# Why each call that remains is needed, per scenario (checked against the counts at run time).
WHY = {
    "add": (
        "Quay create: the token. Quay list (only when this process has no list of that connection "
        "younger than 60 s): adoption check before creating (a token with this title that no "
        "DockerToken claims, left by a creator that died after POST or by the Ansible operator, is "
        "adopted, not duplicated); the process adds what it creates to its list, so a burst on one "
        "connection lists once. Writes: finalizer and claim label (PATCH dockertokens), lease "
        "(PATCH status, compare-and-swap so only one delivery POSTs), UUID recorded right after the "
        "POST (PATCH status; what makes the token ours if anything fails later), pull Secret (POST "
        "secrets), Ready condition (PATCH status). Reads: the object, connection Secret, return "
        "Secret, and one DockerToken list by claim label (only the objects with this title on this "
        "Quay: claimed UUIDs, concurrent same-title creators)."
    ),
    "noop": (
        "Nothing remains: the object, connection Secret and return Secret are read (3 GETs), "
        "the Secret is intact and status equal, so no write and no Quay call."
    ),
    "resync-cold": (
        "One Quay list per connection Secret per 60 s (cache TTL, single flight): a resync must "
        "notice tokens revoked in Quay, and the list confirms the recorded UUID is still there; "
        "intact Secret and equal status: no write."
    ),
    "resync-warm": (
        "The list of the previous scenario (same connection Secret) is reused from the cache: "
        "no Quay call, no write."
    ),
    "resync-secret-deleted": (
        "Quay get: the Secret lost the token code and the list never returns codes, so GET "
        "/apptoken/<uuid> fetches it (it also proves the token exists: no list needed). Write: "
        "POST the Secret again; status unchanged."
    ),
    "resync-token-revoked": (
        "Quay list (cold cache): the UUID is missing; Quay get: confirms it is gone (404) before "
        "anything is replaced; the adoption check reuses that list; Quay create: the replacement. "
        "Writes: lease, UUID, Secret update (PUT), Ready=TokenReplaced. Read: the claim list."
    ),
    "resync-used": (
        "Quay list (a new resync run): the token is there, its lastAccessed moved (a pull, less "
        "than LAST_ACCESSED_REFRESH after the value the Secret holds, its first use). No write: "
        "after the first use, the Secret's lastAccessed is refreshed at most once a day per token "
        "(issue 22), never status."
    ),
}


@dataclass
class Scenario:
    key: str
    title: str
    counts: Counts
    seconds: float
    status: int
    actions: list[str]
    goal: str = ""
    met: bool | None = None


def log_line(fn: Function, event_id: str, timeout: float = 5) -> dict[str, object]:
    """The function's JSON log line for one event (it logs one per event, with its actions)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in fn.logs().splitlines():
            if event_id in line:
                try:
                    parsed = json.loads(line)
                except ValueError:
                    continue
                if parsed.get("id") == event_id:
                    return dict(parsed)
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.05)


def measure(world: World, fn: Function, poster: Poster, key: str, title: str,
            ev: tuple[dict[str, str], bytes]) -> Scenario:
    before = world.counts()
    seconds, status = poster.post(ev)
    after = world.counts()
    event_id = next(v for k, v in ev[0].items() if k.lower() == "ce-id")  # header names are case-free
    line = log_line(fn, event_id)
    actions = [str(a) for a in line.get("actions") or []]  # type: ignore[attr-defined]
    return Scenario(key, title, after - before, seconds, status, actions)


def add_scenario(world: World, fn: Function, poster: Poster, o: Obj) -> Scenario:
    return measure(world, fn, poster, "add", "add event, new object (token created)", event("add", o))


def steady_scenarios(world: World, fn: Function, poster: Poster, objs: list[Obj]) -> list[Scenario]:
    """Needs five Ready objects: a, b on one connection; c, d, e on three others, caches cold."""
    a, b, c, d, e = objs
    assert a.conn == b.conn and len({a.conn, c.conn, d.conn, e.conn}) == 4
    out = []
    s = measure(world, fn, poster, "noop", "no-op update event (own status write echoed)",
                event("update", a))
    s.goal, s.met = "0 writes, 0 Quay", s.counts.writes == 0 and s.counts.quay_calls == 0
    out.append(s)
    s = measure(world, fn, poster, "resync-cold", "resync, object in order, cold cache",
                harness.resync_event(a.namespace, a.name, wave="steady"))
    s.goal, s.met = "0 writes, <=1 list", s.counts.writes == 0 and s.counts.quay_calls <= 1
    out.append(s)
    s = measure(world, fn, poster, "resync-warm", "resync, in order, same connection, warm cache",
                harness.resync_event(b.namespace, b.name, wave="steady"))
    s.goal, s.met = "0 writes, 0 Quay", s.counts.writes == 0 and s.counts.quay_calls == 0
    out.append(s)
    world.delete_secret(c)
    s = measure(world, fn, poster, "resync-secret-deleted", "resync, return Secret deleted by hand",
                harness.resync_event(c.namespace, c.name))
    out.append(s)
    uuid = world.get(d)["status"]["uuid"]
    world.quay.state.revoke_token(d.conn.user, uuid)
    s = measure(world, fn, poster, "resync-token-revoked", "resync, token revoked in Quay by hand",
                harness.resync_event(d.namespace, d.name))
    out.append(s)
    used = world.get(e)["status"]["uuid"]
    # its first use is recorded by a resync (one write, not counted here: lastaccess.py)
    world.quay.state.touch(used)
    poster.post(harness.resync_event(e.namespace, e.name))
    world.quay.state.touch(used)  # and used again since
    s = measure(world, fn, poster, "resync-used", "resync, token used since (lastAccessed moved)",
                harness.resync_event(e.namespace, e.name))
    s.goal, s.met = "0 writes", s.counts.writes == 0
    out.append(s)
    return out


def summary(s: Scenario) -> tuple[str, str]:
    """(Quay calls, API requests) as printed in the table."""
    quay = f"{s.counts.quay_calls} Quay ({s.counts.quay_detail()})"
    api = (f"{s.counts.writes} writes ({s.counts.api_detail(WRITE_VERBS)}); "
           f"{s.counts.reads} reads ({s.counts.api_detail(READ_VERBS)})")
    return quay, api
