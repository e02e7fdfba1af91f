"""How tests wait. Synchronisation comes from events, holds (the Quay simulator's) and clock seams
(the function's, the simulator's, the cache's): a test never sleeps and then hopes.

What remains is polling state that sends no notification (a process becoming healthy, an object
reaching a condition on the API server): the caller re-checks the condition itself and gives up
at a deadline; :func:`pause` is the interval between two of its checks, never a guess at how
long something takes.
"""

from __future__ import annotations

import threading

_NEVER = threading.Event()  # never set: waiting on it is the pause between two polls


def pause(seconds: float) -> None:
    """The interval between two checks of a condition the caller polls (see the module docstring)."""
    _NEVER.wait(seconds)
