"""A Quay simulator for tests and benchmarks: real HTTP(S) on loopback, behaving as recorded.

Start one with ``QuaySimulator(...).start()`` (or ``with QuaySimulator() as sim:``) and point
the client at ``sim.base_url``. Users ``devtable`` and ``reader`` have password ``password``;
the OAuth tokens of the contract README exist with their scopes. Hooks: ``calls`` /
``calls_by_auth`` / ``reset_counters()``, ``tokens(user)``, ``touch(uuid)``, ``advance(s)``,
``inject(endpoint, ...)`` / ``clear_faults()``, ``inject(endpoint, hold=True)`` with
``wait_held(endpoint)`` / ``held(endpoint)`` / ``release(endpoint)`` (a request kept in flight
until the test lets it go), ``simulated_cpu_seconds``, ``server_errors``, ``token_expiration``
(settable: APP_SPECIFIC_TOKEN_EXPIRATION at runtime). The registry
(``/v2/``, ``/v2/auth``) announces ``server_hostname`` (``QuaySimulator(server_hostname=...)``,
default ``host``) as Quay does its SERVER_HOSTNAME.
Standalone: ``python -m tests.quaysim --port 8080``.
"""

from __future__ import annotations

from tests.quaysim.server import (
    ADMIN_TOKEN,
    ALLSCOPES_TOKEN,
    EXPIRED_TOKEN,
    PASSWORD,
    READER_ADMIN_TOKEN,
    READER_USERNAME,
    READONLY_TOKEN,
    REPOREAD_TOKEN,
    USERNAME,
    QuaySimulator,
)

__all__ = [
    "ADMIN_TOKEN",
    "ALLSCOPES_TOKEN",
    "EXPIRED_TOKEN",
    "PASSWORD",
    "READER_ADMIN_TOKEN",
    "READER_USERNAME",
    "READONLY_TOKEN",
    "REPOREAD_TOKEN",
    "USERNAME",
    "QuaySimulator",
]
