"""function/main.py with the creation path as it was before issue 14: the bulk-creation baseline.

Two things change, everything else is the real function:

* the claim and rival checks list **every** DockerToken of the cluster (no label selector), as
  ``creation.py`` did with ``kube.iter_dockertokens()``: O(N) reads per creation, O(N^2) for a
  bulk of N;
* the connection's cached token list is **dropped** after each token this process creates
  (instead of updated with it), so the next creation on that connection lists again: N
  creations on one connection cost N lists + N POSTs.

  functions-framework --source benchmarks/listall_function.py --target handle --signature-type cloudevent

Only benchmarks/ patches anything: function/ is imported, never edited.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import function.creation as creation
import function.main as real
from function.cache import TokenListCache
from function.model import DockerToken, Token
from function.reconcile import Reconciler


class _ListEverything(creation.Creator):
    def same_title(self, dt: DockerToken) -> Iterator[dict[str, Any]]:
        self.claims_read = 0
        for obj in self.api.iter_dockertokens():
            self.claims_read += 1
            yield obj


class _DropAfterCreate(TokenListCache):
    def add(self, key: str, token: Token) -> None:
        self.invalidate(key)


def _reconciler() -> Reconciler:
    with real._lock:
        if real._reconciler is None:
            from function.kube import Kube

            real._reconciler = Reconciler(Kube(), cache=_DropAfterCreate())
        return real._reconciler


# apply.Pass looks Creator up in function.creation's globals, handle() the factory in
# function.main's, on every event
creation.Creator = _ListEverything  # type: ignore[misc]
real.reconciler = _reconciler
handle = real.handle
