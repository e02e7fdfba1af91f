"""function/main.py with the token-list cache switched off: the serial resync baseline.

Every resync event then pays one Quay list call of its own (a cold cache per object), which is
what a reconciler that checks each token on its own does. Everything else is the real function:

  functions-framework --source benchmarks/nocache_function.py --target handle --signature-type cloudevent
"""

from __future__ import annotations

import function.main as real
from function.cache import TokenListCache
from function.reconcile import Reconciler


def _reconciler() -> Reconciler:
    with real._lock:
        if real._reconciler is None:
            from function.kube import Kube

            real._reconciler = Reconciler(Kube(), cache=TokenListCache(ttl=0.0))
        return real._reconciler


# handle() looks the factory up in function.main's globals on every event
real.reconciler = _reconciler
handle = real.handle
