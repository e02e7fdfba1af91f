"""An experiment for figure 3, not a function: what the cold start would be without ``kubernetes``.

function/main.py with the reconciler replaced by the three reads a no-op reconcile makes (the
DockerToken, its connection Secret, its return Secret), done with httpx and the kubeconfig's
bearer token. It estimates the cold start of a reconciler whose API client is a thin layer on
httpx (already a dependency, for Quay) instead of the ``kubernetes`` package, whose import
alone costs about as much as a bare functions-framework start. It handles nothing else.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import function.main as real
from function.result import Report, Tally, finished

_lock = threading.Lock()
_reader: _Reads | None = None


class _Reads:
    def __init__(self) -> None:
        import httpx
        import yaml

        with open(os.environ["KUBECONFIG"]) as f:
            config = yaml.safe_load(f)
        cluster = config["clusters"][0]["cluster"]
        token = config["users"][0]["user"]["token"]
        self.http = httpx.Client(base_url=cluster["server"], verify=cluster["certificate-authority"],
                                 headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def reconcile(self, namespace: str, name: str, **_: Any) -> Any:
        base = f"/namespaces/{namespace}"
        dt = self.http.get(f"/apis/quay.herve4m.github.io/v1alpha1{base}/dockertokens/{name}").json()
        for ref in ("connSecretRef", "retSecretRef"):
            self.http.get(f"/api/v1{base}/secrets/{dt['spec'][ref]['name']}").raise_for_status()
        return finished(Report("ready"), Tally())


def _reconciler() -> Any:
    global _reader
    with _lock:
        if _reader is None:
            _reader = _Reads()
        return _reader


real.reconciler = _reconciler
handle = real.handle
