"""Reads that do not grow with the cluster (issue 14): a token creation reads only the DockerTokens
that may claim tokens with its title on its Quay (one labelled list), not every DockerToken.

Measured with the API server's own ``apiserver_request_total`` (list requests) and the function's
per-event ``claims_read`` (objects those lists returned), at 100 and at 1,000 DockerTokens.
"""

from __future__ import annotations

import json
from typing import Any

from function import claims
from tests.env import Env, G, P, V


def _bulk(env: Env, count: int, start: int) -> None:
    """Objects another pass already labelled (other titles, same Quay): the crowd a creation
    must not read."""
    for i in range(start, start + count):
        title = f"crowd-{i}"
        env.custom.create_namespaced_custom_object(G, V, env.ns, P, {
            "apiVersion": f"{G}/{V}", "kind": "DockerToken",
            "metadata": {"name": title, "labels": {claims.claim_label(env.quay.host, title): "true"}},
            "spec": {"connSecretRef": {"name": "quay-credentials"}, "name": title,
                     "preserveInQuayOnDeletion": True}})


def _lists(env: Env) -> int:
    return sum(n for labels, n in env.cp.request_totals()
               if labels.get("verb") == "LIST" and labels.get("resource") == "dockertokens")


def _create_one(env: Env, name: str) -> tuple[int, int]:
    """(list requests, objects read) for one token creation titled "shared"."""
    env.dockertoken(name, title="shared", ret=f"{name}-pull")
    before = _lists(env)
    assert env.send("add", name).status_code == 204
    lists = _lists(env) - before
    line: dict[str, Any] = next(json.loads(entry) for entry in reversed(env.fn.logs().splitlines())
                                if f'"name": "{name}"' in entry and '"event"' in entry)
    assert "create-token" in line["actions"] or "adopt-token" in line["actions"], line
    return lists, int(line["claims_read"])


def test_list_reads_per_creation_stay_constant_from_100_to_1000_objects(env: Env) -> None:
    env.conn_secret()
    _bulk(env, 100, 0)
    small = [_create_one(env, f"small-{i}") for i in range(3)]
    _bulk(env, 900, 100)
    large = [_create_one(env, f"large-{i}") for i in range(3)]
    print(f"\nper creation (list requests, objects read): 100 objects {small}, 1,000 objects {large}")
    # one list, of the objects titled "shared" (those created so far), whatever the crowd
    assert [lists for lists, _ in small + large] == [1] * 6
    assert [read for _, read in small] == [1, 2, 3] and [read for _, read in large] == [4, 5, 6]
