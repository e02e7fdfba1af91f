"""function/main.py with a clock the tests can move: the reconciler's clock seam, for a function
running in its own process (Reconciler's ``clock``).

The function's "now" is the wall clock plus the seconds written in the file named by
QDT_TEST_CLOCK_SKEW (``FunctionProcess.advance``); the tests move the Quay simulator's clock by
as much, so that both sides see the same time pass, without waiting for it.

  functions-framework --source tests/clock_function.py --target handle --signature-type cloudevent

Only tests/ patches anything: function/ is imported, never edited.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import function.main as real
from function.reconcile import Reconciler, utcnow

_build = real.reconciler


def _now() -> datetime.datetime:
    skew = Path(os.environ["QDT_TEST_CLOCK_SKEW"]).read_text().strip()
    return utcnow() + datetime.timedelta(seconds=float(skew or 0))


def _reconciler() -> Reconciler:
    built = _build()
    built.clock = _now
    return built


# handle() looks the reconciler factory up in function.main's globals on every event
real.reconciler = _reconciler
handle = real.handle
